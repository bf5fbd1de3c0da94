import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { copyFile, mkdir, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildSidecarForImage } from '../../src/client/integrity-sidecar-writer.ts';
import { sidecarGeometry } from '../../src/formats/integrity-sidecar.ts';
import { CryptoPool } from '../../src/monitor/disk/crypto-pool.ts';
import { NbdServer } from '../../src/monitor/disk/nbd-server.ts';
import { SealedBackend, SealedDiskError, type FlushStep, type SealedBackendOptions, type SealedDiskAlert } from '../../src/monitor/disk/sealed-backend.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import type { ChildArgs } from './sealed-crash-child.ts';
import { MiB, SECTOR, decryptIndependently, makeSealedDisk, pattern, qemuIo, runTool, tempDir, type SealedDisk } from './sealed-fixtures.ts';

type After = { after(fn: () => Promise<void> | void): void };

interface Opened {
  disk: SealedBackend;
  db: MonitorDb;
  alerts: SealedDiskAlert[];
}

/** Opens the disk with its own monitor db (created if needed); closed after the test in any case. */
async function openDisk(t: After, d: SealedDisk, extra: Partial<SealedBackendOptions> = {}): Promise<Opened> {
  const db = MonitorDb.open(d.db);
  const alerts: SealedDiskAlert[] = [];
  let disk: SealedBackend;
  try {
    disk = await SealedBackend.open({
      imagePath: d.image,
      sidecarPath: d.sidecar,
      payloadOffset: d.payloadOffset,
      volumeKey: d.volumeKey,
      bundleRoot: d.root,
      db,
      onAlert: (a) => alerts.push(a),
      ...extra,
    });
  } catch (err) {
    db.close();
    throw err;
  }
  t.after(async () => {
    await disk.close().catch(() => undefined);
    db.close();
  });
  return { disk, db, alerts };
}

async function closeDisk(o: Opened): Promise<void> {
  await o.disk.close();
  o.db.close();
}

async function readSectors(disk: SealedBackend, first: number, count = 1): Promise<Buffer> {
  const buf = Buffer.alloc(count * SECTOR);
  await disk.read(first * SECTOR, count * SECTOR, buf);
  return buf;
}

const sectorOf = (buf: Buffer, s: number): Buffer => buf.subarray(s * SECTOR, (s + 1) * SECTOR);

async function rejectsEio(p: Promise<unknown>, what: string): Promise<void> {
  await assert.rejects(p, (e: NodeJS.ErrnoException) => e.code === 'EIO', what);
}

function tamperAlerts(alerts: SealedDiskAlert[]): { sector: number; sectors: number }[] {
  return alerts.filter((a) => a.kind === 'TAMPER').map((a) => ({ sector: (a as { sector: number }).sector, sectors: (a as { sectors: number }).sectors }));
}

/** Overwrites bytes of the image or sidecar behind the monitor's back, as the storage admin can. */
async function poke(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, position);
  } finally {
    await fh.close();
  }
}

async function peek(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, position);
    return b;
  } finally {
    await fh.close();
  }
}

const ctAt = (d: SealedDisk, s: number): number => d.payloadOffset + s * SECTOR;

/** The sidecar the monitor keeps up to date must be exactly what a rebuild from the image gives, under the db's root. */
async function assertSidecarMatchesImage(d: SealedDisk, dbRoot: Buffer | undefined): Promise<void> {
  const rebuilt = await buildSidecarForImage(d.image, d.volumeKey, d.payloadOffset, { sidecarPath: join(d.dir, 'rebuilt.integrity'), overwrite: true });
  assert.deepEqual(rebuilt.root, dbRoot, 'the committed root vouches for the image as it is');
  assert.ok((await readFile(rebuilt.sidecarPath)).equals(await readFile(d.sidecar)), 'the sidecar holds the whole current tree');
}

test('round trip: qemu-io writes through our export, reads back; cryptsetup decrypts the image to the same data', { timeout: 180_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 8 * MiB);
  const o = await openDisk(t, d);
  const socket = join(dir, 'nbd.sock');
  const server = new NbdServer({ socketPath: socket, exports: new Map([['vda', o.disk]]) });
  await server.listen();
  t.after(() => server.close());

  const info = await runTool('nbdinfo', ['--json', `nbd+unix:///vda?socket=${socket}`]);
  assert.equal(info.code, 0, info.stderr);
  const exp = (JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
  assert.equal(exp['export-size'], 8 * MiB);
  assert.equal(exp['block_size_minimum'], 4096);
  assert.equal(exp['block_size_preferred'], 4096);
  assert.equal(exp['block_size_maximum'], 32 * MiB);
  assert.equal(exp['can_trim'], false);
  assert.equal(exp['can_zero'], true);
  assert.equal(exp['can_fua'], true);

  const model = Buffer.from(d.plain);
  const io = await qemuIo(socket, 'vda', [
    'write -P 0x5a 1M 256k',
    'write -P 0x33 4096 4096',
    'write -P 0x11 6M 2M', // one request larger than the NBD server's coalesced runs
    'write -z 2M 64k',
    'read -P 0x5a 1M 256k',
    'read -P 0x33 4096 4096',
    'read -P 0x11 6M 2M',
    'read -P 0 2M 64k',
    'flush',
  ]);
  assert.equal(io.code, 0, io.stderr);
  assert.doesNotMatch(io.stdout + io.stderr, /failed|error/i);
  model.fill(0x5a, MiB, MiB + 256 * 1024);
  model.fill(0x33, 4096, 8192);
  model.fill(0x11, 6 * MiB, 8 * MiB);
  model.fill(0, 2 * MiB, 2 * MiB + 64 * 1024);
  // A sub-sector read: QEMU aligns it to our 4096-byte minimum and reads the MBR back.
  const mbr = await qemuIo(socket, 'vda', ['read -v 510 2']);
  assert.match(mbr.stdout, /000001fe:\s+55 aa/);
  await server.close();
  const root = o.disk.root;
  await closeDisk(o);
  assert.deepEqual(o.alerts, []);

  // The image holds AES-XTS ciphertext with the LUKS2 tweak: Node's own aes-256-xts per sector agrees ...
  assert.ok((await decryptIndependently(d)).equals(model), 'independent per-sector decryption gives the written data');
  // ... and so does cryptsetup: the payload, under a detached LUKS2 header made with the same volume key
  // (LUKS2 decryption needs a detached header with data offset 0), decrypted offline.
  const payload = join(dir, 'payload');
  const header = join(dir, 'header');
  const keyFile = join(dir, 'vk.bin');
  const passFile = join(dir, 'pass');
  await writeFile(payload, (await readFile(d.image)).subarray(d.payloadOffset));
  await writeFile(keyFile, d.volumeKey, { mode: 0o600 });
  await writeFile(passFile, 'oracle');
  const fmt = await runTool('cryptsetup', [
    'luksFormat', '--batch-mode', '--type', 'luks2', '--header', header, '--volume-key-file', keyFile, '--key-size', '512',
    '--cipher', 'aes-xts-plain64', '--sector-size', '4096', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', passFile, payload,
  ]);
  assert.equal(fmt.code, 0, fmt.stderr);
  const dec = await runTool('cryptsetup', ['reencrypt', '--decrypt', '--force-offline-reencrypt', '--batch-mode', '--key-file', passFile, '--header', header, payload]);
  assert.equal(dec.code, 0, dec.stderr);
  assert.ok((await readFile(payload)).equals(model), 'cryptsetup decrypts our ciphertext to the written data');

  // Flushed means data, tree and root: the sidecar is exactly the tree of the image under the committed root.
  const db = MonitorDb.open(d.db);
  t.after(() => db.close());
  assert.deepEqual(db.imageRoot(o.disk.imageId), root);
  assert.notDeepEqual(root, d.root);
  assert.deepEqual(db.pendingWrites(o.disk.imageId), []);
  db.close();
  await assertSidecarMatchesImage(d, root);

  // Reopened from monitor state (the bundle's stale root is ignored), everything verifies.
  const again = await openDisk(t, d);
  assert.ok((await readSectors(again.disk, 0, d.sectors)).equals(model));
  assert.deepEqual(again.alerts, []);
});

test('FUA makes a write durable without a flush; write-zeroes encrypts zeros; reads see buffered writes', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 2 * MiB);
  const o = await openDisk(t, d);
  await o.disk.write(8 * SECTOR, Buffer.concat([pattern(1, 8), pattern(1, 9)]), false);
  assert.ok((await readSectors(o.disk, 8, 2)).equals(Buffer.concat([pattern(1, 8), pattern(1, 9)])), 'served from the write buffer');
  assert.deepEqual(o.db.imageRoot(o.disk.imageId), d.root, 'not flushed yet');
  await o.disk.write(20 * SECTOR, pattern(2, 20), true);
  assert.notDeepEqual(o.db.imageRoot(o.disk.imageId), d.root);
  await assertSidecarMatchesImage(d, o.db.imageRoot(o.disk.imageId));

  await o.disk.writeZeroes(30 * SECTOR, 3 * MiB / 4, true);
  const zeros = await readSectors(o.disk, 30, 192);
  assert.ok(zeros.every((b) => b === 0));
  const ct = await peek(d.image, ctAt(d, 30), SECTOR);
  assert.ok(!ct.every((b) => b === 0), 'zeros are stored encrypted');
  await assertSidecarMatchesImage(d, o.db.imageRoot(o.disk.imageId));
  await assert.rejects(o.disk.trim(), (e: NodeJS.ErrnoException) => e.code === 'EINVAL');
  assert.deepEqual(o.alerts, []);
});

test('flipped, moved and rolled-back sectors fail with EIO and an alert naming them; the rest reads fine', { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 8 * MiB);
  const o = await openDisk(t, d);
  const socket = join(dir, 'nbd.sock');
  const server = new NbdServer({ socketPath: socket, exports: new Map([['vda', o.disk]]) });
  await server.listen();
  t.after(() => server.close());

  // A flipped bit, while the disk is in use.
  const flipped = await peek(d.image, ctAt(d, 10) + 100, 1);
  await poke(d.image, ctAt(d, 10) + 100, Buffer.from([flipped[0]! ^ 0x04]));
  await rejectsEio(readSectors(o.disk, 10), 'flipped sector');
  assert.deepEqual(tamperAlerts(o.alerts), [{ sector: 10, sectors: 1 }]);
  assert.ok((await readSectors(o.disk, 9)).equals(sectorOf(d.plain, 9)));
  assert.ok((await readSectors(o.disk, 11)).equals(sectorOf(d.plain, 11)));
  await rejectsEio(readSectors(o.disk, 0, 64), 'a range holding the flipped sector');
  assert.deepEqual(tamperAlerts(o.alerts).at(-1), { sector: 10, sectors: 1 });
  // An independent client sees EIO too, and the good data around it.
  const io = await qemuIo(socket, 'vda', [`read ${10 * SECTOR} ${SECTOR}`, `read ${11 * SECTOR} ${SECTOR}`]);
  assert.match(io.stdout + io.stderr, /read failed: Input\/output error/);
  assert.match(io.stdout, /read 4096\/4096 bytes at offset 45056/);

  // A sector moved: sector 20's ciphertext copied over sector 21.
  await poke(d.image, ctAt(d, 21), await peek(d.image, ctAt(d, 20), SECTOR));
  await rejectsEio(readSectors(o.disk, 21), 'moved sector');
  assert.deepEqual(tamperAlerts(o.alerts).at(-1), { sector: 21, sectors: 1 });
  assert.ok((await readSectors(o.disk, 20)).equals(sectorOf(d.plain, 20)));

  // A sector rolled back during the run: written and flushed, then its old ciphertext put back.
  const old30 = await peek(d.image, ctAt(d, 30), SECTOR);
  await o.disk.write(30 * SECTOR, pattern(7, 30), false);
  await o.disk.flush();
  assert.ok((await readSectors(o.disk, 30)).equals(pattern(7, 30)));
  await poke(d.image, ctAt(d, 30), old30);
  await rejectsEio(readSectors(o.disk, 30), 'rolled-back sector');
  assert.deepEqual(tamperAlerts(o.alerts).at(-1), { sector: 30, sectors: 1 });

  // The guest may overwrite a damaged sector whole; it then verifies again.
  await o.disk.write(10 * SECTOR, pattern(8, 10), false);
  await o.disk.flush();
  assert.ok((await readSectors(o.disk, 10)).equals(pattern(8, 10)));
  await server.close();
  await closeDisk(o);

  // The same checks on the worker-thread path (every request offloaded), for large reads.
  const pool = new CryptoPool(2);
  t.after(() => pool.close());
  const w = await openDisk(t, d, { cryptoPool: pool, inlineCryptoMaxBytes: 0 });
  await rejectsEio(readSectors(w.disk, 0, 256), 'a 1 MiB read holding moved sector 21');
  assert.deepEqual(tamperAlerts(w.alerts), [{ sector: 21, sectors: 1 }, { sector: 30, sectors: 1 }]);
  assert.ok((await readSectors(w.disk, 256, 256)).equals(d.plain.subarray(256 * SECTOR, 512 * SECTOR)));
  assert.ok((await readSectors(w.disk, 10)).equals(pattern(8, 10)));
  assert.ok(pool.parallel, 'the workers ran');
});

test('rollback between runs: an old sector, or the old image and sidecar, never verify against the monitor\'s root', { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 4 * MiB);
  const oldImage = join(dir, 'old.img');
  const oldSidecar = join(dir, 'old.integrity');
  await copyFile(d.image, oldImage);
  await copyFile(d.sidecar, oldSidecar);

  const first = await openDisk(t, d);
  await first.disk.write(5 * SECTOR, Buffer.concat([pattern(1, 5), pattern(1, 6)]), false);
  await first.disk.flush();
  await closeDisk(first);

  // (i) One sector put back to its sealing-time ciphertext: that sector fails, the rest verifies.
  await poke(d.image, ctAt(d, 5), await peek(oldImage, ctAt(d, 5), SECTOR));
  const second = await openDisk(t, d);
  assert.deepEqual(second.alerts, []);
  await rejectsEio(readSectors(second.disk, 5), 'rolled-back sector');
  assert.deepEqual(tamperAlerts(second.alerts), [{ sector: 5, sectors: 1 }]);
  assert.ok((await readSectors(second.disk, 6)).equals(pattern(1, 6)));
  assert.ok((await readSectors(second.disk, 7)).equals(sectorOf(d.plain, 7)));
  await closeDisk(second);

  // (ii) The whole old image and sidecar: consistent with each other and with the bundle's root, yet refused,
  // since monitor state holds the newer root.
  await copyFile(oldImage, d.image);
  await copyFile(oldSidecar, d.sidecar);
  const db = MonitorDb.open(d.db);
  t.after(() => db.close());
  const alerts: SealedDiskAlert[] = [];
  await assert.rejects(
    SealedBackend.open({ imagePath: d.image, sidecarPath: d.sidecar, payloadOffset: d.payloadOffset, volumeKey: d.volumeKey, bundleRoot: d.root, db, onAlert: (a) => alerts.push(a) }),
    (e: unknown) => e instanceof SealedDiskError && e.reason === 'TAMPER',
  );
  assert.deepEqual(tamperAlerts(alerts), [{ sector: 0, sectors: d.sectors }]);
});

test('a tampered sidecar node makes its sectors unreadable and unwritable; a tampered top refuses the disk', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 8 * MiB); // 2048 sectors: 16 leaf nodes under one top node
  const g = sidecarGeometry(d.sectors);
  const pristine = await readFile(d.sidecar);
  await poke(d.sidecar, g.levels[0]!.offset + 3 * 4096 + 200, Buffer.from([pristine[g.levels[0]!.offset + 3 * 4096 + 200]! ^ 1]));
  const o = await openDisk(t, d);
  assert.deepEqual(tamperAlerts(o.alerts), [{ sector: 384, sectors: 128 }], 'alerted at open');
  await rejectsEio(readSectors(o.disk, 384), 'first sector under the bad node');
  await rejectsEio(readSectors(o.disk, 511), 'last sector under the bad node');
  await rejectsEio(readSectors(o.disk, 380, 8), 'a range reaching into it');
  await rejectsEio(o.disk.write(400 * SECTOR, pattern(1, 400), false), 'write under the bad node');
  assert.deepEqual(tamperAlerts(o.alerts).slice(1), [
    { sector: 384, sectors: 1 },
    { sector: 511, sectors: 1 },
    { sector: 384, sectors: 4 },
    { sector: 400, sectors: 1 },
  ]);
  assert.ok((await readSectors(o.disk, 383)).equals(sectorOf(d.plain, 383)));
  assert.ok((await readSectors(o.disk, 512)).equals(sectorOf(d.plain, 512)));
  await o.disk.write(600 * SECTOR, pattern(1, 600), false);
  await o.disk.flush();
  assert.ok((await readSectors(o.disk, 600)).equals(pattern(1, 600)));
  await closeDisk(o);

  const refused = async (what: string): Promise<SealedDiskAlert[]> => {
    const db = MonitorDb.open(d.db);
    const alerts: SealedDiskAlert[] = [];
    try {
      await assert.rejects(
        SealedBackend.open({ imagePath: d.image, sidecarPath: d.sidecar, payloadOffset: d.payloadOffset, volumeKey: d.volumeKey, db, onAlert: (a) => alerts.push(a) }),
        (e: unknown) => e instanceof SealedDiskError && e.reason === 'TAMPER',
        what,
      );
    } finally {
      db.close();
    }
    return alerts;
  };
  // The top node (level 1 here) holds the hashes of all leaf nodes: nothing can be localised.
  const good = await readFile(d.sidecar);
  const top = Buffer.from(good);
  top[g.levels[1]!.offset + 40] = top[g.levels[1]!.offset + 40]! ^ 1;
  await writeFile(d.sidecar, top);
  assert.deepEqual(tamperAlerts(await refused('top node')), [{ sector: 0, sectors: d.sectors }]);
  // A malformed sidecar: truncated, or another file.
  await writeFile(d.sidecar, good.subarray(0, good.length - 1));
  assert.match((await refused('truncated sidecar'))[0]!.kind, /TAMPER/);
  await writeFile(d.sidecar, Buffer.concat([Buffer.from('NOT-A-SIDECAR...'), good.subarray(16)]));
  assert.match((await refused('bad magic')).map((a) => (a as { reason: string }).reason).join(), /bad magic/);
  await writeFile(d.sidecar, good);
  // The image shorter than its sidecar says.
  await truncate(d.image, d.payloadOffset + (d.sectors - 1) * SECTOR);
  assert.match((await refused('short image')).map((a) => (a as { reason: string }).reason).join(), /shorter than its 2048 sectors/);
});

test('a wrong volume key: refused by the tree, or, with a tree under that key, stopped by the boot-sector check', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 2 * MiB);
  const wrongKey = randomBytes(64);
  const db = MonitorDb.open(join(dir, 'other.db'));
  t.after(() => db.close());
  const alerts: SealedDiskAlert[] = [];
  const base = { imagePath: d.image, payloadOffset: d.payloadOffset, volumeKey: wrongKey, db, onAlert: (a: SealedDiskAlert) => alerts.push(a) };

  // The integrity key derives from the volume key: the tenant's tree does not verify under another key.
  await assert.rejects(SealedBackend.open({ ...base, sidecarPath: d.sidecar, bundleRoot: d.root }), (e: unknown) => e instanceof SealedDiskError && e.reason === 'TAMPER');

  // A tree made under the wrong key (consistent with it): the data decrypts to garbage, sector 0 gives it away.
  const forged = await buildSidecarForImage(d.image, wrongKey, d.payloadOffset, { sidecarPath: join(dir, 'forged.integrity') });
  alerts.length = 0;
  const disk = await SealedBackend.open({ ...base, sidecarPath: forged.sidecarPath, bundleRoot: forged.root });
  t.after(() => disk.close());
  assert.ok((await readSectors(disk, 5)).length === SECTOR, 'sector 0 is checked on its first read, not before');
  await rejectsEio(readSectors(disk, 0, 16), 'the first read of sector 0');
  assert.deepEqual(alerts.map((a) => a.kind), ['BAD_KEY_OR_DISK']);
  await rejectsEio(readSectors(disk, 5), 'any request after the failed check');
  await rejectsEio(disk.write(5 * SECTOR, pattern(1, 5), false), 'a write after the failed check');

  // The right key on a disk whose sector 0 is not an MBR: the same check.
  const plainDir = join(dir, 'nombr');
  await mkdir(plainDir);
  const nombr = await makeSealedDisk(plainDir, 0, Buffer.alloc(MiB, 0x41));
  const o = await openDisk(t, nombr);
  await rejectsEio(readSectors(o.disk, 0), 'sector 0 without 0x55AA');
  assert.deepEqual(o.alerts.map((a) => a.kind), ['BAD_KEY_OR_DISK']);
});

test('opening: one open per image, a trusted root is required, arguments are checked', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, MiB);
  const o = await openDisk(t, d);
  const reason = (r: string) => (e: unknown) => e instanceof SealedDiskError && e.reason === r;
  const base = { imagePath: d.image, sidecarPath: d.sidecar, payloadOffset: d.payloadOffset, volumeKey: d.volumeKey, db: o.db, onAlert: () => undefined };
  await assert.rejects(SealedBackend.open(base), reason('BUSY'));
  await closeDisk(o);
  const fresh = MonitorDb.open(join(dir, 'fresh.db'));
  t.after(() => fresh.close());
  await assert.rejects(SealedBackend.open({ ...base, db: fresh }), reason('NO_ROOT'));
  await assert.rejects(SealedBackend.open({ ...base, db: fresh, bundleRoot: randomBytes(32) }), reason('TAMPER'));
  await assert.rejects(SealedBackend.open({ ...base, db: fresh, bundleRoot: randomBytes(31) }), reason('INVALID'));
  await assert.rejects(SealedBackend.open({ ...base, db: fresh, volumeKey: randomBytes(32) }), reason('INVALID'));
  await assert.rejects(SealedBackend.open({ ...base, db: fresh, bundleRoot: d.root, payloadOffset: -4096 }), reason('INVALID'));
  await assert.rejects(SealedBackend.open({ ...base, db: fresh, bundleRoot: d.root, writeBufferBytes: 1000 }), reason('INVALID'));
  // The failed opens left nothing behind: the image opens normally.
  const ok = await SealedBackend.open({ ...base, db: fresh, bundleRoot: d.root });
  t.after(() => ok.close());
  assert.equal(ok.size, MiB);
  await ok.close();
  await assert.rejects(ok.read(0, SECTOR, Buffer.alloc(SECTOR)), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
});

test('concurrent reads, writes and flushes through a tiny write buffer: no false alarm, no lost write', { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 2 * MiB);
  const pool = new CryptoPool(2);
  t.after(() => pool.close());
  const model = Buffer.from(d.plain);
  const o = await openDisk(t, d, { writeBufferBytes: 16 * SECTOR, inlineCryptoMaxBytes: 8 * SECTOR, cryptoPool: pool });
  for (let round = 0; round < 40; round++) {
    // Each round writes some runs and reads others, all at once; writes never overlap reads in a round, so
    // every read has one right answer (the model before the round).
    const taken = new Set<number>();
    const pick = (): [number, number] => {
      for (;;) {
        const len = 1 + randomInt(40);
        // Sector 0 keeps its MBR: the reopened disk's first read of it is checked for 0x55AA, as at boot.
        const first = 1 + randomInt(d.sectors - 1 - len);
        let free = true;
        for (let s = first; s < first + len; s++) if (taken.has(s)) free = false;
        if (!free) continue;
        for (let s = first; s < first + len; s++) taken.add(s);
        return [first, len];
      }
    };
    const ops: Promise<unknown>[] = [];
    const writes: [number, Buffer][] = [];
    for (let i = 0; i < 6; i++) {
      const [first, len] = pick();
      const data = randomBytes(len * SECTOR);
      writes.push([first, data]);
      ops.push(o.disk.write(first * SECTOR, data, randomInt(10) === 0));
    }
    for (let i = 0; i < 6; i++) {
      const [first, len] = pick();
      const expected = Buffer.from(model.subarray(first * SECTOR, (first + len) * SECTOR));
      ops.push(readSectors(o.disk, first, len).then((got) => assert.ok(got.equals(expected), `round ${round}: read ${first}+${len}`)));
    }
    if (round % 3 === 0) ops.push(o.disk.flush());
    await Promise.all(ops);
    for (const [first, data] of writes) data.copy(model, first * SECTOR);
  }
  assert.deepEqual(o.alerts, []);
  assert.ok((await readSectors(o.disk, 0, d.sectors)).equals(model));
  await closeDisk(o); // flushes what is still buffered
  await assertSidecarMatchesImage(d, o.disk.root);
  const again = await openDisk(t, d);
  assert.ok((await readSectors(again.disk, 0, d.sectors)).equals(model));
  assert.deepEqual(again.alerts, []);
});

test('a write larger than the write buffer goes through several flushes', { timeout: 60_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 4 * MiB);
  const o = await openDisk(t, d, { writeBufferBytes: 64 * 1024 });
  const data = randomBytes(2 * MiB);
  await o.disk.write(MiB, data, false);
  assert.ok((await readSectors(o.disk, 256, 512)).equals(data));
  await closeDisk(o);
  const again = await openDisk(t, d);
  assert.ok((await readSectors(again.disk, 256, 512)).equals(data));
  assert.deepEqual([...o.alerts, ...again.alerts], []);
});

// Crash consistency: the child writes and flushes (acknowledged), writes more, and is SIGKILLed at a point of
// the second flush. Sectors 2 and 3 are written in both phases; the second flush's runs are 2-3, 100-102, 500,
// 1000-1010, so 'image-partly-written' stops after the first run.
const ACKED = [1, 2, 3, ...Array.from({ length: 16 }, (_, i) => 200 + i)];
const UNACKED = [2, 3, 100, 101, 102, 500, ...Array.from({ length: 11 }, (_, i) => 1000 + i)];
const CRASHES: { at: FlushStep | 'before-flush'; unackedNew: 'none' | 'first-run' | 'all' }[] = [
  { at: 'before-flush', unackedNew: 'none' },
  { at: 'pending-recorded', unackedNew: 'none' },
  { at: 'image-partly-written', unackedNew: 'first-run' },
  { at: 'image-written', unackedNew: 'all' },
  { at: 'sidecar-partly-written', unackedNew: 'all' },
  { at: 'sidecar-written', unackedNew: 'all' },
  { at: 'synced', unackedNew: 'all' },
  { at: 'committed', unackedNew: 'all' },
];

function runChild(args: ChildArgs): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'sealed-crash-child.ts'), JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test('crash consistency: killed anywhere in a flush, the disk reopens without repair, acknowledged data intact', { timeout: 300_000 }, async (t) => {
  const dir = await tempDir(t);
  const base = await makeSealedDisk(dir, 8 * MiB);
  for (const crash of CRASHES) {
    const caseDir = join(dir, crash.at);
    await mkdir(caseDir);
    const d: SealedDisk = { ...base, dir: caseDir, image: join(caseDir, 'disk.img'), sidecar: join(caseDir, 'disk.img.integrity'), db: join(caseDir, 'monitor.db') };
    await copyFile(base.image, d.image);
    await copyFile(base.sidecar, d.sidecar);
    const r = await runChild({
      image: d.image,
      sidecar: d.sidecar,
      payloadOffset: d.payloadOffset,
      volumeKey: d.volumeKey.toString('hex'),
      bundleRoot: d.root.toString('hex'),
      db: d.db,
      crashAt: crash.at,
      acked: ACKED,
      ackedTag: 1,
      phases: [{ sectors: UNACKED, tag: 2 }],
    });
    assert.equal(r.signal, 'SIGKILL', `${crash.at}: the child died at its crash point (${r.stderr})`);
    assert.equal(r.stdout, 'ACKED\n', crash.at);

    const o = await openDisk(t, d);
    assert.deepEqual(o.alerts, [], `${crash.at}: reopened without alerts`);
    assert.deepEqual(o.db.pendingWrites(o.disk.imageId), [], `${crash.at}: recovery committed a root`);
    const all = await readSectors(o.disk, 0, d.sectors);
    const firstRun = new Set([2, 3]);
    for (let s = 0; s < d.sectors; s++) {
      const got = sectorOf(all, s);
      const old = ACKED.includes(s) ? pattern(1, s) : sectorOf(d.plain, s);
      if (!UNACKED.includes(s)) {
        assert.ok(got.equals(old), `${crash.at}: sector ${s} keeps its acknowledged contents`);
        continue;
      }
      const isNew = got.equals(pattern(2, s));
      assert.ok(isNew || got.equals(old), `${crash.at}: unacknowledged sector ${s} is old or new`);
      const expectNew = crash.unackedNew === 'all' || (crash.unackedNew === 'first-run' && firstRun.has(s));
      assert.equal(isNew, expectNew, `${crash.at}: sector ${s} new?`);
    }
    // The disk goes on: write, flush, reopen.
    await o.disk.write(7 * SECTOR, pattern(3, 7), false);
    await o.disk.flush();
    const root = o.disk.root;
    await closeDisk(o);
    await assertSidecarMatchesImage(d, root);
    const again = await openDisk(t, d);
    assert.ok((await readSectors(again.disk, 7)).equals(pattern(3, 7)));
    assert.deepEqual(again.alerts, []);
    await closeDisk(again);
    await rm(caseDir, { recursive: true, force: true });
  }
});

test('crash recovery refuses to vouch for a sector torn between old and new, and keeps the rest', { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 4 * MiB);
  const r = await runChild({
    image: d.image, sidecar: d.sidecar, payloadOffset: d.payloadOffset, volumeKey: d.volumeKey.toString('hex'), bundleRoot: d.root.toString('hex'),
    db: d.db, crashAt: 'image-written', acked: [1], ackedTag: 1, phases: [{ sectors: [100, 101], tag: 2 }],
  });
  assert.equal(r.signal, 'SIGKILL', r.stderr);
  // Power loss tore sector 100: half of it is the old ciphertext.
  await poke(d.image, ctAt(d, 100), Buffer.alloc(2048, 0xee));
  const o = await openDisk(t, d);
  assert.deepEqual(tamperAlerts(o.alerts), [{ sector: 100, sectors: 1 }]);
  await rejectsEio(readSectors(o.disk, 100), 'torn sector');
  assert.ok((await readSectors(o.disk, 101)).equals(pattern(2, 101)));
  assert.ok((await readSectors(o.disk, 1)).equals(pattern(1, 1)));
  // Rewriting it whole makes it readable again.
  await o.disk.write(100 * SECTOR, pattern(3, 100), true);
  assert.ok((await readSectors(o.disk, 100)).equals(pattern(3, 100)));
});

// Spills without FLUSH: a tiny write buffer (8 sectors) spills many times while the phases are written, several
// sectors in several versions; a FUA phase in the middle must be durable once acknowledged.
const range = (first: number, count: number): number[] => Array.from({ length: count }, (_, i) => first + i);
const SPILL_ACKED = [1, 2, 3, ...range(50, 10)];
const SPILL_PHASES = [
  { sectors: [2, 3, ...range(100, 40)], tag: 2 },
  { sectors: [50, ...range(100, 20), ...range(300, 11)], tag: 3 },
  { sectors: [3, 400, 401, 402], tag: 4, fua: true },
  { sectors: [...range(100, 40), ...range(300, 11), 402, 600], tag: 5 },
  { sectors: [2, ...range(100, 10), 600], tag: 6 },
];
const FUA_PHASE = 2;
const SPILL_BUFFER = 8 * SECTOR;

/** Runs the child over a fresh copy of `base` in `caseDir`; returns the copy and the phases acknowledged as FUA. */
async function crashSpilling(base: SealedDisk, caseDir: string, crashAt: ChildArgs['crashAt'], crashOn = 1, countFromPhase?: number): Promise<{ d: SealedDisk; fuaAcked: number }> {
  await mkdir(caseDir);
  const d: SealedDisk = { ...base, dir: caseDir, image: join(caseDir, 'disk.img'), sidecar: join(caseDir, 'disk.img.integrity'), db: join(caseDir, 'monitor.db') };
  await copyFile(base.image, d.image);
  await copyFile(base.sidecar, d.sidecar);
  const r = await runChild({
    image: d.image, sidecar: d.sidecar, payloadOffset: d.payloadOffset, volumeKey: d.volumeKey.toString('hex'), bundleRoot: d.root.toString('hex'),
    db: d.db, crashAt, crashOn, ...(countFromPhase === undefined ? {} : { countFromPhase }), writeBufferBytes: SPILL_BUFFER, acked: SPILL_ACKED, ackedTag: 1, phases: SPILL_PHASES,
  });
  const what = `${crashAt}#${crashOn}/${countFromPhase}`;
  assert.equal(r.signal, 'SIGKILL', `${what}: the child died at its crash point (${r.stderr})`);
  assert.match(r.stdout, /^ACKED\n/, what);
  assert.doesNotMatch(r.stdout, /FLUSHED/, what);
  const fua = [...r.stdout.matchAll(/^FUA (\d+)$/gm)].map((m) => Number(m[1]));
  return { d, fuaAcked: fua.length > 0 ? Math.max(...fua) : -1 };
}

/** The contents sector `s` may show after the crash: its acknowledged version, then every later one (oldest first). */
function spillVersions(d: SealedDisk, s: number, fuaAcked: number): Buffer[] {
  const versions = [SPILL_ACKED.includes(s) ? pattern(1, s) : sectorOf(d.plain, s)];
  let durable = 0;
  SPILL_PHASES.forEach((p, i) => {
    if (!p.sectors.includes(s)) return;
    versions.push(pattern(p.tag, s));
    // A FUA acknowledged makes everything written up to it durable: older versions are gone for good.
    if (i <= fuaAcked) durable = versions.length - 1;
  });
  return versions.slice(durable);
}

test('several spills, then killed before any FLUSH: reopens without repair, flushed data intact, each other sector one of its versions', { timeout: 300_000 }, async (t) => {
  const dir = await tempDir(t);
  const base = await makeSealedDisk(dir, 4 * MiB);
  // [step, occurrence, counted from the end of this phase (else from ACKED)]
  const cases: [ChildArgs['crashAt'], number, number?][] = [
    ['before-flush', 1],
    ['sidecar-written', 3], // right after the third spill, in the first phase
    ['synced', 1], // the FUA's flush, synced but its root not committed: the FUA is not acknowledged
    ['image-partly-written', 3, FUA_PHASE], // in the middle of the third spill after the FUA
    ['sidecar-partly-written', 4, FUA_PHASE],
  ];
  let sawUnflushed = false;
  for (const [at, on, from] of cases) {
    const what = `${at}#${on}/${from}`;
    const { d, fuaAcked } = await crashSpilling(base, join(dir, `${at}-${on}`), at, on, from);
    assert.equal(fuaAcked, at === 'before-flush' || from === FUA_PHASE ? FUA_PHASE : -1, `${what}: FUA acknowledged?`);
    const before = MonitorDb.open(d.db);
    const records = before.pendingWrites(integrityIdOf(before));
    before.close();
    assert.ok(records.length >= 2, `${what}: several spills were pending (${records.length})`);

    const o = await openDisk(t, d);
    assert.deepEqual(o.alerts, [], `${what}: reopened without alerts`);
    assert.deepEqual(o.db.pendingWrites(o.disk.imageId), [], `${what}: recovery committed a root`);
    const all = await readSectors(o.disk, 0, d.sectors);
    for (let s = 0; s < d.sectors; s++) {
      const versions = spillVersions(d, s, fuaAcked);
      const got = sectorOf(all, s);
      const which = versions.findIndex((v) => v.equals(got));
      assert.ok(which >= 0, `${what}: sector ${s} holds one of its ${versions.length} version(s)`);
      if (which < versions.length - 1) sawUnflushed = true;
    }
    // The disk goes on, and the committed state is exactly the files.
    await o.disk.write(7 * SECTOR, pattern(9, 7), false);
    await o.disk.flush();
    const root = o.disk.root;
    await closeDisk(o);
    await assertSidecarMatchesImage(d, root);
    const again = await openDisk(t, d);
    assert.ok((await readSectors(again.disk, 7)).equals(pattern(9, 7)));
    assert.deepEqual(again.alerts, []);
    await closeDisk(again);
    await rm(d.dir, { recursive: true, force: true });
  }
  assert.ok(sawUnflushed, 'some crash lost an unflushed write (the cases do stop mid-way)');
});

/** The image id of the only image in a monitor db. */
function integrityIdOf(db: MonitorDb): string {
  return (db.sql.prepare('SELECT image_id FROM image_roots').get() as { image_id: string }).image_id;
}

test('after a crash with pending spills, tampering still shows: rolled-back, moved and altered sectors fail, the rest reads', { timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const base = await makeSealedDisk(dir, 4 * MiB);
  const { d } = await crashSpilling(base, join(dir, 'case'), 'before-flush');
  // Sector 2: flushed as tag 1 and tag 2, then spilled as tag 6; its sealing-time ciphertext put back (a rollback
  // past FLUSHes). Sector 102: spilled, overwritten with sector 101's ciphertext (moved). Sector 55: flushed and
  // not written since, rolled back to its sealing-time ciphertext. Sector 301: spilled, one bit flipped.
  await poke(d.image, ctAt(d, 2), await peek(base.image, ctAt(d, 2), SECTOR));
  await poke(d.image, ctAt(d, 102), await peek(d.image, ctAt(d, 101), SECTOR));
  await poke(d.image, ctAt(d, 55), await peek(base.image, ctAt(d, 55), SECTOR));
  const b = await peek(d.image, ctAt(d, 301) + 7, 1);
  await poke(d.image, ctAt(d, 301) + 7, Buffer.from([b[0]! ^ 0x80]));

  const o = await openDisk(t, d);
  assert.deepEqual(tamperAlerts(o.alerts), [{ sector: 2, sectors: 1 }, { sector: 102, sectors: 1 }, { sector: 301, sectors: 1 }], 'listed sectors alerted at open');
  for (const s of [2, 102, 301, 55]) await rejectsEio(readSectors(o.disk, s), `sector ${s}`);
  assert.deepEqual(tamperAlerts(o.alerts).slice(3), [2, 102, 301, 55].map((sector) => ({ sector, sectors: 1 })));
  assert.ok((await readSectors(o.disk, 1)).equals(pattern(1, 1)), 'flushed data around them reads');
  assert.ok((await readSectors(o.disk, 400)).equals(pattern(4, 400)), 'FUA data reads');
  const v101 = await readSectors(o.disk, 101);
  assert.ok([pattern(3, 101), pattern(5, 101), pattern(6, 101)].some((v) => v.equals(v101)), 'a spilled sector: its flushed version or a later one');
  // The guest may rewrite a damaged sector whole; it then verifies again, also after a reopen.
  await o.disk.write(2 * SECTOR, pattern(8, 2), true);
  assert.ok((await readSectors(o.disk, 2)).equals(pattern(8, 2)));
  await closeDisk(o);
  const again = await openDisk(t, d);
  assert.ok((await readSectors(again.disk, 2)).equals(pattern(8, 2)));
  assert.deepEqual(again.alerts, []);
  await rejectsEio(readSectors(again.disk, 102), 'a damaged sector stays refused across reopens');
});
