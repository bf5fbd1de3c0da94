/**
 * Keyed BLAKE3 computed by the real `b3sum` tool (Debian's b3sum, the Rust implementation: nothing here or in
 * the C code we compile shares its source). Test helper, not a test file.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** b3sum --keyed over each input (one process for all of them); the 32-byte hashes in order. */
export function b3sumKeyed(key: Buffer, inputs: Buffer[]): Buffer[] {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-b3sum-'));
  try {
    const files = inputs.map((data, i) => {
      const f = join(dir, `in-${i}`);
      writeFileSync(f, data);
      return f;
    });
    // --keyed reads exactly 32 raw key bytes from stdin.
    const out = execFileSync('b3sum', ['--keyed', '--no-names', ...files], { input: key, encoding: 'utf8' });
    const lines = out.trim().split('\n');
    if (lines.length !== inputs.length) throw new Error(`b3sum printed ${lines.length} lines for ${inputs.length} inputs`);
    return lines.map((l) => Buffer.from(l, 'hex'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function u64le(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

export function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
