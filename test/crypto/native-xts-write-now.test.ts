/**
 * sectorJobs.xtsWriteNow: the XTS write done on the calling thread. It must write what XtsCipher computes (and the
 * pool job writes), leave the plaintext untouched, report a failed pwrite as the job does, and refuse bad
 * arguments before writing. XtsBackend must serve back what it wrote, whether a write went this way (small) or
 * through the pool job (large), with and without FUA.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { sectorJobs } from '../../src/crypto/native.ts';
import { XtsCipher } from '../../src/crypto/xts.ts';
import { S, randomXtsDisk, scratchDir } from './xts-fixtures.ts';



test('xtsWriteNow writes what XtsCipher and the pool job write, for 4096- and 512-byte sectors', async (t) => {
  const dir = scratchDir(t, 'xts-write-now');
  const key = randomBytes(64);
  const js = new XtsCipher(key);
  for (const ess of [4096, 512]) {
    const now = join(dir, `now-${ess}`);
    const job = join(dir, `job-${ess}`);
    writeFileSync(now, Buffer.alloc(16 * S));
    writeFileSync(job, Buffer.alloc(16 * S));
    const plain = randomBytes(5 * S);
    const copy = Buffer.from(plain);
    const first = 0x1_0000_0007; // beyond 32 bits: the tweak must not wrap
    const at = 3 * S;
    const fdNow = openSync(now, 'r+');
    const fdJob = openSync(job, 'r+');
    try {
      sectorJobs.xtsWriteNow(key, ess, fdNow, at, first, plain, Buffer.alloc(8 * S));
      await sectorJobs.xtsWrite(key, ess, fdJob, at, first, plain, Buffer.alloc(5 * S));
    } finally {
      closeSync(fdNow);
      closeSync(fdJob);
    }
    assert.ok(plain.equals(copy), 'the plaintext is left as it was');
    const written = readFileSync(now);
    assert.ok(written.subarray(at, at + plain.length).equals(js.encryptSectors(BigInt(first * (S / ess)), ess, plain)), `ess ${ess}`);
    assert.ok(written.equals(readFileSync(job)), `ess ${ess}: same file as the pool job's`);
    assert.ok(written.subarray(0, at).equals(Buffer.alloc(at)) && written.subarray(at + plain.length).equals(Buffer.alloc(written.length - at - plain.length)));
  }
});

test('xtsWriteNow reports a failed write with its errno, and rejects bad arguments before writing', (t) => {
  const dir = scratchDir(t, 'xts-write-now');
  const file = join(dir, 'img');
  writeFileSync(file, Buffer.alloc(4 * S));
  const key = randomBytes(64);
  const plain = randomBytes(S);
  const ro = openSync(file, 'r');
  t.after(() => closeSync(ro));
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, ro, 0, 0, plain, Buffer.alloc(S)), (err: NodeJS.ErrnoException) => err.errno === 9 && err.code === 'EIO');
  const fd = openSync(file, 'r+');
  t.after(() => closeSync(fd));
  const scratch = Buffer.alloc(2 * S);
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, fd, 0, 0, plain, plain), RangeError); // in place would change the caller's data
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, fd, 0, 0, scratch.subarray(0, S), scratch.subarray(512, 512 + S)), RangeError);
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, fd, 0, 0, plain, Buffer.alloc(S - 512)), RangeError);
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, fd, 0.5, 0, plain, scratch), RangeError);
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, fd, 0, -1, plain, scratch), RangeError);
  assert.throws(() => sectorJobs.xtsWriteNow(key, 4096, fd, 0, 0, Buffer.alloc(S + 512), scratch), RangeError);
  assert.throws(() => sectorJobs.xtsWriteNow(key, 8192, fd, 0, 0, plain, scratch), RangeError);
  assert.throws(() => sectorJobs.xtsWriteNow(Buffer.concat([key.subarray(0, 32), key.subarray(0, 32)]), 4096, fd, 0, 0, plain, scratch), RangeError);
  assert.ok(readFileSync(file).equals(Buffer.alloc(4 * S)), 'nothing was written');
});

test('XtsBackend reads back small (event-loop) and large (pool) writes, with and without FUA', async (t) => {
  const dir = scratchDir(t, 'xts-write-now');
  const sectors = 128;
  const { file, key, payloadOffset, plain, be } = await randomXtsDisk(dir, sectors);
  const writes: [number, number, boolean][] = [[3, 1, false], [9, 8, true], [20, 64, false], [100, 16, true], [1, 1, true]];
  await Promise.all(
    writes.map(([from, count, fua]) => {
      const data = randomBytes(count * S);
      data.copy(plain, from * S);
      return be.write(from * S, data, fua);
    }),
  );
  const got = Buffer.alloc(sectors * S);
  await be.read(0, got.length, got);
  assert.ok(got.equals(plain));
  await be.close();
  // Closed: what was written is on disk under the key.
  const onDisk = readFileSync(file).subarray(payloadOffset);
  assert.ok(new XtsCipher(key).decryptSectors(0n, 4096, onDisk).equals(plain));
  await assert.rejects(be.write(0, Buffer.alloc(S), false), { code: 'EBADF' });
});
