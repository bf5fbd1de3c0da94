/**
 * readDynamic against readelf on a real Debian binary, and on that binary damaged in the ways a
 * hostile file would be: each gives an ElfError, never a read outside the buffer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { DT_NEEDED, DT_STRSZ, DT_STRTAB, ElfError, parseElf, PT_DYNAMIC, PT_INTERP, readDynamic } from '../../src/formats/elf.ts';

const BINARY = '/usr/bin/readelf';

function readelf(path: string): { needed: string[]; interpreter: string | undefined } {
  const out = execFileSync('readelf', ['-dlW', path], { encoding: 'utf8' });
  return {
    needed: [...out.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!),
    interpreter: /Requesting program interpreter: ([^\]]+)\]/.exec(out)?.[1],
  };
}

/** A copy of the binary with the value of the first dynamic entry tagged `tag` replaced. */
function withDynamicValue(bytes: Buffer, tag: number, value: bigint): Buffer {
  const copy = Buffer.from(bytes);
  const dyn = parseElf(copy).segments.find((s) => s.type === PT_DYNAMIC)!;
  for (let o = dyn.offset; o < dyn.offset + dyn.filesz; o += 16) {
    if (copy.readBigUInt64LE(o) === BigInt(tag)) {
      copy.writeBigUInt64LE(value, o + 8);
      return copy;
    }
  }
  throw new Error(`no dynamic tag ${tag}`);
}

test('readDynamic reads what readelf reads', () => {
  const bytes = readFileSync(BINARY);
  const dyn = readDynamic(parseElf(bytes));
  const oracle = readelf(BINARY);
  assert.ok(oracle.needed.length > 0);
  assert.deepEqual(dyn.needed, oracle.needed);
  assert.equal(dyn.interpreter, oracle.interpreter);
});

test('readDynamic: a static binary has no entries', () => {
  const busybox = execFileSync('dpkg', ['-L', 'busybox-static'], { encoding: 'utf8' }).split('\n').find((f) => f.endsWith('/bin/busybox'))!;
  assert.deepEqual(readDynamic(parseElf(readFileSync(busybox))), { needed: [] });
});

test('readDynamic: damaged dynamic sections give ElfError', () => {
  const bytes = readFileSync(BINARY);
  const cases: Array<[string, Buffer]> = [
    ['string table size larger than the file', withDynamicValue(bytes, DT_STRSZ, 1n << 40n)],
    ['string table at an unmapped address', withDynamicValue(bytes, DT_STRTAB, 0xdead0000_00000000n)],
    ['library name past the string table', withDynamicValue(bytes, DT_NEEDED, 1n << 31n)],
  ];
  for (const [what, damaged] of cases) assert.throws(() => readDynamic(parseElf(damaged)), ElfError, what);
  // No NUL after the interpreter name.
  const interp = parseElf(bytes).segments.find((s) => s.type === PT_INTERP)!;
  const unterminated = Buffer.from(bytes);
  unterminated.fill(0x41, interp.offset, interp.offset + interp.filesz);
  assert.throws(() => readDynamic(parseElf(unterminated)), /PT_INTERP is not NUL-terminated/);
});
