// vmseal's two vendor commands (docs/vtpm-nv.md "Grants from inside the owner guest"): a guest asks the
// monitor, through its own vTPM, to share one of its NV indices read-only with a peer VM, or to revoke that.
// They are framed like any TPM 2.0 command so stock tools (tpm2_send) carry them:
//
//   tag         TPM_ST_SESSIONS
//   commandCode Vmseal_NV_Share (0x20005601) or Vmseal_NV_Revoke (0x20005602)
//   handle area @nvIndex: the index, authorized with its own authValue (USER role)
//   auth area   exactly one password session (TPM_RS_PW, empty nonce) whose hmac is the index password
//   parameters  TPM2B granteeVmId: the other VM's id as 32 hex digits (ascii)
//
// Success is a TPM_ST_SESSIONS response with no parameters and the password session's empty TPMS_AUTH_RESPONSE.
import { TPM_HT, TPM_RC, TPM_RH, TPM_ST, handleType, rcForHandle, rcForParameter, rcForSession } from './constants.ts';
import { TPM_CC } from './command-codes.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';
import { buildCommand, type ParsedCommand } from './command.ts';
import { TPMA_SESSION, buildSessionResponse, stripTrailingZeros } from './session.ts';

export type GuestGrantOp = 'share' | 'revoke';

export interface GuestGrantRequest {
  op: GuestGrantOp;
  nvIndex: number;
  /** The index password from the session, trailing zeros stripped (the TPM compares authValues so). */
  password: Buffer;
  /** Lower-case hex. */
  granteeVmId: string;
  /** The session's attributes, echoed in the response. */
  sessionAttributes: number;
}

const VM_ID_CHARS = 32;
const HEX = /^[0-9a-fA-F]{32}$/;

export function isGuestGrantCommand(commandCode: number): boolean {
  return commandCode === TPM_CC.Vmseal_NV_Share || commandCode === TPM_CC.Vmseal_NV_Revoke;
}

/** The request in a parsed vendor command; throws Tpm2FormatError with the response code to answer. */
export function parseGuestGrant(cmd: ParsedCommand): GuestGrantRequest {
  if (!isGuestGrantCommand(cmd.commandCode)) throw new Tpm2FormatError(TPM_RC.COMMAND_CODE, `0x${cmd.commandCode.toString(16)} is not a vmseal grant command`);
  const op: GuestGrantOp = cmd.commandCode === TPM_CC.Vmseal_NV_Share ? 'share' : 'revoke';
  const nvIndex = cmd.handles[0]!;
  if (handleType(nvIndex) !== TPM_HT.NV_INDEX) throw new Tpm2FormatError(rcForHandle(TPM_RC.HANDLE, 1), `${cmd.name}: 0x${nvIndex.toString(16)} is not an NV index`);
  if (cmd.tag !== TPM_ST.SESSIONS) throw new Tpm2FormatError(TPM_RC.AUTH_MISSING, `${cmd.name} needs the index's password session`);
  const s = cmd.sessions[0]!;
  if (cmd.sessions.length !== 1 || s.handle !== TPM_RH.PW) throw new Tpm2FormatError(TPM_RC.AUTH_TYPE, `${cmd.name} takes exactly one password session`);
  if (s.nonce.length !== 0) throw new Tpm2FormatError(rcForSession(TPM_RC.SIZE, 1), `${cmd.name}: a password session has no nonce`);
  if ((s.attributes & ~TPMA_SESSION.CONTINUE_SESSION) !== 0) throw new Tpm2FormatError(rcForSession(TPM_RC.ATTRIBUTES, 1), `${cmd.name}: session attributes 0x${s.attributes.toString(16)}`);
  const r = new TpmReader(cmd.parameters, 0, cmd.parameters.length, rcForParameter(TPM_RC.INSUFFICIENT, 1));
  const size = r.u16('granteeVmId.size');
  if (size !== VM_ID_CHARS) throw new Tpm2FormatError(rcForParameter(TPM_RC.SIZE, 1), `${cmd.name}: granteeVmId of ${size} bytes, not ${VM_ID_CHARS}`);
  const id = r.bytes(size, 'granteeVmId').toString('latin1');
  r.done(`${cmd.name} parameters`);
  if (!HEX.test(id)) throw new Tpm2FormatError(rcForParameter(TPM_RC.VALUE, 1), `${cmd.name}: granteeVmId is not 32 hex digits`);
  return { op, nvIndex, password: Buffer.from(stripTrailingZeros(s.hmac)), granteeVmId: id.toLowerCase(), sessionAttributes: s.attributes };
}

/** The command a guest sends (the guest tool builds the same bytes with printf). */
export function guestGrantCommand(op: GuestGrantOp, nvIndex: number, granteeVmId: string, password: Uint8Array = Buffer.alloc(0)): Buffer {
  if (!HEX.test(granteeVmId)) throw new RangeError('granteeVmId must be 32 hex digits');
  const code = op === 'share' ? TPM_CC.Vmseal_NV_Share : TPM_CC.Vmseal_NV_Revoke;
  const params = new TpmWriter().tpm2b(Buffer.from(granteeVmId, 'latin1')).finish();
  return buildCommand(code, [nvIndex], params, [{ handle: TPM_RH.PW, nonce: Buffer.alloc(0), attributes: 0, hmac: Buffer.from(password) }]);
}

/** The success response: no parameters, one empty password-session response. */
export function guestGrantResponse(sessionAttributes: number): Buffer {
  return buildSessionResponse([], Buffer.alloc(0), [{ nonce: Buffer.alloc(0), attributes: sessionAttributes & TPMA_SESSION.CONTINUE_SESSION, hmac: Buffer.alloc(0) }]);
}
