/**
 * The foundation end to end: the real Debian cloud kernel boots under TCG from a disk that only
 * vmseal's NBD server serves; QMP pause really stops it; ACPI powerdown shuts it down cleanly; what
 * the guest wrote is on the disk afterwards, checked from outside with debugfs and e2fsck.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { checkFilesystem } from '../../src/guest/disk-image.ts';
import { readGuestFile } from '../../src/guest/disk-inspect.ts';
import { GUEST_SERVICES } from '../../src/guest/rootfs.ts';
import { startTicker, TICK_PATTERN } from '../../src/guest/ticker.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { PlainLaunch } from '../../src/monitor/launch/disk-launch.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the Debian guest boots from our NBD export, pauses for real, powers down and leaves its data on disk', { timeout: 300_000 }, async (t) => {
  const guest = await buildGuest();
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const launch = await PlainLaunch.start({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, diskPath: disk.path, name: 'itest' });
  t.after(() => launch.stop());
  const { vm, nbd } = launch;

  // The guest RAM the monitor will read is a private file while the VM runs.
  const ram = await stat(vm.memoryFile);
  assert.equal(ram.mode & 0o777, 0o600);
  assert.equal(ram.size, 512 * 1024 * 1024);

  await vm.console.waitFor(GUEST_READY_MARKER, 180_000);
  assert.ok(nbd.stats.reads > 0, 'the root filesystem was read through our export');
  const cmdline = await runInGuest(vm.console, 'cat /proc/cmdline');
  assert.equal(cmdline.output.trim(), guest.cmdline);
  const ps = await runInGuest(vm.console, 'ps -o comm');
  for (const s of GUEST_SERVICES) assert.match(ps.output, new RegExp(`^${s.name}$`, 'm'), `${s.name} runs in the guest`);
  const mounts = await runInGuest(vm.console, 'cat /proc/mounts');
  assert.match(mounts.output, /^\/dev\/vda1 \/ ext4 rw/m, 'root is ext4 on the NBD-backed virtio disk');

  const ticker = await startTicker(vm.console);
  const stopped = vm.qmp.waitForEvent('STOP', 10_000);
  await vm.pause();
  await stopped;
  assert.equal((await vm.status()).status, 'paused');
  const consoleAt = vm.console.mark();
  const io = { ...nbd.stats };
  await sleep(3500); // the ticker prints and writes every second while running
  assert.equal(vm.console.mark(), consoleAt, 'no console output while paused');
  assert.deepEqual({ ...nbd.stats }, io, 'no disk requests while paused');

  const resumed = vm.qmp.waitForEvent('RESUME', 10_000);
  await vm.resume();
  await resumed;
  await vm.console.waitFor(TICK_PATTERN, 30_000, { since: consoleAt });
  await vm.console.waitFor(TICK_PATTERN, 30_000, { since: vm.console.mark() });
  assert.ok(nbd.stats.writes > io.writes, 'the resumed guest writes to its disk again');
  await ticker.stop();

  const token = randomBytes(16).toString('hex');
  const wrote = await runInGuest(vm.console, `echo ${token} > /root/itest-proof.txt && sync`);
  assert.equal(wrote.exitCode, 0);

  const powerdown = vm.qmp.waitForEvent('POWERDOWN', 10_000);
  await vm.powerdown();
  await powerdown;
  const exit = await vm.waitForExit(90_000);
  assert.deepEqual(exit, { code: 0, signal: null }, 'the guest powered off and QEMU exited cleanly');
  await launch.stop();

  assert.equal((await readGuestFile(disk.path, '/root/itest-proof.txt')).toString(), `${token}\n`);
  assert.equal((await readGuestFile(disk.path, '/root/tick')).toString().trim().length > 0, true);
  await checkFilesystem(disk.path); // throws unless e2fsck -fn is clean: the shutdown unmounted cleanly
});
