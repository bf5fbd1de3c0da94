/**
 * HPKE (RFC 9180) base mode with the one suite vmseal uses: DHKEM(X25519, HKDF-SHA256) (KEM 0x0020),
 * HKDF-SHA256 (KDF 0x0001), AES-256-GCM (AEAD 0x0002), single-shot (sequence number 0). Keys are raw
 * 32-byte X25519 values; `enc` is the sender's 32-byte ephemeral public key.
 *
 * The compact form of a sealed message is enc (32 bytes) || ciphertext (plaintext length + 16), the
 * same layout other single-shot HPKE implementations emit.
 */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';

export const HPKE_PUBLIC_KEY_BYTES = 32;
export const HPKE_PRIVATE_KEY_BYTES = 32;
export const HPKE_ENC_BYTES = 32;
export const HPKE_TAG_BYTES = 16;

export type HpkeErrorCode = 'BAD_KEY' | 'BAD_INPUT' | 'SEAL_FAILED' | 'OPEN_FAILED';

/** Any HPKE failure; `code` says which. Opening never yields partial plaintext. */
export class HpkeError extends Error {
  readonly code: HpkeErrorCode;
  constructor(code: HpkeErrorCode, message: string) {
    super(message);
    this.name = 'HpkeError';
    this.code = code;
  }
}

export interface HpkeKeyPair {
  publicKey: Buffer;
  privateKey: Buffer;
}

export interface HpkeSealed {
  enc: Buffer;
  ciphertext: Buffer;
}

/** `info` binds the key schedule to a protocol context; `aad` is authenticated, not encrypted. */
export interface HpkeOptions {
  info: Uint8Array;
  aad?: Uint8Array;
}

const suite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Aes256Gcm() });

// RFC 8410 PKCS#8 header of an X25519 private key (id-X25519 is 1.3.101.110).
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

function checkBytes(value: Uint8Array, length: number, what: string, code: HpkeErrorCode): void {
  if (!(value instanceof Uint8Array) || value.length !== length) {
    throw new HpkeError(code, `${what} must be ${length} bytes`);
  }
}

function checkOptions(opts: HpkeOptions): void {
  if (!opts || !(opts.info instanceof Uint8Array)) throw new HpkeError('BAD_INPUT', 'HPKE info must be bytes');
  if (opts.aad !== undefined && !(opts.aad instanceof Uint8Array)) throw new HpkeError('BAD_INPUT', 'HPKE aad must be bytes');
}

export async function generateHpkeKeyPair(): Promise<HpkeKeyPair> {
  const pair = await suite.kem.generateKeyPair();
  return {
    publicKey: Buffer.from(await suite.kem.serializePublicKey(pair.publicKey)),
    privateKey: Buffer.from(await suite.kem.serializePrivateKey(pair.privateKey)),
  };
}

/** The raw public key that belongs to a raw X25519 private key. */
export function hpkePublicKeyFromPrivate(privateKey: Uint8Array): Buffer {
  checkBytes(privateKey, HPKE_PRIVATE_KEY_BYTES, 'HPKE private key', 'BAD_KEY');
  const key = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, privateKey]), format: 'der', type: 'pkcs8' });
  return Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x ?? '', 'base64url');
}

export async function sealTo(recipientPublicKey: Uint8Array, plaintext: Uint8Array, opts: HpkeOptions): Promise<HpkeSealed> {
  checkBytes(recipientPublicKey, HPKE_PUBLIC_KEY_BYTES, 'HPKE recipient public key', 'BAD_KEY');
  if (!(plaintext instanceof Uint8Array)) throw new HpkeError('BAD_INPUT', 'HPKE plaintext must be bytes');
  checkOptions(opts);
  let publicKey: CryptoKey;
  try {
    publicKey = await suite.kem.deserializePublicKey(recipientPublicKey);
  } catch {
    throw new HpkeError('BAD_KEY', 'HPKE recipient public key is not an X25519 key');
  }
  try {
    const { enc, ct } = await suite.seal({ recipientPublicKey: publicKey, info: opts.info }, plaintext, opts.aad);
    return { enc: Buffer.from(enc), ciphertext: Buffer.from(ct) };
  } catch (err) {
    // A low-order recipient key makes the DH output all zero, which RFC 9180 section 7.1.4 forbids.
    throw new HpkeError('SEAL_FAILED', `HPKE seal failed: ${(err as Error).message}`);
  }
}

export async function openWith(
  recipientPrivateKey: Uint8Array,
  enc: Uint8Array,
  ciphertext: Uint8Array,
  opts: HpkeOptions,
): Promise<Buffer> {
  checkBytes(recipientPrivateKey, HPKE_PRIVATE_KEY_BYTES, 'HPKE recipient private key', 'BAD_KEY');
  checkBytes(enc, HPKE_ENC_BYTES, 'HPKE enc', 'BAD_INPUT');
  if (!(ciphertext instanceof Uint8Array) || ciphertext.length < HPKE_TAG_BYTES) {
    throw new HpkeError('BAD_INPUT', `HPKE ciphertext shorter than the ${HPKE_TAG_BYTES}-byte tag`);
  }
  checkOptions(opts);
  let privateKey: CryptoKey;
  try {
    privateKey = await suite.kem.deserializePrivateKey(recipientPrivateKey);
  } catch {
    throw new HpkeError('BAD_KEY', 'HPKE recipient private key is not an X25519 key');
  }
  try {
    const pt = await suite.open({ recipientKey: privateKey, enc, info: opts.info }, ciphertext, opts.aad);
    return Buffer.from(pt);
  } catch {
    throw new HpkeError('OPEN_FAILED', 'HPKE open failed (wrong key, wrong info/aad, or tampered message)');
  }
}

export function packSealed(sealed: HpkeSealed): Buffer {
  checkBytes(sealed.enc, HPKE_ENC_BYTES, 'HPKE enc', 'BAD_INPUT');
  return Buffer.concat([sealed.enc, sealed.ciphertext]);
}

export function unpackSealed(packed: Uint8Array): HpkeSealed {
  if (!(packed instanceof Uint8Array) || packed.length < HPKE_ENC_BYTES + HPKE_TAG_BYTES) {
    throw new HpkeError('BAD_INPUT', `sealed HPKE message shorter than ${HPKE_ENC_BYTES + HPKE_TAG_BYTES} bytes`);
  }
  const buf = Buffer.from(packed.buffer, packed.byteOffset, packed.length);
  return { enc: Buffer.from(buf.subarray(0, HPKE_ENC_BYTES)), ciphertext: Buffer.from(buf.subarray(HPKE_ENC_BYTES)) };
}

export async function sealToCompact(recipientPublicKey: Uint8Array, plaintext: Uint8Array, opts: HpkeOptions): Promise<Buffer> {
  return packSealed(await sealTo(recipientPublicKey, plaintext, opts));
}

export async function openCompact(recipientPrivateKey: Uint8Array, packed: Uint8Array, opts: HpkeOptions): Promise<Buffer> {
  const { enc, ciphertext } = unpackSealed(packed);
  return openWith(recipientPrivateKey, enc, ciphertext, opts);
}
