/**
 * The XTS-only sealed export (integrity 'none'): serves the plaintext of a sealed image, writes ciphertext that
 * Node's own aes-256-xts decrypts (independent of the addon), keeps the boot-sector check, refuses short images,
 * and is chosen by the monitor's opener only for bundles that say so.
 */
import assert from 'node:assert/strict';
import { readFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { decodeLaunchBundle, encodeLaunchBundle, type LaunchBundle } from '../../src/formats/protocol/launch-bundle.ts';
import { NbdServer } from '../../src/monitor/disk/nbd-server.ts';
import type { SealedDiskAlert } from '../../src/monitor/disk/sealed-alerts.ts';
import { XtsBackend } from '../../src/monitor/disk/xts-backend.ts';
import { sealedDiskOpener } from '../../src/monitor/launch/sealed-disk.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { decryptIndependently, makeSealedDisk, MiB, pattern, qemuIo, SECTOR, tempDir } from './sealed-fixtures.ts';

async function openXts(d: { image: string; payloadOffset: number; sectors: number; volumeKey: Buffer }, alerts: SealedDiskAlert[] = []) {
  return XtsBackend.open({ imagePath: d.image, payloadOffset: d.payloadOffset, sectors: d.sectors, volumeKey: d.volumeKey, onAlert: (a) => alerts.push(a) });
}

test('XTS-only export: reads the sealed plaintext, writes ciphertext an independent XTS decrypts, persists across reopen', async (t) => {
  const d = await makeSealedDisk(await tempDir(t), 2 * MiB);
  const be = await openXts(d);
  assert.equal(be.size, d.sectors * SECTOR);
  assert.equal(be.canTrim, false);
  const all = Buffer.alloc(be.size);
  await be.read(0, be.size, all);
  assert.ok(all.equals(d.plain));
  // Concurrent writes of different sizes, one with FUA, then a zero range.
  const a = Buffer.concat([pattern(1, 3), pattern(1, 4)]);
  const b = Buffer.concat(Array.from({ length: 40 }, (_, i) => pattern(2, 100 + i)));
  await Promise.all([be.write(3 * SECTOR, a, false), be.write(100 * SECTOR, b, true), be.writeZeroes(200 * SECTOR, 8 * SECTOR, false)]);
  await be.flush();
  const expected = Buffer.from(d.plain);
  a.copy(expected, 3 * SECTOR);
  b.copy(expected, 100 * SECTOR);
  expected.fill(0, 200 * SECTOR, 208 * SECTOR);
  const back = Buffer.alloc(48 * SECTOR);
  await be.read(96 * SECTOR, back.length, back);
  assert.ok(back.equals(expected.subarray(96 * SECTOR, 144 * SECTOR)));
  // The caller's payload is not touched (it is encrypted into the backend's own buffer).
  assert.ok(a.equals(Buffer.concat([pattern(1, 3), pattern(1, 4)])));
  await be.close();
  await assert.rejects(be.read(0, SECTOR, Buffer.alloc(SECTOR)), { code: 'EBADF' });
  assert.ok((await decryptIndependently(d)).equals(expected));
  const again = await openXts(d);
  const whole = Buffer.alloc(again.size);
  await again.read(0, whole.length, whole);
  assert.ok(whole.equals(expected));
  await again.close();
});

test('XTS-only export: a wrong key fails the first read of sector 0 with BAD_KEY_OR_DISK, then every request', async (t) => {
  const d = await makeSealedDisk(await tempDir(t), 256 * 1024);
  const alerts: SealedDiskAlert[] = [];
  const wrongKey = Buffer.from(d.volumeKey);
  wrongKey[0]! ^= 1;
  const be = await openXts({ ...d, volumeKey: wrongKey }, alerts);
  const buf = Buffer.alloc(2 * SECTOR);
  await assert.rejects(be.read(0, buf.length, buf), { code: 'EIO' });
  assert.deepEqual(alerts.map((a) => a.kind), ['BAD_KEY_OR_DISK']);
  await assert.rejects(be.read(SECTOR, SECTOR, buf), /has failed/);
  await assert.rejects(be.write(SECTOR, Buffer.alloc(SECTOR), false), /has failed/);
  await be.close();
  // The image was not written to.
  const right = await openXts(d);
  await right.read(0, buf.length, buf);
  assert.ok(buf.equals(d.plain.subarray(0, buf.length)));
  await right.close();
});

test('XTS-only export: undetected by design — a flipped ciphertext byte reads as garbage, not as an error', async (t) => {
  const d = await makeSealedDisk(await tempDir(t), 256 * 1024);
  const bytes = await readFile(d.image);
  bytes[d.payloadOffset + 5 * SECTOR + 17]! ^= 0x80;
  const { writeFile } = await import('node:fs/promises');
  await writeFile(d.image, bytes);
  const be = await openXts(d);
  const buf = Buffer.alloc(SECTOR);
  await be.read(5 * SECTOR, SECTOR, buf);
  assert.ok(!buf.equals(d.plain.subarray(5 * SECTOR, 6 * SECTOR)));
  await be.close();
});

test('XTS-only export: an image shorter than the sealed disk, a bad key length or equal key halves are refused', async (t) => {
  const d = await makeSealedDisk(await tempDir(t), 256 * 1024);
  await assert.rejects(openXts({ ...d, volumeKey: Buffer.alloc(32, 1) }), { reason: 'INVALID' });
  await assert.rejects(openXts({ ...d, volumeKey: Buffer.concat([Buffer.alloc(32, 7), Buffer.alloc(32, 7)]) }), { reason: 'INVALID' });
  await assert.rejects(openXts({ ...d, sectors: d.sectors + 1 }), { reason: 'INVALID' });
  await truncate(d.image, d.payloadOffset + (d.sectors - 1) * SECTOR);
  await assert.rejects(openXts(d), /shorter/);
});

test("launch bundle: integrity 'none' carries no root, 'tree' (or absent) needs one; the opener picks the XTS backend", async (t) => {
  const d = await makeSealedDisk(await tempDir(t), 256 * 1024);
  const base: LaunchBundle = {
    v: 1,
    hostId: 'a'.repeat(32),
    name: 'vm1',
    volumeKey: d.volumeKey,
    kernelSha256: '0'.repeat(64),
    initrdSha256: '1'.repeat(64),
    cmdline: 'console=ttyS0',
    disk: { payloadOffset: d.payloadOffset, sectorSize: 4096, sectors: d.sectors, integrity: 'none' },
    launchNonce: Buffer.alloc(16, 3),
    policy: { idsMeasurements: [] },
  };
  const bundle = decodeLaunchBundle(encodeLaunchBundle(base));
  assert.equal(bundle.disk.integrity, 'none');
  assert.throws(() => encodeLaunchBundle({ ...base, disk: { ...base.disk, integrityRoot: d.root.toString('hex') } }), /integrityRoot/);
  assert.throws(() => encodeLaunchBundle({ ...base, disk: { ...base.disk, integrity: 'tree' } }), /integrityRoot/);
  const { integrity: _none, ...noMode } = base.disk;
  assert.throws(() => encodeLaunchBundle({ ...base, disk: noMode }), /integrityRoot/);
  assert.equal(decodeLaunchBundle(encodeLaunchBundle({ ...base, disk: { ...noMode, integrityRoot: d.root.toString('hex') } })).disk.integrity, undefined);

  const db = MonitorDb.open(d.db);
  t.after(() => db.close());
  const open = sealedDiskOpener(db);
  // No sidecar exists: the XTS-only disk never reads one.
  const be = await open({ imagePath: d.image, sidecarPath: `${d.image}.absent`, bundle, onAlert: () => undefined } as unknown as Parameters<typeof open>[0]);
  assert.ok(be instanceof XtsBackend);
  const buf = Buffer.alloc(SECTOR);
  await be.read(0, SECTOR, buf);
  assert.ok(buf.equals(d.plain.subarray(0, SECTOR)));
  await be.close();
  await assert.rejects(open({ imagePath: d.image, sidecarPath: `${d.image}.absent`, bundle: { ...bundle, disk: { ...bundle.disk, sectors: d.sectors + 8 } }, onAlert: () => undefined } as unknown as Parameters<typeof open>[0]), { name: 'RefusalError' });
});

test('XTS-only export over NBD: qemu-io writes and reads back through our server; the image decrypts to the same data', { timeout: 180_000 }, async (t) => {
  const dir = await tempDir(t);
  const d = await makeSealedDisk(dir, 8 * MiB);
  const alerts: SealedDiskAlert[] = [];
  const be = await openXts(d, alerts);
  const socket = join(dir, 'nbd.sock');
  const server = new NbdServer({ socketPath: socket, exports: new Map([['vda', be]]) });
  await server.listen();
  t.after(() => server.close());
  const io = await qemuIo(socket, 'vda', [
    'write -P 0x5a 1M 256k',
    'write -P 0x33 4096 4096',
    'write -P 0x11 6M 2M',
    'write -z 2M 64k',
    'read -P 0x5a 1M 256k',
    'read -P 0x33 4096 4096',
    'read -P 0x11 6M 2M',
    'read -P 0 2M 64k',
    'flush',
  ]);
  assert.equal(io.code, 0, io.stderr);
  assert.doesNotMatch(io.stdout + io.stderr, /failed|error/i);
  const mbr = await qemuIo(socket, 'vda', ['read -v 510 2']);
  assert.match(mbr.stdout, /000001fe:\s+55 aa/);
  await server.close();
  await be.close();
  assert.deepEqual(alerts, []);
  const model = Buffer.from(d.plain);
  model.fill(0x5a, MiB, MiB + 256 * 1024);
  model.fill(0x33, 4096, 8192);
  model.fill(0x11, 6 * MiB, 8 * MiB);
  model.fill(0, 2 * MiB, 2 * MiB + 64 * 1024);
  assert.ok((await decryptIndependently(d)).equals(model));
});
