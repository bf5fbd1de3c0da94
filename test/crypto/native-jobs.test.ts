/**
 * The addon's whole-request jobs (sectorJobs: thread-pool pread/pwrite + XTS, open, seal) against the
 * TypeScript reference (XtsCipher, TreeHasher) and against the file's bytes.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { TreeHasher } from '../../src/crypto/integrity-tree.ts';
import { sectorJobs } from '../../src/crypto/native.ts';
import { XtsCipher } from '../../src/crypto/xts.ts';

const S = 4096;

test('xtsRead/xtsWrite equal XtsCipher over the file, for 4096- and 512-byte encryption sectors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-native-jobs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const key = randomBytes(64);
  const js = new XtsCipher(key);
  for (const ess of [4096, 512]) {
    const file = join(dir, `img-${ess}`);
    const offset = 3 * S;
    const plain = randomBytes(9 * S);
    const first = 0x1_0000_0003; // beyond 32 bits: the tweak must not wrap
    const unit = S / ess;
    writeFileSync(file, Buffer.concat([Buffer.alloc(offset), js.encryptSectors(BigInt(first * unit), ess, plain)]));
    const fd = openSync(file, 'r+');
    try {
      const got = Buffer.alloc(plain.length);
      await sectorJobs.xtsRead(key, ess, fd, offset, first, got);
      assert.ok(got.equals(plain), `read, ess ${ess}`);
      const fresh = randomBytes(2 * S);
      const scratch = Buffer.alloc(fresh.length);
      await sectorJobs.xtsWrite(key, ess, fd, offset + 4 * S, first + 4, fresh, scratch);
      const bytes = readFileSync(file);
      assert.ok(bytes.subarray(offset + 4 * S, offset + 6 * S).equals(js.encryptSectors(BigInt((first + 4) * unit), ess, fresh)), `write, ess ${ess}`);
      // Reading past the end is an EIO error, never stale bytes.
      await assert.rejects(sectorJobs.xtsRead(key, ess, fd, bytes.length - S, 0, Buffer.alloc(2 * S)), { code: 'EIO' });
    } finally {
      closeSync(fd);
    }
  }
});

test('seal equals XtsCipher + TreeHasher; open verifies every sector and decrypts only if all match', async () => {
  const key = randomBytes(64);
  const ik = randomBytes(32);
  const js = new XtsCipher(key);
  const hasher = new TreeHasher(ik);
  const first = 77;
  const plain = randomBytes(6 * S);
  const ct = Buffer.alloc(plain.length);
  const leaves = Buffer.alloc(6 * 32);
  await sectorJobs.seal(key, ik, 4096, first, plain, ct, leaves);
  assert.ok(ct.equals(js.encryptSectors(BigInt(first), 4096, plain)));
  const want = Buffer.alloc(6 * 32);
  hasher.leaves(first, ct, want);
  assert.ok(leaves.equals(want));

  const flags = Buffer.alloc(6, 9);
  const data = Buffer.from(ct);
  assert.equal(await sectorJobs.open(key, ik, 4096, first, data, leaves, flags), 0);
  assert.ok(data.equals(plain));
  assert.deepEqual([...flags], [0, 0, 0, 0, 0, 0]);

  const tampered = Buffer.from(ct);
  tampered[2 * S + 100]! ^= 1;
  tampered[5 * S]! ^= 1;
  assert.equal(await sectorJobs.open(key, ik, 4096, first, tampered, leaves, flags), 2);
  assert.deepEqual([...flags], [0, 0, 1, 0, 0, 1]);
  // Nothing was decrypted: the buffer still holds the (tampered) ciphertext.
  assert.ok(tampered.subarray(0, 2 * S).equals(ct.subarray(0, 2 * S)));
  // Mismatches are flagged in every SIMD batch of 16 sectors, not only the first.
  const many = randomBytes(40 * S);
  const manyCt = Buffer.alloc(many.length);
  const manyLeaves = Buffer.alloc(40 * 32);
  await sectorJobs.seal(key, ik, 4096, first, many, manyCt, manyLeaves);
  manyCt[17 * S + 5]! ^= 1;
  manyCt[39 * S + 4095]! ^= 0x80;
  const manyFlags = Buffer.alloc(40, 9);
  assert.equal(await sectorJobs.open(key, ik, 4096, first, manyCt, manyLeaves, manyFlags), 2);
  assert.deepEqual([...manyFlags.keys()].filter((i) => manyFlags[i] !== 0), [17, 39]);
  // A sector moved to another place fails: the index is in the leaf.
  const moved = Buffer.from(ct.subarray(0, S));
  assert.equal(await sectorJobs.open(key, ik, 4096, first + 1, moved, leaves.subarray(32), flags), 1);
});

test('bad arguments are refused before any work: lengths, key halves, overlapping buffers', async () => {
  const key = randomBytes(64);
  const ik = randomBytes(32);
  const d = Buffer.alloc(2 * S);
  await assert.rejects(async () => sectorJobs.seal(key, ik, 4096, 0, Buffer.alloc(100), Buffer.alloc(100), Buffer.alloc(32)), RangeError);
  await assert.rejects(async () => sectorJobs.seal(Buffer.alloc(64), ik, 4096, 0, d, Buffer.alloc(d.length), Buffer.alloc(64)), RangeError);
  await assert.rejects(async () => sectorJobs.seal(key, ik, 4096, 0, d, d.subarray(S), Buffer.alloc(64)), RangeError);
  await assert.rejects(async () => sectorJobs.seal(key, ik, 4096, 0, d, Buffer.alloc(d.length), Buffer.alloc(32)), RangeError);
  await assert.rejects(async () => sectorJobs.open(key, Buffer.alloc(4), 4096, 0, d, Buffer.alloc(64), Buffer.alloc(2)), RangeError);
  await assert.rejects(async () => sectorJobs.open(key, ik, 4096, 0, d, Buffer.alloc(32), Buffer.alloc(2)), RangeError);
});
