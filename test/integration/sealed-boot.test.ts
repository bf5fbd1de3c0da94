/**
 * The sealed disk end to end: the demo guest's disk sealed into a LUKS2 image with its integrity sidecar,
 * served by the sealed backend over our NBD server, boots the real Debian kernel under QEMU; what the guest
 * writes is encrypted in the image and, after a clean power-down, reads back through a fresh open of the
 * sealed disk (which verifies it against the root the monitor committed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sealImage } from '../../src/client/image-seal.ts';
import { buildSidecarForImage } from '../../src/client/integrity-sidecar-writer.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { checkFilesystem } from '../../src/guest/disk-image.ts';
import { readGuestFile } from '../../src/guest/disk-inspect.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { NbdServer } from '../../src/monitor/disk/nbd-server.ts';
import { SealedBackend, type SealedDiskAlert } from '../../src/monitor/disk/sealed-backend.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { QemuVm } from '../../src/monitor/vm/qemu-vm.ts';
import { tempDir } from '../monitor/sealed-fixtures.ts';

const CHUNK = 4 * 1024 * 1024;

test('the Debian guest boots from a sealed disk, writes a file, powers down; the file reads back verified', { timeout: 420_000 }, async (t) => {
  const guest = await buildGuest();
  const dir = await tempDir(t, 'vmseal-sealed-boot-');
  const work = await copyGuestDisk(guest.disk);
  t.after(() => work.remove());
  const image = join(dir, 'disk.img');
  const sealed = await sealImage({ input: work.path, output: image, passphrase: Buffer.from('sealed boot'), pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
  const sidecar = await buildSidecarForImage(image, sealed.volumeKey, sealed.payloadOffset);
  const db = MonitorDb.open(join(dir, 'monitor.db'));
  t.after(() => db.close());
  const alerts: SealedDiskAlert[] = [];
  const openDisk = (): Promise<SealedBackend> =>
    SealedBackend.open({
      imagePath: image,
      sidecarPath: sidecar.sidecarPath,
      payloadOffset: sealed.payloadOffset,
      volumeKey: sealed.volumeKey,
      bundleRoot: sidecar.root,
      db,
      onAlert: (a) => alerts.push(a),
    });

  const disk = await openDisk();
  t.after(() => disk.close());
  const nbd = new NbdServer({ socketPath: join(dir, 'nbd.sock'), exports: new Map([['vda', disk]]) });
  await nbd.listen();
  t.after(() => nbd.close());
  const vm = await QemuVm.start({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, disk: { socketPath: nbd.socketPath, exportName: 'vda' }, name: 'sealed-itest' });
  t.after(() => vm.stop());

  await vm.console.waitFor(GUEST_READY_MARKER, 240_000);
  const mounts = await runInGuest(vm.console, 'cat /proc/mounts');
  assert.match(mounts.output, /^\/dev\/vda1 \/ ext4 rw/m, 'root is ext4 on the sealed disk');
  const token = randomBytes(16).toString('hex');
  const wrote = await runInGuest(vm.console, `echo ${token} > /root/sealed-proof.txt && sync`);
  assert.equal(wrote.exitCode, 0);
  const powerdown = vm.qmp.waitForEvent('POWERDOWN', 10_000);
  await vm.powerdown();
  await powerdown;
  assert.deepEqual(await vm.waitForExit(90_000), { code: 0, signal: null }, 'the guest powered off and QEMU exited cleanly');
  await nbd.close();
  await disk.close();
  assert.deepEqual(alerts, [], 'nothing failed verification');
  assert.ok(nbd.stats.reads > 0 && nbd.stats.writes > 0 && nbd.stats.flushes > 0, JSON.stringify(nbd.stats));
  assert.notDeepEqual(db.imageRoot(disk.imageId), sidecar.root, 'the guest\'s flushes moved the trusted root on');
  assert.deepEqual(db.imageRoot(disk.imageId), disk.root);

  // The storage holds ciphertext only.
  assert.equal((await readFile(image)).indexOf(token), -1, 'the token is not in the image in clear');

  // A fresh open verifies the whole disk against the committed root while copying it out in clear.
  const again = await openDisk();
  t.after(() => again.close());
  const raw = join(dir, 'decrypted.raw');
  const out = await open(raw, 'w', 0o600);
  try {
    const buf = Buffer.alloc(CHUNK);
    for (let at = 0; at < again.size; at += CHUNK) {
      const n = Math.min(CHUNK, again.size - at);
      await again.read(at, n, buf);
      await out.write(buf, 0, n, at);
    }
  } finally {
    await out.close();
  }
  await again.close();
  assert.deepEqual(alerts, []);
  assert.equal((await readGuestFile(raw, '/root/sealed-proof.txt')).toString(), `${token}\n`);
  await checkFilesystem(raw); // e2fsck -fn is clean: the power-down unmounted cleanly and every write made it
});
