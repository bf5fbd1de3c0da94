/**
 * Guest-physical layout of q35 RAM and x86-64 page walks over synthetic RAM: tables are written by
 * the builder in introspect-synthetic.ts, and every expectation below is computed from the SDM's
 * rules by hand, not by the walker.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeSync, openSync, closeSync } from 'node:fs';
import { GuestMemory, PhysRangeError, physToFileOffset, q35RamLayout } from '../../src/monitor/introspect/guest-memory.ts';
import { GuestReader } from '../../src/monitor/introspect/guest-reader.ts';
import { cr3Root, isCanonical, linuxKernelRoot, translate, TranslationCache, UnmappedError, walk } from '../../src/monitor/introspect/page-walk.ts';
import { GiB1, KiB4, MiB2, PageTables, syntheticRam } from './introspect-synthetic.ts';

const MiB = 1n << 20n;
const GiB = 1n << 30n;

test('q35 splits RAM around the PCI hole as QEMU 7.2 does', () => {
  const cases: Array<[bigint, bigint, bigint]> = [
    [512n * MiB, 512n * MiB, 0n],
    [2n * GiB, 2n * GiB, 0n], // under 0xb0000000: all of it below 4 GiB
    [0xb000_0000n - MiB, 0xb000_0000n - MiB, 0n],
    [0xb000_0000n, 2n * GiB, 0x3000_0000n], // at the threshold the split drops to 2 GiB
    [3n * GiB, 2n * GiB, 1n * GiB],
    [4n * GiB, 2n * GiB, 2n * GiB],
  ];
  for (const [ram, below, above] of cases) assert.deepEqual(q35RamLayout(ram), { ramBytes: ram, below4g: below, above4g: above }, `RAM ${ram}`);

  const l3 = q35RamLayout(3n * GiB);
  assert.equal(physToFileOffset(l3, 0n, 4096), 0);
  assert.equal(physToFileOffset(l3, 0x7fff_f000n, 4096), 0x7fff_f000);
  assert.equal(physToFileOffset(l3, 0x1_0000_0000n, 8), 0x8000_0000);
  assert.equal(physToFileOffset(l3, 0x1_3fff_f000n, 4096), 0xbfff_f000);
  for (const [pa, len] of [
    [0x8000_0000n, 1], // the hole
    [0x7fff_fff0n, 32], // runs from low RAM into the hole
    [0xffff_fff8n, 16], // runs from the hole into high RAM
    [0x1_4000_0000n, 1], // past the end of RAM
    [0x1_3fff_fff8n, 16],
  ] as const) {
    assert.throws(() => physToFileOffset(l3, pa, len), PhysRangeError, `0x${pa.toString(16)}+${len}`);
  }
  const l512 = q35RamLayout(512n * MiB);
  assert.throws(() => physToFileOffset(l512, 512n * MiB, 1), PhysRangeError);
  assert.throws(() => physToFileOffset(l512, 4n * GiB, 1), PhysRangeError, 'no high RAM under 2.75 GiB');
});

test('reads above 4 GiB come from the file right after low RAM', (t) => {
  const ram = syntheticRam(3n * GiB);
  t.after(() => ram.remove());
  // Markers written at raw file offsets, independently of the mapping code.
  const fd = openSync(ram.file, 'r+');
  writeSync(fd, Buffer.from('low-end!'), 0, 8, 0x7fff_fff8);
  writeSync(fd, Buffer.from('high-0!!'), 0, 8, 0x8000_0000);
  writeSync(fd, Buffer.from('last8byt'), 0, 8, 0xbfff_fff8);
  closeSync(fd);
  const mem = GuestMemory.open(ram.file, 3n * GiB);
  t.after(() => mem.close());
  assert.equal(mem.readPhys(0x7fff_fff8n, 8).toString(), 'low-end!');
  assert.equal(mem.readPhys(0x1_0000_0000n, 8).toString(), 'high-0!!');
  assert.equal(mem.readPhys(0x1_3fff_fff8n, 8).toString(), 'last8byt');
  assert.throws(() => mem.readPhys(0x8000_0000n, 8), PhysRangeError);
  assert.throws(() => GuestMemory.open(ram.file, 2n * GiB), /expected/, 'a RAM file of the wrong size is refused');
});

test('4-level walks: 4 KiB, 2 MiB and 1 GiB pages, offsets kept, holes reported', (t) => {
  const ram = syntheticRam(2n * GiB);
  t.after(() => ram.remove());
  const pt = new PageTables(ram.mem, 4, 1n * MiB);
  const va4k = 0xffff_8880_0000_3000n;
  const va2m = 0xffff_ffff_8120_0000n;
  const va1g = 0x0000_7f00_4000_0000n;
  pt.map(va4k, 0x0123_4000n, KiB4);
  pt.map(va2m, 0x0460_0000n, MiB2);
  pt.map(va1g, GiB1, GiB1);
  const m = ram.mem;
  assert.equal(translate(m, pt.root, va4k + 0xabcn), 0x0123_4abcn);
  assert.equal(translate(m, pt.root, va2m + 0x1f_fff8n), 0x047f_fff8n);
  assert.equal(translate(m, pt.root, va1g + 0x3fff_ffffn), 0x7fff_ffffn);
  assert.deepEqual(walk(m, pt.root, va2m + 5n), { pa: 0x0460_0005n, frame: 0x0460_0000n, pageSize: MiB2 });
  assert.deepEqual(walk(m, pt.root, va1g), { pa: GiB1, frame: GiB1, pageSize: GiB1 });

  // The neighbours of each mapping are holes, at different levels.
  assert.throws(() => translate(m, pt.root, va4k + KiB4), (e: unknown) => e instanceof UnmappedError && /level 1/.test(e.reason));
  assert.throws(() => translate(m, pt.root, va2m + MiB2), (e: unknown) => e instanceof UnmappedError && /level 2/.test(e.reason));
  assert.throws(() => translate(m, pt.root, 0x0000_1000_0000_0000n), (e: unknown) => e instanceof UnmappedError && /level 4/.test(e.reason));
  assert.throws(() => translate(m, pt.root, va4k - KiB4), UnmappedError);
  assert.throws(() => translate(m, pt.root, 0n), /unmapped 0x0 /);

  // A present entry pointing to a table outside RAM is unmapped, not a crash.
  pt.writeEntry(pt.entryFor(va4k, 2), 0x9_0000_0000n | 3n);
  assert.throws(() => translate(m, pt.root, va4k), (e: unknown) => e instanceof UnmappedError && /outside RAM/.test(e.reason));
  // PS at level 4 is reserved: a fault.
  pt.writeEntry(pt.entryFor(0x0000_2000_0000_0000n, 4), 0x20_0000n | 0x83n);
  assert.throws(() => translate(m, pt.root, 0x0000_2000_0000_0000n), /reserved page-size bit/);
});

test('canonical addresses: 48 bits under 4-level paging, 57 bits under LA57', () => {
  assert.equal(isCanonical(0x0000_7fff_ffff_ffffn, false), true);
  assert.equal(isCanonical(0xffff_8000_0000_0000n, false), true);
  assert.equal(isCanonical(0x0000_8000_0000_0000n, false), false);
  assert.equal(isCanonical(0xfff7_ffff_ffff_ffffn, false), false);
  assert.equal(isCanonical(0x0000_8000_0000_0000n, true), true);
  assert.equal(isCanonical(0x00ff_ffff_ffff_ffffn, true), true);
  assert.equal(isCanonical(0x0100_0000_0000_0000n, true), false);
  assert.equal(isCanonical(0xff00_0000_0000_0000n, true), true);
  assert.equal(isCanonical(-1n, false), false);
  assert.equal(isCanonical(1n << 64n, false), false);
});

test('5-level walks reach addresses 4-level paging cannot express', (t) => {
  const ram = syntheticRam(2n * GiB);
  t.after(() => ram.remove());
  const pt = new PageTables(ram.mem, 5, 1n * MiB);
  const high = 0x00ab_cdef_1234_5000n; // canonical only with LA57
  const kernel = 0xff11_0000_0000_0000n; // LA57 direct map base
  pt.map(high, 0x0777_7000n, KiB4);
  pt.map(kernel, 0x0800_0000n, MiB2);
  pt.map(kernel + GiB1, GiB1, GiB1);
  assert.equal(translate(ram.mem, pt.root, high + 0x10n, true), 0x0777_7010n);
  assert.equal(translate(ram.mem, pt.root, kernel + 0x1234n, true), 0x0800_1234n);
  assert.equal(translate(ram.mem, pt.root, kernel + GiB1 + 0x1234_5678n, true), GiB1 + 0x1234_5678n);
  assert.throws(() => translate(ram.mem, pt.root, high, false), /non-canonical/, 'the same address is non-canonical with 4 levels');
  // Same indices one level up differ: 4-level interpretation of a 5-level root finds nothing there.
  assert.throws(() => translate(ram.mem, pt.root, kernel + 0x1234n, false), /non-canonical|not present/);
});

test('a self-referencing table ends after one step per level', (t) => {
  const ram = syntheticRam(64n * MiB);
  t.after(() => ram.remove());
  const pt = new PageTables(ram.mem, 4, 1n * MiB);
  // The classic recursive slot: PML4[510] points at the PML4 itself.
  pt.writeEntry(pt.root + 510n * 8n, pt.root | 3n);
  const rec = 0xffff_ff7f_bfdf_e000n; // indices 510,510,510,510
  assert.equal(translate(ram.mem, pt.root, rec + 8n), pt.root + 8n, 'the table reads itself as a page');
  // Self-reference with nothing else present is just a hole at the bottom.
  assert.throws(() => translate(ram.mem, pt.root, 0xffff_ff00_0000_0000n), UnmappedError);
});

test('CR3 masking: PCID, no-flush bit and PTI pairs', (t) => {
  const ram = syntheticRam(64n * MiB);
  t.after(() => ram.remove());
  const pt = new PageTables(ram.mem, 4, 2n * MiB); // 8 KiB aligned, as Linux allocates PGDs with PTI
  const va = 0xffff_8880_0010_0000n;
  pt.map(va, 0x0300_0000n, KiB4);
  const withPcid = pt.root | 0x5n | (1n << 63n);
  assert.equal(cr3Root(withPcid), pt.root);
  assert.equal(translate(ram.mem, withPcid, va), 0x0300_0000n);
  const userHalf = pt.root | 0x1000n | 0x801n; // PTI user PGD with user PCID
  assert.equal(linuxKernelRoot(userHalf), pt.root);
  assert.equal(cr3Root(userHalf), pt.root | 0x1000n);
  const reader = new GuestReader(ram.mem, { kernelCr3: userHalf, la57: false });
  ram.mem.writePhys(0x0300_0000n, Buffer.from('kernel half'));
  assert.equal(reader.readKernel(va, 11).toString(), 'kernel half', 'kernel reads use the 8 KiB-aligned PGD');
});

test('virtual reads cross pages, merge contiguous ones, and name the first missing byte', (t) => {
  const ram = syntheticRam(64n * MiB);
  t.after(() => ram.remove());
  const pt = new PageTables(ram.mem, 4, 1n * MiB);
  const va = 0xffff_c900_0000_0000n;
  // Three pages: physically 0x500000, 0x501000 (contiguous), then 0x400000.
  pt.map(va, 0x50_0000n, KiB4);
  pt.map(va + KiB4, 0x50_1000n, KiB4);
  pt.map(va + 2n * KiB4, 0x40_0000n, KiB4);
  const pattern = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));
  ram.mem.writePhys(0x50_0000n, pattern(8192, 1));
  ram.mem.writePhys(0x40_0000n, pattern(4096, 3));
  const reader = new GuestReader(ram.mem, { kernelCr3: pt.root, la57: false });
  const got = reader.readKernel(va + 4000n, 8192);
  const want = Buffer.concat([pattern(8192, 1).subarray(4000), pattern(4096, 3)]).subarray(0, 8192);
  assert.deepEqual(got, want);
  assert.deepEqual(reader.readVirt(pt.root | 0x3n, va + 4000n, 8192), want, 'readVirt with a PCID in CR3');
  assert.equal(reader.readKernel(va, 0).length, 0);
  assert.throws(() => reader.readKernel(va + 3n * KiB4 - 10n, 20), (e: unknown) => e instanceof UnmappedError && e.va === va + 3n * KiB4);
  pt.map(0xffff_ffff_ffff_f000n, 0x60_0000n, KiB4);
  assert.equal(reader.readKernel(0xffff_ffff_ffff_fff0n, 16).length, 16);
  assert.throws(() => reader.readKernel(0xffff_ffff_ffff_fff0n, 32), /non-canonical/, 'a read wrapping past 2^64 fails cleanly');
  assert.throws(() => reader.readKernel(va, -1), RangeError);
});

test('the translation cache answers like a walk and lives only for its batch', (t) => {
  const ram = syntheticRam(2n * GiB);
  t.after(() => ram.remove());
  const pt = new PageTables(ram.mem, 4, 1n * MiB);
  const va = 0xffff_8880_0000_0000n;
  pt.map(va, 0x20_0000n, MiB2);
  pt.map(va + GiB1, GiB1, GiB1);
  pt.map(va + 2n * MiB2, 0x10_3000n, KiB4);
  const cache = new TranslationCache(ram.mem, pt.root, false);
  for (const v of [va, va + 0x1234n, va + GiB1 + 0x3fff_0000n, va + 2n * MiB2 + 0xfffn, va + 0x1f_ffffn]) {
    assert.deepEqual(cache.walk(v), walk(ram.mem, pt.root, v), `0x${v.toString(16)}`);
    assert.deepEqual(cache.walk(v), walk(ram.mem, pt.root, v), `0x${v.toString(16)} again, from the cache`);
  }
  assert.throws(() => cache.walk(va + 3n * MiB2), UnmappedError);

  const reader = new GuestReader(ram.mem, { kernelCr3: pt.root, la57: false });
  ram.mem.writePhys(0x20_0000n, Buffer.from('before'));
  ram.mem.writePhys(0x60_0000n, Buffer.from('after!'));
  reader.batch(() => {
    assert.equal(reader.readKernel(va, 6).toString(), 'before');
    pt.map(va, 0x60_0000n, MiB2); // the guest remaps mid-batch: the batch keeps its snapshot
    assert.equal(reader.readKernel(va, 6).toString(), 'before');
  });
  assert.equal(reader.readKernel(va, 6).toString(), 'after!', 'the next batch walks again');
});
