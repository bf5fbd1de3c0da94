/**
 * The IDS read ops (phys / kv / uv / list) executed against synthetic RAM, with READ_LIMITS enforced
 * per op and per batch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { READ_LIMITS, type ReadOp, type ReadResult } from '../../src/formats/protocol/ids-read.ts';
import { GuestReader } from '../../src/monitor/introspect/guest-reader.ts';
import { DirectMemorySource, executeReads, ReadBatchLimitError } from '../../src/monitor/introspect/read-executor.ts';
import { KiB4, MiB2, PageTables, syntheticRam } from './introspect-synthetic.ts';

const K = 0xffff_8880_0040_0000n; // kernel VA of a 2 MiB page at physical 0x400000
const KPA = 0x40_0000n;
const U = 0x0000_5555_0000_0000n; // a user page in a second address space
const LINK = 0x40;
const ENTRY = 0x100;

function setup() {
  const ram = syntheticRam(64n * 1024n * 1024n);
  const kpt = new PageTables(ram.mem, 4, 0x10_0000n);
  kpt.map(K, KPA, MiB2);
  const upt = new PageTables(ram.mem, 4, 0x20_0000n);
  upt.map(U, 0x80_0000n, KiB4);
  ram.mem.writePhys(0x80_0000n, Buffer.from('user bytes'));
  const put = (va: bigint, data: Buffer) => ram.mem.writePhys(KPA + (va - K), data);
  const u64 = (v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    return b;
  };
  // A ring: head at K, entries at K+0x1000·i with their list_head at LINK and a name at 0.
  const head = K;
  const entries = [1n, 2n, 3n].map((i) => K + i * 0x1000n);
  const ring = [head, ...entries.map((e) => e + BigInt(LINK))];
  ring.forEach((node, i) => put(node, u64(ring[(i + 1) % ring.length]!)));
  entries.forEach((e, i) => put(e, Buffer.from(`task-${i}\0`)));
  const reader = new GuestReader(ram.mem, { kernelCr3: kpt.root, la57: false });
  return { ram, kpt, upt, reader, head, entries, put, u64 };
}

const ok = (r: ReadResult | undefined): Buffer => {
  assert.ok(r?.ok, `expected ok, got ${JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v))}`);
  return r.data;
};

test('phys, kv and uv ops read what is there; holes give per-op errors', (t) => {
  const { ram, upt, reader, entries } = setup();
  t.after(() => ram.remove());
  const res = executeReads(reader, [
    { kind: 'phys', addr: KPA + 0x1000n, len: 6 },
    { kind: 'kv', addr: entries[1]!, len: 6 },
    { kind: 'uv', cr3: upt.root | 0x7n, addr: U, len: 10 },
    { kind: 'kv', addr: K + MiB2, len: 4 },
    { kind: 'phys', addr: 0x8000_0000n, len: 4 },
    { kind: 'kv', addr: 0x0000_8000_0000_0000n, len: 1 },
    { kind: 'uv', cr3: upt.root, addr: U + KiB4 - 4n, len: 8 },
  ]);
  assert.equal(ok(res[0]).toString(), 'task-0');
  assert.equal(ok(res[1]).toString(), 'task-1');
  assert.equal(ok(res[2]).toString(), 'user bytes');
  assert.deepEqual(res[3], { ok: false, error: `unmapped 0x${(K + MiB2).toString(16)} (not present at level 2)` });
  assert.deepEqual(res[4], { ok: false, error: 'unmapped 0x80000000 (no guest RAM)' });
  assert.match((res[5] as { error: string }).error, /^unmapped 0x800000000000 \(non-canonical/);
  assert.match((res[6] as { error: string }).error, new RegExp(`^unmapped 0x${(U + KiB4).toString(16)} `));
});

test('list follows a list_head ring to its head, snapshotting each entry', (t) => {
  const { ram, reader, head, entries } = setup();
  t.after(() => ram.remove());
  const [r] = executeReads(reader, [{ kind: 'list', head, linkOffset: LINK, len: ENTRY, max: 100 }]);
  assert.ok(r?.ok);
  assert.deepEqual(r.bases, entries);
  assert.equal(r.data.length, 3 * ENTRY);
  for (let i = 0; i < 3; i++) assert.equal(r.data.subarray(i * ENTRY, i * ENTRY + 6).toString(), `task-${i}`);

  const [capped] = executeReads(reader, [{ kind: 'list', head, linkOffset: LINK, len: 8, max: 2 }]);
  assert.ok(capped?.ok);
  assert.deepEqual(capped.bases, entries.slice(0, 2));
  // The link lies outside the snapshot (len < linkOffset + 8): it is read on its own.
  const [short] = executeReads(reader, [{ kind: 'list', head, linkOffset: LINK, len: 4, max: 100 }]);
  assert.ok(short?.ok);
  assert.deepEqual(short.bases, entries);
  assert.equal(short.data.toString(), 'tasktasktask');
});

test('list stops at a broken link, survives a ring that never returns, and fails on an unreadable head', (t) => {
  const { ram, reader, head, entries, put, u64 } = setup();
  t.after(() => ram.remove());
  put(entries[1]! + BigInt(LINK), u64(0xdead_0000_0000_0000n));
  const [broken] = executeReads(reader, [{ kind: 'list', head, linkOffset: LINK, len: ENTRY, max: 100 }]);
  assert.ok(broken?.ok);
  assert.deepEqual(broken.bases, entries.slice(0, 2), 'entries up to the bad link');

  put(entries[1]! + BigInt(LINK), u64(entries[0]! + BigInt(LINK))); // a loop that skips the head
  const [loop] = executeReads(reader, [{ kind: 'list', head, linkOffset: LINK, len: ENTRY, max: 1000 }]);
  assert.ok(loop?.ok);
  assert.equal(loop.bases?.length, 1000, 'bounded by max');

  const [noHead] = executeReads(reader, [{ kind: 'list', head: K + MiB2, linkOffset: LINK, len: ENTRY, max: 10 }]);
  assert.equal(noHead?.ok, false);
});

test('READ_LIMITS: ops over the per-op limits fail alone, batches over the batch limits are refused whole', async (t) => {
  const { ram, reader, head } = setup();
  t.after(() => ram.remove());
  const res = executeReads(reader, [
    { kind: 'phys', addr: KPA, len: READ_LIMITS.maxOpBytes + 1 },
    { kind: 'kv', addr: -1n, len: 1 },
    { kind: 'phys', addr: KPA, len: 1.5 },
    { kind: 'list', head, linkOffset: LINK, len: 8, max: READ_LIMITS.maxListEntries + 1 },
    { kind: 'list', head, linkOffset: -8, len: 8, max: 1 },
    { kind: 'nope', addr: 0n, len: 1 } as unknown as ReadOp,
    { kind: 'phys', addr: KPA, len: 1 },
  ]);
  assert.deepEqual(
    res.map((r) => r.ok),
    [false, false, false, false, false, false, true],
  );
  assert.match((res[0] as { error: string }).error, /len/);

  const many: ReadOp[] = Array.from({ length: READ_LIMITS.maxOps + 1 }, () => ({ kind: 'phys', addr: KPA, len: 1 }));
  assert.throws(() => executeReads(reader, many), ReadBatchLimitError);
  const big: ReadOp[] = Array.from({ length: 33 }, () => ({ kind: 'phys', addr: KPA, len: READ_LIMITS.maxOpBytes }));
  assert.throws(() => executeReads(reader, big), ReadBatchLimitError);
  const wideList: ReadOp[] = [{ kind: 'list', head, linkOffset: LINK, len: 4096, max: 8193 }];
  assert.throws(() => executeReads(reader, wideList), ReadBatchLimitError, 'a list counts len × max');

  const source = new DirectMemorySource(reader);
  await assert.rejects(source.read(many), ReadBatchLimitError);
  const [one] = await source.read([{ kind: 'phys', addr: KPA + 0x1000n, len: 6 }]);
  assert.equal(ok(one).toString(), 'task-0');
});

test('gather walks the ring once and returns only the asked ranges, with followed pointers and their status', (t) => {
  const { ram, reader, head, entries, put, u64 } = setup();
  t.after(() => ram.remove());
  // Entry i: a name at 0, a counter at 0x80, a pointer at 0x90 — to an object (0), NULL (1) or unmapped memory (2).
  const targets = [K + 0x10_0000n, 0n, K + MiB2 + 0x40n];
  put(targets[0]!, Buffer.from('cred'));
  entries.forEach((e, i) => {
    put(e + 0x80n, Buffer.of(0xa0 + i, 0, 0, 0));
    put(e + 0x90n, u64(targets[i]!));
  });
  const op: ReadOp = { kind: 'gather', head, linkOffset: LINK, max: 100, ranges: [{ off: 0, len: 6 }, { off: 0x80, len: 4 }], follow: [{ ptrOffset: 0x90, ranges: [{ off: 0, len: 4 }] }] };
  const [r] = executeReads(reader, [op]);
  const data = ok(r);
  const RECORD = 6 + 4 + 1 + 4;
  assert.equal(data.length, 3 * RECORD);
  assert.deepEqual(r?.ok && r.bases, entries);
  const rec = (i: number) => data.subarray(i * RECORD, (i + 1) * RECORD);
  assert.equal(rec(1).subarray(0, 6).toString(), 'task-1');
  assert.equal(rec(2)[6], 0xa2);
  assert.deepEqual([rec(0)[10], rec(1)[10], rec(2)[10]], [1, 0, 2]);
  assert.equal(rec(0).subarray(11).toString(), 'cred');
  assert.deepEqual(rec(2).subarray(11), Buffer.alloc(4));
  // Limits: too many ranges, a range past maxOpBytes, a record over maxOpBytes, too many follows.
  const many = Array.from({ length: READ_LIMITS.maxGatherRanges + 1 }, () => ({ off: 0, len: 1 }));
  const bad: ReadOp[] = [
    { ...op, ranges: many },
    { ...op, ranges: [{ off: READ_LIMITS.maxOpBytes, len: 1 }] },
    { ...op, ranges: [{ off: 0, len: READ_LIMITS.maxOpBytes }], follow: [{ ptrOffset: 0x90, ranges: [{ off: 0, len: 1 }] }] },
    { ...op, follow: Array.from({ length: READ_LIMITS.maxGatherFollows + 1 }, () => ({ ptrOffset: 0x90, ranges: [] })) },
  ];
  for (const res of executeReads(reader, bad)) assert.equal(res.ok, false);
  // The batch limit counts records times max.
  assert.throws(() => executeReads(reader, [{ ...op, ranges: [{ off: 0, len: 4096 }], max: READ_LIMITS.maxListEntries }]), ReadBatchLimitError);
});
