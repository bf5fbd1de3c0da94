// Keyslot key derivation (passphrase -> key that decrypts the keyslot area) and the volume-key digest check.
// PBKDF2 runs in node:crypto's thread pool; Argon2 in hash-wasm (WebAssembly), as node:crypto has none.
import { pbkdf2, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { argon2i, argon2id } from 'hash-wasm';
import { LuksFormatError } from './errors.ts';
import { luksHash } from './hash.ts';

const pbkdf2Async = promisify(pbkdf2);

/** cryptsetup's bounds (lib/utils_pbkdf.c, LUKS2 JSON validation); a header outside them is refused. */
export const KDF_LIMITS = {
  maxIterations: 0xffffffff,
  maxArgon2MemoryKiB: 4 * 1024 * 1024,
  maxArgon2Parallelism: 0xffffff,
  minSaltBytes: 8,
  maxSaltBytes: 1024,
} as const;

export type KeyslotKdf =
  | { type: 'pbkdf2'; hash: string; iterations: number; salt: Buffer }
  | { type: 'argon2i' | 'argon2id'; time: number; memoryKiB: number; parallelism: number; salt: Buffer };

export function checkKdf(kdf: KeyslotKdf): void {
  if (kdf.salt.length < KDF_LIMITS.minSaltBytes || kdf.salt.length > KDF_LIMITS.maxSaltBytes) {
    throw new LuksFormatError(`KDF salt of ${kdf.salt.length} bytes out of range`);
  }
  if (kdf.type === 'pbkdf2') {
    luksHash(kdf.hash);
    checkInt(kdf.iterations, 1, KDF_LIMITS.maxIterations, 'PBKDF2 iterations');
    return;
  }
  checkInt(kdf.time, 1, KDF_LIMITS.maxIterations, 'Argon2 time cost');
  checkInt(kdf.parallelism, 1, KDF_LIMITS.maxArgon2Parallelism, 'Argon2 parallelism');
  checkInt(kdf.memoryKiB, 8 * kdf.parallelism, KDF_LIMITS.maxArgon2MemoryKiB, 'Argon2 memory (KiB)');
}

/** Derives `length` bytes from the passphrase with the keyslot's KDF. */
export async function deriveKeyslotKey(passphrase: Buffer, kdf: KeyslotKdf, length: number): Promise<Buffer> {
  checkKdf(kdf);
  checkInt(length, 1, 512, 'derived key length');
  if (kdf.type === 'pbkdf2') {
    return pbkdf2Async(passphrase, kdf.salt, kdf.iterations, length, luksHash(kdf.hash).name);
  }
  const options = {
    password: passphrase,
    salt: kdf.salt,
    iterations: kdf.time,
    parallelism: kdf.parallelism,
    memorySize: kdf.memoryKiB,
    hashLength: length,
    outputType: 'binary' as const,
  };
  const out = kdf.type === 'argon2id' ? await argon2id(options) : await argon2i(options);
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/** The LUKS volume-key digest: PBKDF2(hash, volumeKey, salt, iterations) truncated or sized to `length`. */
export async function volumeKeyDigest(
  volumeKey: Buffer,
  hash: string,
  salt: Buffer,
  iterations: number,
  length: number,
): Promise<Buffer> {
  checkInt(iterations, 1, KDF_LIMITS.maxIterations, 'digest iterations');
  checkInt(length, 1, 64, 'digest length');
  return pbkdf2Async(volumeKey, salt, iterations, length, luksHash(hash).name);
}

/** True if `candidate` matches the stored digest (compared in constant time). */
export async function checkVolumeKeyDigest(
  candidate: Buffer,
  stored: { hash: string; salt: Buffer; iterations: number; digest: Buffer },
): Promise<boolean> {
  const d = await volumeKeyDigest(candidate, stored.hash, stored.salt, stored.iterations, stored.digest.length);
  return timingSafeEqual(d, stored.digest);
}

function checkInt(v: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(v) || v < min || v > max) throw new LuksFormatError(`${what} ${v} out of range ${min}..${max}`);
}
