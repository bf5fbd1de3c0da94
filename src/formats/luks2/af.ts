// The anti-forensic information splitter of the LUKS1 spec (also LUKS2's "af": {"type": "luks1"}): a key of n
// bytes becomes `stripes` blocks of n bytes, all needed to recover it, so wiping any part of the keyslot area
// destroys the key. Blocks s_0 .. s_{k-2} are random; with d_0 = 0 and d_{i+1} = H(d_i XOR s_i), the last
// block is s_{k-1} = d_{k-1} XOR key. H (the "diffuse" step) hashes the block in digest-sized pieces, piece j
// as hash(be32(j) || piece_j), the last, shorter piece truncated to its length.
import { randomBytes } from 'node:crypto';
import { LuksFormatError } from './errors.ts';
import { digest, luksHash } from './hash.ts';

/** The largest stripe count accepted from a header; cryptsetup always writes 4000. */
export const MAX_AF_STRIPES = 4000;
const MAX_KEY_BYTES = 512;

/** Splits `key` into `stripes` blocks; returns them concatenated (key.length * stripes bytes). */
export function afSplit(key: Buffer, stripes: number, hashName: string, random: (n: number) => Buffer = randomBytes): Buffer {
  checkParams(key.length, stripes);
  const hash = luksHash(hashName);
  const n = key.length;
  const out = Buffer.alloc(n * stripes);
  random(n * (stripes - 1)).copy(out, 0, 0, n * (stripes - 1));
  const d = Buffer.alloc(n);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, out.subarray(i * n, (i + 1) * n));
    diffuse(d, hash);
  }
  const last = out.subarray((stripes - 1) * n);
  for (let j = 0; j < n; j++) last[j] = d[j]! ^ key[j]!;
  d.fill(0);
  return out;
}

/** Recovers the key from the first keySize * stripes bytes of `material`. */
export function afMerge(material: Buffer, keySize: number, stripes: number, hashName: string): Buffer {
  checkParams(keySize, stripes);
  const hash = luksHash(hashName);
  if (material.length < keySize * stripes) {
    throw new LuksFormatError(`AF material is ${material.length} bytes, need ${keySize * stripes}`);
  }
  const d = Buffer.alloc(keySize);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, material.subarray(i * keySize, (i + 1) * keySize));
    diffuse(d, hash);
  }
  xorInto(d, material.subarray((stripes - 1) * keySize, stripes * keySize));
  return d;
}

function checkParams(keySize: number, stripes: number): void {
  if (!Number.isInteger(keySize) || keySize < 1 || keySize > MAX_KEY_BYTES) {
    throw new LuksFormatError(`AF key size ${keySize} out of range 1..${MAX_KEY_BYTES}`);
  }
  if (!Number.isInteger(stripes) || stripes < 1 || stripes > MAX_AF_STRIPES) {
    throw new LuksFormatError(`AF stripes ${stripes} out of range 1..${MAX_AF_STRIPES}`);
  }
}

function xorInto(dst: Buffer, src: Buffer): void {
  for (let j = 0; j < dst.length; j++) dst[j] = dst[j]! ^ src[j]!;
}

function diffuse(block: Buffer, hash: { name: string; size: number }): void {
  const index = Buffer.alloc(4);
  for (let j = 0, at = 0; at < block.length; j++, at += hash.size) {
    const piece = block.subarray(at, Math.min(at + hash.size, block.length));
    index.writeUInt32BE(j, 0);
    digest(hash.name, index, piece).copy(piece, 0, 0, piece.length);
  }
}
