/**
 * The scan's measurement list in the IMA ascii format, so IMA tooling (and src/formats/ima.ts's
 * parser) reads it: `10 <template-hash> ima-ng sha256:<digest> <path>`. The template hash is what
 * the kernel's ascii_runtime_measurements shows: SHA-1 over the ima-ng template data, i.e. for each
 * field its u32 little-endian length then its bytes, the fields being d-ng = "sha256:\0" ‖ digest and
 * n-ng = path ‖ "\0". (The kernel's per-bank lists use the bank's hash instead of SHA-1.)
 */
import { createHash } from 'node:crypto';

export const MEASUREMENT_PCR = 10;

function field(b: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  return Buffer.concat([len, b]);
}

export function imaNgTemplateHash(sha256Hex: string, path: string, bank: 'sha1' | 'sha256' = 'sha1'): string {
  const dng = Buffer.concat([Buffer.from('sha256:\0', 'latin1'), Buffer.from(sha256Hex, 'hex')]);
  const nng = Buffer.concat([Buffer.from(path, 'utf8'), Buffer.alloc(1)]);
  return createHash(bank).update(Buffer.concat([field(dng), field(nng)])).digest('hex');
}

/** One line per file, in the order given; paths with whitespace are unambiguous only in JSON output. */
export function formatMeasurementList(files: ReadonlyArray<{ path: string; sha256: string }>): string {
  return files.map((f) => `${MEASUREMENT_PCR} ${imaNgTemplateHash(f.sha256, f.path)} ima-ng sha256:${f.sha256} ${f.path}\n`).join('');
}
