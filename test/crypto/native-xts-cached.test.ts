/**
 * sectorJobs.xtsReadCached: the XTS read done on the calling thread from the page cache only. It must compute
 * what XtsCipher computes, refuse (EAGAIN) rather than wait when the bytes are not cached, and XtsBackend must
 * then serve the same bytes through the thread-pool job. Pages are dropped from the cache with GNU dd's
 * `iflag=nocache count=0` (posix_fadvise DONTNEED over the whole file).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeFileSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { sectorJobs } from '../../src/crypto/native.ts';
import { XtsCipher } from '../../src/crypto/xts.ts';
import { S, randomXtsDisk, scratchDir } from './xts-fixtures.ts';


function dropCache(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    fsyncSync(fd); // only clean pages can be dropped
  } finally {
    closeSync(fd);
  }
  const r = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  assert.equal(r.status, 0, `dd: ${r.stderr}`);
}


test('xtsReadCached equals XtsCipher for 4096- and 512-byte sectors, and refuses to wait for the disk', (t) => {
  const dir = scratchDir(t, 'xts-cached');
  const key = randomBytes(64);
  const js = new XtsCipher(key);
  for (const ess of [4096, 512]) {
    const file = join(dir, `img-${ess}`);
    const offset = 3 * S;
    const plain = randomBytes(9 * S);
    const first = 0x1_0000_0003; // beyond 32 bits: the tweak must not wrap
    writeFileSync(file, Buffer.concat([Buffer.alloc(offset), js.encryptSectors(BigInt(first * (S / ess)), ess, plain)]));
    const fd = openSync(file, 'r');
    try {
      const got = Buffer.alloc(plain.length);
      assert.equal(sectorJobs.xtsReadCached(key, ess, fd, offset, first, got), 0);
      assert.ok(got.equals(plain), `ess ${ess}`);
      // A slice in the middle: tweaks follow firstSector.
      const part = Buffer.alloc(2 * S);
      assert.equal(sectorJobs.xtsReadCached(key, ess, fd, offset + 4 * S, first + 4, part), 0);
      assert.ok(part.equals(plain.subarray(4 * S, 6 * S)));
      // The kernel may keep a page it is still handling (LRU batches): drop again until it has gone.
      let status = 0;
      for (let tries = 0; tries < 50 && status === 0; tries++) {
        dropCache(file);
        status = sectorJobs.xtsReadCached(key, ess, fd, offset, first, Buffer.alloc(S));
      }
      assert.equal(status, constants.errno.EAGAIN);
      // Past the end: not 0, so the caller falls back to the job, which reports it.
      assert.notEqual(sectorJobs.xtsReadCached(key, ess, fd, offset + 8 * S, first + 8, Buffer.alloc(2 * S)), 0);
    } finally {
      closeSync(fd);
    }
  }
});

test('xtsReadCached rejects bad arguments before reading', (t) => {
  const dir = scratchDir(t, 'xts-cached');
  const file = join(dir, 'img');
  writeFileSync(file, Buffer.alloc(4 * S));
  const fd = openSync(file, 'r');
  t.after(() => closeSync(fd));
  const key = randomBytes(64);
  const buf = Buffer.alloc(S);
  assert.throws(() => sectorJobs.xtsReadCached(key, 4096, fd, 0.5, 0, buf), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(key, 4096, fd, 0, 1.5, buf), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(key, 4096, fd, -S, 0, buf), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(key, 4096, fd, 0, 0, Buffer.alloc(S + 512)), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(key, 4096, fd, 0, 0, Buffer.alloc(0)), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(key, 1024 * 8, fd, 0, 0, buf), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(Buffer.concat([key.subarray(0, 32), key.subarray(0, 32)]), 4096, fd, 0, 0, buf), RangeError);
  assert.throws(() => sectorJobs.xtsReadCached(key.subarray(0, 32), 4096, fd, 0, 0, buf), RangeError);
});

test('XtsBackend serves the same bytes whether they are in the page cache or not', async (t) => {
  const dir = scratchDir(t, 'xts-cached');
  const sectors = 64;
  const { file, plain, be } = await randomXtsDisk(dir, sectors);
  t.after(() => be.close());
  for (const cached of [false, true]) {
    for (const [from, count] of [[0, 1], [5, 1], [7, 16], [0, sectors]] as const) {
      if (!cached) dropCache(file);
      const got = Buffer.alloc(count * S);
      await be.read(from * S, got.length, got);
      assert.ok(got.equals(plain.subarray(from * S, (from + count) * S)), `${cached ? 'cached' : 'uncached'} read of ${count} at ${from}`);
    }
  }
});
