import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createBLAKE3 } from 'hash-wasm';
import { IntegrityTree, TreeHasher, integrityImageId, treeLevelEntries } from '../../src/crypto/integrity-tree.ts';
import { b3sumKeyed, u32le, u64le } from './b3sum-oracle.ts';

const KEY = randomBytes(32);

// The oracle for whole trees: the doc's definitions written out plainly with hash-wasm's BLAKE3 (an independent
// WebAssembly implementation), one call per hash. The definitions themselves are checked against b3sum below.
const wasm = await createBLAKE3(256, KEY);
const b3 = (...parts: Buffer[]): Buffer => {
  wasm.init();
  for (const p of parts) wasm.update(p);
  return Buffer.from(wasm.digest('binary'));
};
const refNode = (level: number, index: number, children: Buffer[]): Buffer => b3(Buffer.from('node'), u32le(level), u64le(index), ...children);
/** Root over leaf hashes, level by level, as docs/sealed-disk.md defines it. */
function refRoot(leaves: Buffer[]): Buffer {
  let level = leaves;
  let k = 0;
  do {
    k++;
    const next: Buffer[] = [];
    for (let j = 0; j * 128 < level.length; j++) next.push(refNode(k, j, level.slice(j * 128, j * 128 + 128)));
    level = next;
  } while (level.length > 1);
  return b3(Buffer.from('root'), u64le(leaves.length), level[0]!);
}

function flip(b: Buffer, at: number, mask: number): void {
  b[at] = b[at]! ^ mask;
}

function leafBuffer(leaves: Buffer[]): Buffer {
  return Buffer.concat(leaves);
}

test('leaf, node and root hashes match keyed BLAKE3 (b3sum) as the doc defines them, 64-bit indexes included', () => {
  const h = new TreeHasher(KEY);
  const ct = randomBytes(3 * 4096);
  const out = Buffer.alloc(3 * 32 + 5);
  const far = 2 ** 40 + 7; // beyond 32 bits: both halves of the u64 matter
  h.leaves(far, ct, out, 5);
  const children = [randomBytes(32), randomBytes(32), randomBytes(32)];
  const node = Buffer.alloc(32 + 3);
  h.node(3, 2 ** 33 + 1, Buffer.concat(children), node, 3);
  const top = randomBytes(32);
  const fullNode = Array.from({ length: 128 }, () => randomBytes(32));
  const node2 = Buffer.alloc(32);
  h.node(1, 0, Buffer.concat(fullNode), node2, 0);

  const want = b3sumKeyed(KEY, [
    ...[0, 1, 2].map((i) => Buffer.concat([ct.subarray(i * 4096, (i + 1) * 4096), Buffer.from('leaf'), u64le(far + i)])),
    Buffer.concat([Buffer.from('node'), u32le(3), u64le(2 ** 33 + 1), ...children]),
    Buffer.concat([Buffer.from('root'), u64le(65536), top]),
    Buffer.concat([Buffer.from('node'), u32le(1), u64le(0), ...fullNode]),
  ]);
  assert.deepEqual(out.subarray(5), Buffer.concat(want.slice(0, 3)));
  assert.deepEqual(node.subarray(3), want[3]);
  assert.deepEqual(h.root(65536, top), want[4]);
  assert.deepEqual(node2, want[5]);
  // The whole-tree oracle below agrees with b3sum.
  assert.deepEqual(refNode(3, 2 ** 33 + 1, children), want[3]);

  assert.throws(() => h.leaves(0, Buffer.alloc(100), out), RangeError);
  assert.throws(() => h.leaves(0, Buffer.alloc(8192), Buffer.alloc(32)), RangeError);
  assert.throws(() => h.node(1, 0, Buffer.alloc(0), node, 0), RangeError);
  assert.throws(() => h.node(1, 0, Buffer.alloc(4096 + 32), node, 0), RangeError);
  assert.throws(() => new TreeHasher(Buffer.alloc(8)), RangeError);
  assert.throws(() => new TreeHasher(Buffer.alloc(64)), /32 bytes/);
});

test('a leaf binds its position: the same ciphertext hashes differently at another sector', () => {
  const h = new TreeHasher(KEY);
  const ct = randomBytes(4096);
  const a = Buffer.alloc(32);
  const b = Buffer.alloc(32);
  h.leaves(5, ct, a);
  h.leaves(6, ct, b);
  assert.notDeepEqual(a, b);
});

test('whole trees match the reference for every shape: one node, full node, ragged levels, four levels', () => {
  const h = new TreeHasher(KEY);
  for (const n of [1, 2, 127, 128, 129, 300, 16384, 16385]) {
    const leaves = Array.from({ length: n }, () => randomBytes(32));
    const t = IntegrityTree.fromLeaves(h, n, leafBuffer(leaves));
    assert.deepEqual(t.entries, treeLevelEntries(n));
    assert.deepEqual(t.root(h), refRoot(leaves), `n=${n}`);
    // Padding after the last entry of each level stays zero (it is written to the sidecar as is).
    t.levels.forEach((l, k) => assert.ok(l.subarray(t.entries[k]! * 32).every((x) => x === 0), `n=${n} level ${k}`));
  }
});

test('setLeaves recomputes exactly the changed paths and reports exactly the changed nodes', () => {
  const h = new TreeHasher(KEY);
  const n = 16385 + 300;
  const leaves = Array.from({ length: n }, () => randomBytes(32));
  const t = IntegrityTree.fromLeaves(h, n, leafBuffer(leaves));
  const before = t.levels.map((l) => Buffer.from(l));
  const sectors = [0, 1, 127, 128, 9000, 16384, n - 1];
  const fresh = sectors.map(() => randomBytes(32));
  const changed = t.setLeaves(h, sectors, Buffer.concat(fresh));
  sectors.forEach((s, i) => (leaves[s] = fresh[i]!));
  assert.deepEqual(t.root(h), refRoot(leaves));
  // Every node (4096-byte block) whose bytes differ is reported, and nothing else.
  t.levels.forEach((l, k) => {
    const differing: number[] = [];
    for (let j = 0; j * 4096 < l.length; j++) if (!l.subarray(j * 4096, (j + 1) * 4096).equals(before[k]!.subarray(j * 4096, (j + 1) * 4096))) differing.push(j);
    assert.deepEqual(changed[k], differing, `level ${k}`);
  });
  assert.deepEqual(changed[0], [0, 1, 70, 128, 130]);

  assert.throws(() => t.setLeaves(h, [5, 5], Buffer.alloc(64)), RangeError);
  assert.throws(() => t.setLeaves(h, [6, 5], Buffer.alloc(64)), RangeError);
  assert.throws(() => t.setLeaves(h, [n], Buffer.alloc(32)), RangeError);
  assert.throws(() => t.setLeaves(h, [1], Buffer.alloc(31)), RangeError);
});

test('verify: an intact tree passes; a bad node condemns only its subtree; a bad top condemns all', () => {
  const h = new TreeHasher(KEY);
  const n = 16385 + 300; // levels: 16685, 131, 2, 1
  const leaves = leafBuffer(Array.from({ length: n }, () => randomBytes(32)));
  const fresh = (): IntegrityTree => {
    const t = IntegrityTree.fromLeaves(h, n, leaves);
    return new IntegrityTree(n, t.levels.map((l) => Buffer.from(l)));
  };
  const root = fresh().root(h);
  assert.deepEqual(fresh().verify(h, root), []);

  // A flipped leaf in leaf node 3: sectors 384..511 only.
  let t = fresh();
  flip(t.levels[0]!, 3 * 4096 + 77, 1);
  assert.deepEqual(t.verify(h, root), [{ level: 1, index: 3, firstSector: 384, sectors: 128 }]);

  // The ragged last leaf node (sectors 16640..16684) and a level-1 node covering 16384 sectors.
  t = fresh();
  flip(t.levels[0]!, 130 * 4096, 0x80);
  flip(t.levels[1]!, 10, 1); // in level-1 node 0: condemns sectors 0..16383 and hides the damage below it
  flip(t.levels[0]!, 5, 1);
  assert.deepEqual(t.verify(h, root), [
    { level: 2, index: 0, firstSector: 0, sectors: 16384 },
    { level: 1, index: 130, firstSector: 16640, sectors: 45 },
  ]);

  // A moved leaf node (two leaf nodes swapped) fails at both places.
  t = fresh();
  const a = Buffer.from(t.levels[0]!.subarray(0, 4096));
  t.levels[0]!.copy(t.levels[0]!, 0, 4096, 8192);
  a.copy(t.levels[0]!, 4096);
  assert.deepEqual(t.verify(h, root).map((b) => b.index), [0, 1]);

  // The stored top is redundant: a wrong one is replaced, nothing is condemned.
  t = fresh();
  flip(t.levels[3]!, 0, 1);
  assert.deepEqual(t.verify(h, root), []);
  assert.deepEqual(t.root(h), root);

  // The node under the top, a wrong root, or another key: nothing can be trusted.
  const whole = [{ level: 3, index: 0, firstSector: 0, sectors: n }];
  t = fresh();
  flip(t.levels[2]!, 40, 1);
  assert.deepEqual(t.verify(h, root), whole);
  assert.deepEqual(fresh().verify(h, randomBytes(32)), whole);
  assert.deepEqual(fresh().verify(new TreeHasher(randomBytes(32)), root), whole);
});

test('the image id is the first 16 bytes of SHA-256("vmseal/v1/image-id" ‖ K), hex', () => {
  const id = integrityImageId(KEY);
  assert.equal(id, createHash('sha256').update('vmseal/v1/image-id').update(KEY).digest().subarray(0, 16).toString('hex'));
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.notEqual(integrityImageId(randomBytes(32)), id);
});
