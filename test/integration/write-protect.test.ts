/**
 * Hypervisor-enforced write protection on a real guest: the monitor maps /bin/busybox and
 * /etc/profile to disk bytes with its ext4 reader and wraps the VM's disk backend; inside the guest,
 * root overwriting the protected config file or the raw disk blocks of busybox gets an I/O error,
 * the file reads back unchanged once the page cache is dropped, and other writes still work.
 * debugfs (e2fsprogs) is the outside oracle for what ends up on disk.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { readGuestFile } from '../../src/guest/disk-inspect.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { FileBackend } from '../../src/monitor/disk/file-backend.ts';
import { ProtectedBackend, type WriteRefusal } from '../../src/monitor/disk/protected-backend.ts';
import { DiskLaunch } from '../../src/monitor/launch/disk-launch.ts';
import { backendReader, openGuestVolume } from '../../src/monitor/measure/guest-volume.ts';
import { protectedRangesFor } from '../../src/monitor/measure/protect-map.ts';

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

test('protected files cannot be overwritten from inside the guest; other writes work', { timeout: 400_000 }, async (t) => {
  const guest = await buildGuest();
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const before = { busybox: sha256(await readGuestFile(disk.path, '/bin/busybox')), profile: sha256(await readGuestFile(disk.path, '/etc/profile')) };

  const file = await FileBackend.open(disk.path);
  const vol = await openGuestVolume(backendReader(file), file.size);
  assert.equal(vol.kind, 'ext4');
  if (vol.kind !== 'ext4') return;
  const ranges = await protectedRangesFor(vol.fs, ['/bin/busybox', '/etc/profile'], vol.offset);
  const busyboxData = ranges.find((r) => r.label === '/bin/busybox data')!;
  const refusals: WriteRefusal[] = [];
  const backend = new ProtectedBackend(file, ranges, (r) => refusals.push(r));

  const launch = await DiskLaunch.start(backend, { kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, name: 'wprot' });
  t.after(() => launch.stop());
  const { vm } = launch;
  await vm.console.waitFor(GUEST_READY_MARKER, 180_000);

  // A protected config file, overwritten in place by root.
  const profile = await runInGuest(vm.console, 'dd if=/dev/zero of=/etc/profile bs=64 count=1 conv=notrunc,fsync 2>&1; echo rc=$?', 60_000);
  assert.doesNotMatch(profile.output, /rc=0/, `dd on /etc/profile should fail: ${profile.output}`);
  assert.match(profile.output, /I\/O error|Input\/output error|Operation not permitted/i);

  // The raw disk blocks of busybox, written by root through the block device (busybox itself is
  // busy as the running shell, so opening the file for writing would fail with ETXTBSY anyway).
  const blk = (busyboxData.offset / 4096) | 0;
  const raw = await runInGuest(vm.console, `dd if=/dev/zero of=/dev/vda bs=4096 seek=${blk} count=1 conv=notrunc,fsync 2>&1; echo rc=$?`, 60_000);
  assert.doesNotMatch(raw.output, /rc=0/, `dd on /dev/vda should fail: ${raw.output}`);

  // Once the page cache is dropped, the guest reads the protected bytes from disk again.
  const reread = await runInGuest(vm.console, 'sync; echo 3 > /proc/sys/vm/drop_caches; sha256sum /etc/profile /bin/busybox');
  assert.match(reread.output, new RegExp(`${before.profile}\\s+/etc/profile`));
  assert.match(reread.output, new RegExp(`${before.busybox}\\s+/bin/busybox`));

  // Writes elsewhere still work, including to inodes sharing an inode-table block with protected ones.
  const ok = await runInGuest(vm.console, 'echo still-writable > /root/ok.txt && touch /etc/hostname-new && sync && echo 3 > /proc/sys/vm/drop_caches && cat /root/ok.txt');
  assert.equal(ok.exitCode, 0);
  assert.match(ok.output, /still-writable/);

  assert.ok(refusals.some((r) => r.labels.includes('/etc/profile data')), 'the attempt on /etc/profile was logged');
  assert.ok(refusals.some((r) => r.labels.includes('/bin/busybox data')), 'the attempt on busybox blocks was logged');
  assert.ok(refusals.every((r) => r.labels.every((l) => l.startsWith('/etc/profile') || l.startsWith('/bin/busybox'))));

  const powerdown = vm.qmp.waitForEvent('POWERDOWN', 10_000);
  await vm.powerdown();
  await powerdown;
  await vm.waitForExit(90_000);
  await launch.stop();

  assert.equal(sha256(await readGuestFile(disk.path, '/etc/profile')), before.profile, 'the protected file is unchanged on disk');
  assert.equal(sha256(await readGuestFile(disk.path, '/bin/busybox')), before.busybox, 'busybox is unchanged on disk');
  assert.equal((await readGuestFile(disk.path, '/root/ok.txt')).toString(), 'still-writable\n');
});
