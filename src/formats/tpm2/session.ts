// Authorization sessions (Part 1 §19, Part 3 §11.1): TPM2_StartAuthSession's parameters and response, and the
// command/response HMACs of an HMAC session. A TPM proxy uses these to stand in for a guest's TPM on one
// command: it needs the session's nonces, and for an unbound, unsalted session (sessionKey empty) the HMAC key
// is just the entity's authValue.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { TPM_ALG, TPM_RC, TPM_RH, TPM_ST, rcForParameter } from './constants.ts';
import { TpmReader, TpmWriter } from './bytes.ts';
import { HEADER_SIZE, type AuthSession, type ParsedCommand, type ParsedResponse } from './command.ts';
import { hashInfo } from './pcr.ts';

/** TPM_SE: the session types of StartAuthSession. */
export const TPM_SE = { HMAC: 0x00, POLICY: 0x01, TRIAL: 0x03 } as const;

/** TPMA_SESSION bits. */
export const TPMA_SESSION = { CONTINUE_SESSION: 0x01, AUDIT_EXCLUSIVE: 0x02, AUDIT_RESET: 0x04, DECRYPT: 0x20, ENCRYPT: 0x40, AUDIT: 0x80 } as const;

export interface StartAuthSessionRequest {
  tpmKey: number;
  bind: number;
  nonceCaller: Buffer;
  encryptedSaltSize: number;
  sessionType: number;
  /** TPMT_SYM_DEF.algorithm (TPM_ALG_NULL: no parameter encryption possible). */
  symmetric: number;
  authHash: number;
}

/** The parameters of a parsed TPM2_StartAuthSession command; throws Tpm2FormatError with the TPM's RC. */
export function parseStartAuthSession(cmd: ParsedCommand): StartAuthSessionRequest {
  const r = new TpmReader(cmd.parameters, 0, cmd.parameters.length);
  r.shortRc = rcForParameter(TPM_RC.INSUFFICIENT, 1);
  const nonceCaller = r.tpm2b('nonceCaller', 64);
  r.shortRc = rcForParameter(TPM_RC.INSUFFICIENT, 2);
  const encryptedSaltSize = r.tpm2b('encryptedSalt', 512).length;
  r.shortRc = rcForParameter(TPM_RC.INSUFFICIENT, 3);
  const sessionType = r.u8('sessionType');
  r.shortRc = rcForParameter(TPM_RC.INSUFFICIENT, 4);
  const symmetric = r.u16('symmetric.algorithm');
  if (symmetric !== TPM_ALG.NULL) {
    r.u16('symmetric.keyBits');
    r.u16('symmetric.mode');
  }
  r.shortRc = rcForParameter(TPM_RC.INSUFFICIENT, 5);
  const authHash = r.u16('authHash');
  r.done('StartAuthSession parameters');
  return { tpmKey: cmd.handles[0]!, bind: cmd.handles[1]!, nonceCaller, encryptedSaltSize, sessionType, symmetric, authHash };
}

/** Whether the session's sessionKey is empty: neither bound to an entity nor salted (Part 1 §19.6.8). */
export function hasEmptySessionKey(s: StartAuthSessionRequest): boolean {
  return s.tpmKey === TPM_RH.NULL && s.bind === TPM_RH.NULL && s.encryptedSaltSize === 0;
}

/** nonceTPM of a successful StartAuthSession response (its handle is rsp.handles[0]). */
export function startAuthSessionNonce(rsp: ParsedResponse): Buffer {
  const r = new TpmReader(rsp.parameters, 0, rsp.parameters.length, TPM_RC.FAILURE);
  const nonce = r.tpm2b('nonceTPM', 64);
  r.done('StartAuthSession response', TPM_RC.FAILURE);
  return nonce;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** cpHash = H(commandCode ‖ Name(handle 1) ‖ … ‖ parameters) (Part 1 §18.7). */
export function commandParameterHash(hashAlg: number, commandCode: number, names: readonly Buffer[], parameters: Buffer): Buffer {
  const h = createHash(hashInfo(hashAlg).name).update(u32(commandCode));
  for (const n of names) h.update(n);
  return h.update(parameters).digest();
}

/** rpHash = H(responseCode ‖ commandCode ‖ parameters) (Part 1 §18.8). */
export function responseParameterHash(hashAlg: number, responseCode: number, commandCode: number, parameters: Buffer): Buffer {
  return createHash(hashInfo(hashAlg).name).update(u32(responseCode)).update(u32(commandCode)).update(parameters).digest();
}

/**
 * An HMAC session's authorization HMAC (Part 1 §19.6.5) when no other session of the command encrypts or
 * decrypts: HMAC_authHash(sessionKey ‖ authValue, pHash ‖ nonceNewer ‖ nonceOlder ‖ sessionAttributes). For a
 * command nonceNewer is nonceCaller, for a response nonceTPM.
 */
export function sessionHmac(hashAlg: number, key: Buffer, pHash: Buffer, nonceNewer: Buffer, nonceOlder: Buffer, attributes: number): Buffer {
  return createHmac(hashInfo(hashAlg).name, key).update(pHash).update(nonceNewer).update(nonceOlder).update(Buffer.from([attributes])).digest();
}

export function hmacEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The TPM stores (and keys HMACs with) an authValue without its trailing zero octets (Part 1 §19.6.5). */
export function stripTrailingZeros(auth: Buffer): Buffer {
  let end = auth.length;
  while (end > 0 && auth[end - 1] === 0) end--;
  return auth.subarray(0, end);
}

/** A successful response with sessions: handles, parameterSize, parameters, one TPMS_AUTH_RESPONSE per session. */
export function buildSessionResponse(handles: readonly number[], parameters: Buffer, sessions: ReadonlyArray<Omit<AuthSession, 'handle'>>): Buffer {
  const w = new TpmWriter();
  for (const h of handles) w.u32(h);
  w.u32(parameters.length).bytes(parameters);
  for (const s of sessions) w.tpm2b(s.nonce).u8(s.attributes).tpm2b(s.hmac);
  const body = w.finish();
  return new TpmWriter().u16(TPM_ST.SESSIONS).u32(HEADER_SIZE + body.length).u32(TPM_RC.SUCCESS).bytes(body).finish();
}
