/**
 * AES-256-GCM envelopes: every symmetric message vmseal seals (identity proofs, commands, console
 * frames) uses this one self-describing layout, so a reader never guesses nonce or tag positions.
 *
 *   envelope = version (1 byte, 0x01) || nonce (12 random bytes) || ciphertext || tag (16 bytes)
 *
 * The associated data is the caller's `aad` exactly (empty when omitted); the version byte is checked
 * strictly instead of authenticated, since a reader accepts one version only.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

export const AEAD_KEY_BYTES = 32;
export const AEAD_ENVELOPE_VERSION = 0x01;
export const AEAD_NONCE_BYTES = 12;
export const AEAD_TAG_BYTES = 16;
/** Bytes an envelope adds to its plaintext. */
export const AEAD_OVERHEAD = 1 + AEAD_NONCE_BYTES + AEAD_TAG_BYTES;

export type AeadErrorCode = 'BAD_KEY' | 'TRUNCATED' | 'BAD_VERSION' | 'AUTH_FAILED';

/** Any failure to seal or open; `code` says which. Opening never yields partial plaintext. */
export class AeadError extends Error {
  readonly code: AeadErrorCode;
  constructor(code: AeadErrorCode, message: string) {
    super(message);
    this.name = 'AeadError';
    this.code = code;
  }
}

function checkKey(key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== AEAD_KEY_BYTES) {
    throw new AeadError('BAD_KEY', `AES-256-GCM key must be ${AEAD_KEY_BYTES} bytes`);
  }
}

export function seal(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array = new Uint8Array(0)): Buffer {
  checkKey(key);
  const nonce = randomBytes(AEAD_NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: AEAD_TAG_BYTES });
  cipher.setAAD(aad);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.of(AEAD_ENVELOPE_VERSION), nonce, body, cipher.getAuthTag()]);
}

export function open(key: Uint8Array, envelope: Uint8Array, aad: Uint8Array = new Uint8Array(0)): Buffer {
  checkKey(key);
  if (!(envelope instanceof Uint8Array) || envelope.length < AEAD_OVERHEAD) {
    throw new AeadError('TRUNCATED', `envelope shorter than the ${AEAD_OVERHEAD}-byte minimum`);
  }
  if (envelope[0] !== AEAD_ENVELOPE_VERSION) {
    throw new AeadError('BAD_VERSION', `unknown envelope version ${envelope[0]}`);
  }
  const nonce = envelope.subarray(1, 1 + AEAD_NONCE_BYTES);
  const body = envelope.subarray(1 + AEAD_NONCE_BYTES, envelope.length - AEAD_TAG_BYTES);
  const tag = envelope.subarray(envelope.length - AEAD_TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: AEAD_TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  // update() output is withheld until final() has checked the tag.
  const head = decipher.update(body);
  try {
    return Buffer.concat([head, decipher.final()]);
  } catch {
    head.fill(0);
    throw new AeadError('AUTH_FAILED', 'envelope failed authentication (wrong key, wrong AAD or tampered)');
  }
}
