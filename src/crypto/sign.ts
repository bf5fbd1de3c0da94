/**
 * Ed25519 (RFC 8032, pure) signatures with raw keys: 32-byte private seed, 32-byte public key,
 * 64-byte signature. node:crypto has no raw import for OKP keys, so raw keys are wrapped in the fixed
 * DER prefixes of RFC 8410 (PKCS#8 for the seed, SubjectPublicKeyInfo for the public key); raw bytes
 * come back out through the JWK members d and x.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';

export const ED25519_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

/** A key that is not a raw Ed25519 key of the right length. */
export class SigningKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SigningKeyError';
  }
}

export interface Ed25519KeyPair {
  publicKey: Buffer;
  privateKey: Buffer;
}

// RFC 8410: id-Ed25519 is 1.3.101.112; these are the DER headers in front of the 32 raw bytes.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function rawFromJwk(value: string | undefined, what: string): Buffer {
  const raw = Buffer.from(value ?? '', 'base64url');
  if (raw.length !== ED25519_KEY_BYTES) throw new SigningKeyError(`${what} is not a 32-byte Ed25519 key`);
  return raw;
}

function checkRaw(key: Uint8Array, what: string): void {
  if (!(key instanceof Uint8Array) || key.length !== ED25519_KEY_BYTES) {
    throw new SigningKeyError(`${what} must be ${ED25519_KEY_BYTES} raw bytes`);
  }
}

export function ed25519PrivateKeyObject(privateKey: Uint8Array): KeyObject {
  checkRaw(privateKey, 'Ed25519 private key');
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, privateKey]), format: 'der', type: 'pkcs8' });
}

export function ed25519PublicKeyObject(publicKey: Uint8Array): KeyObject {
  checkRaw(publicKey, 'Ed25519 public key');
  try {
    return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
  } catch (err) {
    throw new SigningKeyError(`not a usable Ed25519 public key: ${(err as Error).message}`);
  }
}

/** The raw 32-byte public key of an Ed25519 KeyObject (public or private). */
export function ed25519RawPublicKey(key: KeyObject): Buffer {
  if (key.asymmetricKeyType !== 'ed25519') throw new SigningKeyError(`expected an Ed25519 key, got ${key.asymmetricKeyType}`);
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return rawFromJwk(pub.export({ format: 'jwk' }).x, 'public key');
}

export function generateEd25519KeyPair(): Ed25519KeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  return { publicKey: rawFromJwk(jwk.x, 'public key'), privateKey: rawFromJwk(jwk.d, 'private key') };
}

export function ed25519PublicKeyFromPrivate(privateKey: Uint8Array): Buffer {
  return ed25519RawPublicKey(ed25519PrivateKeyObject(privateKey));
}

export function ed25519Sign(privateKey: Uint8Array, message: Uint8Array): Buffer {
  return sign(null, message, ed25519PrivateKeyObject(privateKey));
}

/** False for any signature that does not verify, including one of the wrong length. */
export function ed25519Verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const key = ed25519PublicKeyObject(publicKey);
  if (!(signature instanceof Uint8Array) || signature.length !== ED25519_SIGNATURE_BYTES) return false;
  return verify(null, message, key, signature);
}
