/**
 * Ownership and grant tokens for vmseal-managed NV indices (seed 002's "Secret": the domain id, the region
 * and a random value, encrypted by the TPM manager). Here both are AES-256-GCM envelopes (crypto/aead.ts)
 * under the manager key, a host-level key only the monitor holds:
 *
 *   owner token  plaintext = owner instance (16) ‖ nvIndex (u32) ‖ dataSize (u16) ‖ nonce (16)
 *                            [‖ authValue size (u8) ‖ authValue]   when the monitor saw the index's auth
 *                aad       = "vmseal/v1/nv-owner" ‖ nvIndex
 *   grant token  plaintext = owner instance (16) ‖ grantee instance (16) ‖ nvIndex (u32) ‖ owner nonce (16)
 *                aad       = "vmseal/v1/nv-grant" ‖ nvIndex ‖ grantee instance
 *
 * The index (and, for grants, the grantee) is in the AAD, so a token copied onto another row does not even
 * open; the decrypted owner is the truth, whatever the row's owner column says. A grant carries its owner
 * token's nonce, so it dies with the definition it was made for: an index undefined and defined again
 * (a new nonce) does not inherit old grants, even if their rows were put back.
 */
import { randomBytes } from 'node:crypto';
import { AeadError, open, seal } from '../../crypto/aead.ts';

export const NV_OWNER_AAD = 'vmseal/v1/nv-owner';
export const NV_GRANT_AAD = 'vmseal/v1/nv-grant';
export const NV_TOKEN_NONCE_BYTES = 16;
/** Instance ids are 16 bytes, written as 32 hex digits (swtpm-instance.ts vtpmStateId). */
export const INSTANCE_ID = /^[0-9a-f]{32}$/;

const OWNER_PLAINTEXT = 16 + 4 + 2 + NV_TOKEN_NONCE_BYTES;
const GRANT_PLAINTEXT = 16 + 16 + 4 + NV_TOKEN_NONCE_BYTES;

export class NvTokenError extends Error {
  override readonly name = 'NvTokenError';
}

export interface OwnerClaim {
  owner: string;
  nvIndex: number;
  dataSize: number;
  nonce: Buffer;
  /**
   * The index's authValue (trailing zeros stripped, as the TPM keeps it) when the define or change-auth
   * carried it in clear; the proxy needs it to answer a grantee's HMAC session (nv-shared-read.ts).
   */
  auth?: Buffer;
}

/** TPM2B_AUTH holds at most one digest of the largest hash. */
const MAX_AUTH = 64;

function instanceBytes(id: string): Buffer {
  if (!INSTANCE_ID.test(id)) throw new NvTokenError(`bad vTPM instance id ${JSON.stringify(id.slice(0, 40))}`);
  return Buffer.from(id, 'hex');
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function openOrRefuse(key: Buffer, token: Uint8Array, aad: Buffer, what: string): Buffer {
  try {
    return open(key, token, aad);
  } catch (err) {
    if (err instanceof AeadError) throw new NvTokenError(`${what} does not open (${err.code})`);
    throw err;
  }
}

function ownerAad(nvIndex: number): Buffer {
  return Buffer.concat([Buffer.from(NV_OWNER_AAD, 'ascii'), u32(nvIndex)]);
}

function grantAad(nvIndex: number, grantee: string): Buffer {
  return Buffer.concat([Buffer.from(NV_GRANT_AAD, 'ascii'), u32(nvIndex), instanceBytes(grantee)]);
}

export function sealOwnerToken(managerKey: Buffer, c: Omit<OwnerClaim, 'nonce'>): { token: Buffer; nonce: Buffer } {
  if (!Number.isInteger(c.dataSize) || c.dataSize < 0 || c.dataSize > 0xffff) throw new NvTokenError(`dataSize ${c.dataSize}`);
  const nonce = randomBytes(NV_TOKEN_NONCE_BYTES);
  return { token: sealOwnerTokenWith(managerKey, c, nonce), nonce };
}

/** An owner token for claim `c` with the given nonce (a new auth for the same definition keeps its nonce). */
export function sealOwnerTokenWith(managerKey: Buffer, c: Omit<OwnerClaim, 'nonce'>, nonce: Buffer): Buffer {
  if (c.auth && c.auth.length > MAX_AUTH) throw new NvTokenError(`authValue of ${c.auth.length} bytes`);
  const size = Buffer.alloc(2);
  size.writeUInt16BE(c.dataSize);
  const auth = c.auth ? Buffer.concat([Buffer.from([c.auth.length]), c.auth]) : Buffer.alloc(0);
  const plaintext = Buffer.concat([instanceBytes(c.owner), u32(c.nvIndex), size, nonce, auth]);
  return seal(managerKey, plaintext, ownerAad(c.nvIndex));
}

/** Opens the owner token stored for `nvIndex`; throws NvTokenError if it was forged, altered or moved. */
export function openOwnerToken(managerKey: Buffer, token: Uint8Array, nvIndex: number): OwnerClaim {
  const p = openOrRefuse(managerKey, token, ownerAad(nvIndex), `owner token of NV index 0x${nvIndex.toString(16)}`);
  const authSize = p.length > OWNER_PLAINTEXT ? p[OWNER_PLAINTEXT]! : 0;
  if (p.length !== OWNER_PLAINTEXT && p.length !== OWNER_PLAINTEXT + 1 + authSize) throw new NvTokenError(`owner token of ${p.length} bytes`);
  const claim: OwnerClaim = { owner: p.subarray(0, 16).toString('hex'), nvIndex: p.readUInt32BE(16), dataSize: p.readUInt16BE(20), nonce: Buffer.from(p.subarray(22, OWNER_PLAINTEXT)) };
  if (p.length > OWNER_PLAINTEXT) claim.auth = Buffer.from(p.subarray(OWNER_PLAINTEXT + 1));
  if (claim.nvIndex !== nvIndex) throw new NvTokenError(`owner token names index 0x${claim.nvIndex.toString(16)}, not 0x${nvIndex.toString(16)}`);
  return claim;
}

export function sealGrantToken(managerKey: Buffer, owner: OwnerClaim, grantee: string): Buffer {
  const plaintext = Buffer.concat([instanceBytes(owner.owner), instanceBytes(grantee), u32(owner.nvIndex), owner.nonce]);
  return seal(managerKey, plaintext, grantAad(owner.nvIndex, grantee));
}

/** Whether a grant row's token is genuine and was made by the current definition of the index for `grantee`. */
export function grantTokenValid(managerKey: Buffer, token: Uint8Array, owner: OwnerClaim, grantee: string): boolean {
  let p: Buffer;
  try {
    p = openOrRefuse(managerKey, token, grantAad(owner.nvIndex, grantee), 'grant token');
  } catch (err) {
    if (err instanceof NvTokenError) return false;
    throw err;
  }
  return (
    p.length === GRANT_PLAINTEXT &&
    p.subarray(0, 16).toString('hex') === owner.owner &&
    p.subarray(16, 32).toString('hex') === grantee &&
    p.readUInt32BE(32) === owner.nvIndex &&
    p.subarray(36).equals(owner.nonce)
  );
}
