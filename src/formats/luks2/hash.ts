import { createHash } from 'node:crypto';
import { LuksFormatError } from './errors.ts';

// Hash names as LUKS headers spell them (cryptsetup passes them to its crypto backend, which lower-cases them);
// only these are accepted, so a header cannot make us ask node:crypto for an arbitrary algorithm.
const SUPPORTED = new Map<string, number>([
  ['sha1', 20],
  ['sha224', 28],
  ['sha256', 32],
  ['sha384', 48],
  ['sha512', 64],
  ['ripemd160', 20],
  ['sha3-256', 32],
  ['sha3-512', 64],
]);

/** Validates a LUKS hash name and returns the node:crypto name and digest size. */
export function luksHash(name: string): { name: string; size: number } {
  const lower = name.toLowerCase();
  const size = SUPPORTED.get(lower);
  if (size === undefined) throw new LuksFormatError(`unsupported hash "${name.slice(0, 32)}"`);
  return { name: lower, size };
}

export function digest(hash: string, ...parts: Buffer[]): Buffer {
  const h = createHash(hash);
  for (const p of parts) h.update(p);
  return h.digest();
}
