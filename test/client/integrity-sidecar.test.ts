import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IntegrityTree, TreeHasher } from '../../src/crypto/integrity-tree.ts';
import { deriveVmKey } from '../../src/crypto/keys.ts';
import { decodeSidecarHeader, sidecarGeometry } from '../../src/formats/integrity-sidecar.ts';
import { IntegritySidecarWriter, buildSidecarForImage, sidecarPathFor } from '../../src/client/integrity-sidecar-writer.ts';
import { b3sumKeyed, u32le, u64le } from '../crypto/b3sum-oracle.ts';

async function workDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-sidecar-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The sidecar bytes the doc prescribes, from an in-memory tree over the ciphertext. */
function expectedSidecar(vk: Buffer, ciphertext: Buffer): { bytes: Buffer; root: Buffer } {
  const n = ciphertext.length / 4096;
  const h = new TreeHasher(deriveVmKey(vk, 'integrity'));
  const leaves = Buffer.alloc(n * 32);
  h.leaves(0, ciphertext, leaves);
  const tree = IntegrityTree.fromLeaves(h, n, leaves);
  const g = sidecarGeometry(n);
  const bytes = Buffer.alloc(g.fileSize);
  bytes.write('VMSEAL-INTEGRIT1', 0, 'ascii');
  bytes.writeUInt32LE(2, 16);
  bytes.writeUInt32LE(4096, 20);
  bytes.writeBigUInt64LE(BigInt(n), 24);
  bytes.writeUInt32LE(128, 32);
  g.levels.forEach((l, k) => tree.levels[k]!.copy(bytes, l.offset));
  return { bytes, root: tree.root(h) };
}

test('the streaming writer produces the documented file and root, however the ciphertext is chunked', { timeout: 60_000 }, async (t) => {
  const dir = await workDir(t);
  const vk = randomBytes(64);
  const n = 16385 + 77; // four levels, ragged at every level
  const ciphertext = randomBytes(n * 4096);
  const expected = expectedSidecar(vk, ciphertext);
  for (const chunking of [[n], [1, 127, 1, 200, 64 * 128, n - 1 - 127 - 1 - 200 - 64 * 128], Array.from({ length: 97 }, (_, i) => (i < 96 ? 171 : n - 96 * 171))]) {
    const path = join(dir, `sidecar-${chunking.length}`);
    const w = await IntegritySidecarWriter.create(path, vk, n);
    let at = 0;
    for (const c of chunking) {
      await w.add(at, ciphertext.subarray(at * 4096, (at + c) * 4096));
      at += c;
    }
    assert.deepEqual(await w.finish(), expected.root);
    const bytes = await readFile(path);
    assert.equal(bytes.length, expected.bytes.length);
    assert.ok(bytes.equals(expected.bytes), `chunking into ${chunking.length} pieces`);
    assert.equal(decodeSidecarHeader(bytes), n);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
  }
  assert.deepEqual((await readdir(dir)).filter((f) => f.endsWith('.partial')), []);
});

test('a one-sector sidecar and its root, recomputed hash by hash with b3sum from the key schedule', async (t) => {
  const dir = await workDir(t);
  const vk = randomBytes(64);
  const key = deriveVmKey(vk, 'integrity');
  const ciphertext = randomBytes(4096);
  const path = join(dir, 'one');
  const w = await IntegritySidecarWriter.create(path, vk, 1);
  await w.add(0, ciphertext);
  const root = await w.finish();
  const [leaf] = b3sumKeyed(key, [Buffer.concat([ciphertext, Buffer.from('leaf'), u64le(0)])]);
  const [top] = b3sumKeyed(key, [Buffer.concat([Buffer.from('node'), u32le(1), u64le(0), leaf!])]);
  const [want] = b3sumKeyed(key, [Buffer.concat([Buffer.from('root'), u64le(1), top!])]);
  assert.deepEqual(root, want);
  const bytes = await readFile(path);
  assert.deepEqual(bytes.subarray(4096, 4096 + 32), leaf);
  assert.deepEqual(bytes.subarray(8192, 8192 + 32), top);
});

test('buildSidecarForImage reads the payload after the offset; refuses partial sectors and existing files', { timeout: 60_000 }, async (t) => {
  const dir = await workDir(t);
  const vk = randomBytes(64);
  const header = randomBytes(16 * 4096);
  const ciphertext = randomBytes(1000 * 4096 + 4096 * 1024); // more than one 4 MiB read chunk
  const image = join(dir, 'img');
  await writeFile(image, Buffer.concat([header, ciphertext]));
  const built = await buildSidecarForImage(image, vk, header.length);
  const expected = expectedSidecar(vk, ciphertext);
  assert.equal(built.sidecarPath, sidecarPathFor(image));
  assert.equal(built.sectors, ciphertext.length / 4096);
  assert.deepEqual(built.root, expected.root);
  assert.ok((await readFile(built.sidecarPath)).equals(expected.bytes));

  await assert.rejects(buildSidecarForImage(image, vk, header.length), /already exists/);
  const again = await buildSidecarForImage(image, vk, header.length, { overwrite: true });
  assert.deepEqual(again.root, expected.root);
  // Another key, another tree.
  const other = await buildSidecarForImage(image, randomBytes(64), header.length, { sidecarPath: join(dir, 'other') });
  assert.notDeepEqual(other.root, expected.root);

  await assert.rejects(buildSidecarForImage(image, vk, header.length + 512, { sidecarPath: join(dir, 'x') }), /not whole 4096-byte sectors/);
  await assert.rejects(buildSidecarForImage(image, vk, header.length + ciphertext.length, { sidecarPath: join(dir, 'x') }), /outside the/);
  await assert.rejects(buildSidecarForImage(image, vk, -1, { sidecarPath: join(dir, 'x') }), /outside the/);
  assert.deepEqual((await readdir(dir)).filter((f) => f.startsWith('x') || f.endsWith('.partial')), []);
});

test('the writer refuses sectors out of order, beyond the end, or missing, and leaves nothing behind', async (t) => {
  const dir = await workDir(t);
  const vk = randomBytes(64);
  const path = join(dir, 's');
  const w = await IntegritySidecarWriter.create(path, vk, 10);
  await assert.rejects(w.add(1, Buffer.alloc(4096)), /expected sector 0 next/);
  await assert.rejects(w.add(0, Buffer.alloc(100)), /not whole sectors/);
  await assert.rejects(w.add(0, Buffer.alloc(11 * 4096)), /beyond the 10 announced/);
  await w.add(0, Buffer.alloc(9 * 4096));
  await assert.rejects(w.finish(), /got 9 of 10 sectors/);
  await w.abort();
  assert.deepEqual(await readdir(dir), []);
  await assert.rejects(IntegritySidecarWriter.create(path, vk, 0), /sector count 0/);
  await assert.rejects(IntegritySidecarWriter.create(path, Buffer.alloc(32), 1), /volume key must be 64 bytes/);
  assert.deepEqual(await readdir(dir), []);
});
