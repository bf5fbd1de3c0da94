/**
 * A grantee's NV_Read of a shared index under an HMAC session, served from the owner's swtpm (docs/vtpm-nv.md).
 *
 * tpm2-tools wraps the index password in an unbound, unsalted HMAC session that lives in the grantee's own
 * swtpm; the owner's swtpm has never heard of it. Such a session's HMAC key is just the index's authValue
 * (sessionKey is empty), which the monitor recorded when the owner defined the index, and its nonceTPM is
 * tracked by GuestSessions. So the proxy plays the TPM for this one command:
 *   1. the index's Name from the owner's swtpm (NV_ReadPublic), for cpHash;
 *   2. the guest's HMAC must verify under authValue (else TPM_RC_AUTH_FAIL, session 1);
 *   3. NV_Read on the owner's swtpm with the authValue as a password: the owner's TPM still checks the auth
 *      and the index's attributes (AUTHREAD, READLOCKED, WRITTEN);
 *   4. the response is re-authorized for the guest's session with the same nonceTPM. The session lives on in
 *      the guest's swtpm with that nonce, so the guest's next command on it still verifies there; without
 *      continueSession the proxy flushes it from the guest's swtpm, as the TPM would have.
 * Only NO_DA indices: a failed guess checked here would escape the owner TPM's dictionary-attack counter.
 */
import {
  TPM_CC,
  TPM_RC,
  TPMA_NV,
  TPMA_SESSION,
  buildSessionResponse,
  commandParameterHash,
  flushContextCommand,
  hmacEqual,
  nvReadCommand,
  nvReadPublicCommand,
  parseNvReadPublicResponse,
  parseResponse,
  rcForSession,
  responseParameterHash,
  sessionHmac,
  errorResponse,
  type NvAccess,
  type ParsedCommand,
} from '../../formats/tpm2/index.ts';
import type { GuestSessions } from './guest-sessions.ts';
import type { OwnerClaim } from './nv-token.ts';
import type { TpmEndpoint } from './tpm-channel.ts';

export interface SharedReadContext {
  cmd: ParsedCommand;
  access: NvAccess;
  claim: OwnerClaim;
  /** The owner's swtpm, and the grantee's own (where its session lives). */
  owner: TpmEndpoint;
  guest: TpmEndpoint;
  sessions: GuestSessions;
}

const rcOf = (rsp: Buffer) => rsp.readUInt32BE(6);

/**
 * The guest's answer, or undefined when the proxy cannot stand in for the command's session (not one tracked
 * HMAC session, parameter encryption or audit asked, auth not known, a DA-protected index).
 */
export async function sharedReadWithHmacSession(c: SharedReadContext): Promise<Buffer | undefined> {
  const s = c.cmd.sessions[0];
  if (c.cmd.sessions.length !== 1 || !s || !c.claim.auth) return undefined;
  const tracked = c.sessions.get(s.handle);
  if (!tracked || (s.attributes & ~TPMA_SESSION.CONTINUE_SESSION) !== 0) return undefined;

  const pubRsp = await c.owner.transact(nvReadPublicCommand(c.claim.nvIndex));
  if (rcOf(pubRsp) !== TPM_RC.SUCCESS) return pubRsp;
  const { nvPublic, nvName } = parseNvReadPublicResponse(parseResponse(pubRsp, TPM_CC.NV_ReadPublic));
  if (!(nvPublic.attributes & TPMA_NV.NO_DA)) return undefined;

  const auth = c.claim.auth;
  const cpHash = commandParameterHash(tracked.authHash, c.cmd.commandCode, [nvName, nvName], c.cmd.parameters);
  const expected = sessionHmac(tracked.authHash, auth, cpHash, s.nonce, tracked.nonceTpm, s.attributes);
  if (!hmacEqual(expected, s.hmac)) return errorResponse(rcForSession(TPM_RC.AUTH_FAIL, 1));

  const rsp = await c.owner.transact(nvReadCommand(c.claim.nvIndex, c.access.size!, c.access.offset!, { password: auth }));
  if (rcOf(rsp) !== TPM_RC.SUCCESS) return rsp;
  const parameters = parseResponse(rsp, TPM_CC.NV_Read).parameters;
  const rpHash = responseParameterHash(tracked.authHash, TPM_RC.SUCCESS, c.cmd.commandCode, parameters);
  const hmac = sessionHmac(tracked.authHash, auth, rpHash, tracked.nonceTpm, s.nonce, s.attributes);
  if (!(s.attributes & TPMA_SESSION.CONTINUE_SESSION)) {
    c.sessions.forget(s.handle);
    await c.guest.transact(flushContextCommand(s.handle));
  }
  return buildSessionResponse([], parameters, [{ nonce: tracked.nonceTpm, attributes: s.attributes, hmac }]);
}
