/**
 * The owner guest's own share / revoke of one of its NV indices (docs/vtpm-nv.md "Grants from inside the owner
 * guest"; seed 002: the owning domain asks the manager to share). The request is vmseal's vendor command
 * (formats/tpm2/vmseal-vendor.ts) sent through the guest's own vTPM; the proxy's NV policy hands it here and
 * it never reaches swtpm. Checked in this order, each failure a TPM response code:
 *
 *   1. the sender's vTPM owns the index (its ownership token)          else TPM_RC_HANDLE, handle 1 (0x18B):
 *                                                                           the index looks absent, as elsewhere
 *   2. the monitor knows the index auth (from the owner token)         else TPM_RC_AUTH_UNAVAILABLE (0x12F)
 *   3. the session's password equals it                                else TPM_RC_BAD_AUTH, session 1 (0x9A2)
 *   4. share: the grantee VM runs here and is the sender's peer        else TPM_RC_VALUE, parameter 1 (0x1C4)
 *      revoke: the index is shared with that VM                        else TPM_RC_VALUE, parameter 1
 *
 * The grant or revoke commits (ownership.grant / revoke, synchronous=FULL) before the answer is built.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { TPM_RC, Tpm2FormatError, errorResponse, guestGrantResponse, parseGuestGrant, rcForHandle, rcForParameter, rcForSession, type ParsedCommand } from '../../formats/tpm2/index.ts';
import { NvOwnershipError, type NvOwnership } from './nv-ownership.ts';
import { isManagedIndex } from './nv-policy.ts';

export interface GuestGrantContext {
  ownership: NvOwnership;
  /** The sending VM's vTPM instance id. */
  sender: string;
  /** The vTPM instance of the VM with this id, if it runs on this host. */
  running: (vmId: string) => string | undefined;
  log?: (msg: string) => void;
}

const ABSENT = rcForHandle(TPM_RC.HANDLE, 1);
const NOT_PEER = rcForParameter(TPM_RC.VALUE, 1);
const BAD_PASSWORD = rcForSession(TPM_RC.BAD_AUTH, 1);

/** Compared as digests so neither the content nor the length of the index auth leaks through timing. */
function sameAuth(a: Buffer, b: Buffer): boolean {
  const h = (x: Buffer) => createHash('sha256').update(x).digest();
  return timingSafeEqual(h(a), h(b));
}

/** The guest's answer to one vmseal grant command; never forwards anything. */
export function guestGrant(ctx: GuestGrantContext, cmd: ParsedCommand): Buffer {
  let req;
  try {
    req = parseGuestGrant(cmd);
  } catch (err) {
    if (err instanceof Tpm2FormatError) return errorResponse(err.rc);
    throw err;
  }
  if (!isManagedIndex(req.nvIndex)) return errorResponse(ABSENT);
  const state = ctx.ownership.ownerState(req.nvIndex);
  if (state.kind !== 'owned' || state.claim.owner !== ctx.sender) return errorResponse(ABSENT);
  const claim = state.claim;
  if (!claim.auth) return errorResponse(TPM_RC.AUTH_UNAVAILABLE);
  if (!sameAuth(claim.auth, req.password)) return errorResponse(BAD_PASSWORD);
  const grantee = ctx.running(req.granteeVmId);
  const hex = `0x${req.nvIndex.toString(16)}`;
  if (req.op === 'share') {
    if (!grantee || grantee === ctx.sender || !ctx.ownership.peers.isPeer(ctx.sender, grantee)) return errorResponse(NOT_PEER);
    try {
      ctx.ownership.grant(claim, grantee, req.granteeVmId);
    } catch (err) {
      if (err instanceof NvOwnershipError) return errorResponse(TPM_RC.NV_SPACE);
      throw err;
    }
    ctx.log?.(`vTPM ${ctx.sender}: guest shared NV index ${hex} with VM ${req.granteeVmId}`);
  } else {
    const n = ctx.ownership.revoke(req.nvIndex, { vmId: req.granteeVmId, ...(grantee ? { instance: grantee } : {}) });
    if (n === 0) return errorResponse(NOT_PEER);
    ctx.log?.(`vTPM ${ctx.sender}: guest revoked NV index ${hex} from VM ${req.granteeVmId}`);
  }
  return guestGrantResponse(req.sessionAttributes);
}
