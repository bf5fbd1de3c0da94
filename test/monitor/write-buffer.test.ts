import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WriteBuffer } from '../../src/monitor/disk/write-buffer.ts';

const SECTOR = 4096;
const LEAF = 32;

/** Sectors first.. with every byte of sector s (ciphertext) and of its leaf set to tag+s. */
function sectors(first: number, count: number, tag: number): { ct: Buffer; leaves: Buffer } {
  const ct = Buffer.alloc(count * SECTOR);
  const leaves = Buffer.alloc(count * LEAF);
  for (let i = 0; i < count; i++) {
    ct.fill((tag + first + i) & 0xff, i * SECTOR, (i + 1) * SECTOR);
    leaves.fill((tag + first + i) & 0xff, i * LEAF, (i + 1) * LEAF);
  }
  return { ct, leaves };
}

function contentOf(b: WriteBuffer, s: number): number {
  const ct = Buffer.alloc(SECTOR);
  const leaf = Buffer.alloc(LEAF);
  assert.ok(b.copyOut(s, ct, 0, leaf, 0), `sector ${s} is buffered`);
  assert.ok(ct.every((x) => x === ct[0]) && leaf.every((x) => x === ct[0]), `sector ${s}: ciphertext and leaf agree`);
  return ct[0]!;
}

test('putRun rewrites buffered sectors in place, fills new slots, and stops when full', () => {
  const b = new WriteBuffer(8);
  const a = sectors(10, 3, 0);
  assert.equal(b.putRun(10, a.ct, a.leaves), 3); // slots 0..2
  const c = sectors(8, 6, 100); // 8,9 new (slots 3,4), 10..12 rewritten (slots 0..2), 13 new (slot 5)
  assert.equal(b.putRun(8, c.ct, c.leaves), 6);
  assert.equal(b.size, 6);
  for (const s of [8, 9, 10, 11, 12, 13]) assert.equal(contentOf(b, s), (100 + s) & 0xff);
  const d = sectors(20, 3, 50); // two slots left
  assert.equal(b.putRun(20, d.ct, d.leaves), 2);
  assert.equal(contentOf(b, 21), 71);
  assert.equal(b.has(22), false);
  // Full, but rewriting a buffered sector still fits.
  const e = sectors(13, 1, 7);
  assert.equal(b.putRun(13, e.ct, e.leaves), 1);
  assert.equal(contentOf(b, 13), 20);
});

test('runs and leavesOf follow sector order across slots that are not in sector order', () => {
  const b = new WriteBuffer(16);
  for (const [first, count] of [[5, 2], [1, 3], [7, 1], [20, 2]] as const) {
    const x = sectors(first, count, 0);
    b.putRun(first, x.ct, x.leaves);
  }
  const list = b.sectors();
  assert.deepEqual(list, [1, 2, 3, 5, 6, 7, 20, 21]);
  const leaves = b.leavesOf(list);
  list.forEach((s, i) => assert.ok(leaves.subarray(i * LEAF, (i + 1) * LEAF).every((x) => x === s)));
  const runs = b.runs(list);
  assert.deepEqual(runs.map((r) => [r.firstSector, r.sectors]), [[1, 3], [5, 3], [20, 2]]);
  for (const r of runs) {
    const bytes = Buffer.concat(r.buffers);
    assert.equal(bytes.length, r.sectors * SECTOR);
    for (let i = 0; i < r.sectors; i++) assert.equal(bytes[i * SECTOR], r.firstSector + i);
  }
  // 5,6 sit in slots 0,1 and 7 in slot 5: one run, two buffers.
  assert.equal(runs[1]!.buffers.length, 2);
});

test('reserved slots hold nothing until published; a sector rewritten meanwhile takes the newer contents; drained waits', async () => {
  const b = new WriteBuffer(8);
  const slot = b.reserve(3);
  assert.equal(slot, 0);
  assert.equal(b.used, 3);
  assert.equal(b.size, 0);
  assert.equal(b.reserve(6), -1); // 3 + 6 > 8
  const x = sectors(40, 3, 0);
  x.ct.copy(b.ciphertextAt(slot, 3));
  x.leaves.copy(b.leavesAt(slot, 3));
  assert.equal(b.has(40), false);
  let drained = false;
  const wait = b.drained().then(() => (drained = true));
  // Sector 41 completed by another write while the reservation was sealing: the publish overwrites its slot.
  const y = sectors(41, 1, 9);
  assert.equal(b.putRun(41, y.ct, y.leaves), 1); // slot 3
  await Promise.resolve();
  assert.equal(drained, false);
  assert.throws(() => b.clear(), /reservations outstanding/);
  b.publish(40, slot, 3);
  await wait;
  assert.equal(drained, true);
  assert.deepEqual(b.sectors(), [40, 41, 42]);
  for (const s of [40, 41, 42]) assert.equal(contentOf(b, s), s);
  assert.deepEqual(b.runs(b.sectors()).map((r) => r.buffers.length), [3]); // 40 | 41 in slot 3 | 42
  // A failed write's slots stay taken until the buffer is cleared.
  const z = b.reserve(4);
  b.abandon();
  assert.equal(z, 4);
  assert.equal(b.used, 8);
  assert.equal(b.putRun(50, y.ct, y.leaves), 0);
  b.clear();
  assert.equal(b.used, 0);
  assert.equal(b.reserve(8), 0);
});
