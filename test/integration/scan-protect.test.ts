/**
 * Write protection and scans through the sealed tenant path, on one real guest: the tenant launches
 * with protected paths in its sealed policy, the guest's writes to them fail (and are logged as
 * WRITE_PROTECT alerts) while other writes work, and `vm scan` against a baseline taken before the
 * guest changed anything reports exactly the added and modified files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startLocalCloud } from '../../src/cli/demo/local-cloud.ts';
import { sealImage } from '../../src/client/image-seal.ts';
import { runVmScan, sendProtectCommand } from '../../src/client/vm-command.ts';
import { launchVm } from '../../src/client/vm-launch.ts';
import { scanBaseline, scanReport } from '../../src/client/vm-scan-report.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { FileBackend } from '../../src/monitor/disk/file-backend.ts';
import { backendReader, openGuestVolume } from '../../src/monitor/measure/guest-volume.ts';

test('launch --protect: guest writes to busybox fail with an alert, others work; vm scan finds the changes', { timeout: 600_000 }, async (t) => {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-scan-protect-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  const cloud = await startLocalCloud({ baseDir: path.join(base, 'cloud'), memoryMiB: 256 });
  t.after(() => cloud.close());
  const guest = await buildGuest();

  // Where busybox's first data block is, read from the plain disk (the guest's dd target).
  const plain = await FileBackend.open(guest.disk, { readOnly: true });
  const vol = await openGuestVolume(backendReader(plain), plain.size);
  assert.equal(vol.kind, 'ext4');
  if (vol.kind !== 'ext4') return;
  const [run] = await vol.fs.runs(await vol.fs.lookup('/bin/busybox'));
  const busyboxBlock = (vol.offset + run!.physical * vol.fs.sb.blockSize) / 4096;
  await plain.close();

  const passphrase = Buffer.from('scan tenant\n');
  const image = path.join(base, 'vm.img');
  await sealImage({ input: guest.disk, output: image, passphrase, pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
  const { vmId } = await launchVm({
    tenantDir: cloud.tenantDir, mgmtUrl: cloud.mgmtUrl, name: 'prot', imagePath: image, passphrase,
    kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, integrity: 'none',
    protectedPaths: ['/bin/busybox'],
  });
  const con = cloud.monitor.console(vmId);
  await con.waitFor(GUEST_READY_MARKER, 240_000);
  await runInGuest(con, 'dmesg -n 1', 60_000);

  // The baseline, before the guest changes anything (paged sealed results; the whole disk).
  const before = await runVmScan(cloud.tenantDir, 'prot');
  assert.ok(before.head.pages > 1, `a full scan spans several sealed pages (${before.head.pages})`);
  const baseline = scanBaseline(before.head, before.files);
  const victim = Object.keys(baseline.files).find((p) => p.startsWith('/etc/') && p !== '/etc/profile');
  assert.ok(victim, 'an unprotected file under /etc');

  const raw = await runInGuest(con, `dd if=/dev/zero of=/dev/vda bs=4096 seek=${busyboxBlock} count=1 conv=notrunc,fsync 2>&1; echo rc=$?`, 60_000);
  assert.doesNotMatch(raw.output, /rc=0/, `dd over busybox's blocks should fail: ${raw.output}`);

  // A later `vm protect` takes effect at once.
  const prot = await sendProtectCommand(cloud.tenantDir, 'prot', '/etc/profile');
  assert.ok(prot.ok && (prot.protectedRanges ?? 0) > 0, prot.error);
  const profile = await runInGuest(con, 'dd if=/dev/zero of=/etc/profile bs=64 count=1 conv=notrunc,fsync 2>&1; echo rc=$?', 60_000);
  assert.doesNotMatch(profile.output, /rc=0/, `dd on /etc/profile should fail: ${profile.output}`);

  // Other writes work; freezing the file system checkpoints the journal, so the scan sees them at home.
  const ok = await runInGuest(con, `echo added > /root/added.txt && echo '# changed' >> ${victim} && sync && fsfreeze --freeze / && fsfreeze --unfreeze / && cat /root/added.txt`, 120_000);
  assert.equal(ok.exitCode, 0, ok.output);

  const after = await runVmScan(cloud.tenantDir, 'prot');
  const report = scanReport(after.head, after.files, baseline);
  assert.ok(report.diff!.added.includes('/root/added.txt'), JSON.stringify(report.diff));
  assert.ok(report.diff!.modified.includes(victim), JSON.stringify(report.diff));
  assert.ok(!report.diff!.modified.includes('/bin/busybox') && !report.diff!.modified.includes('/etc/profile'), JSON.stringify(report.diff));
  const scoped = await runVmScan(cloud.tenantDir, 'prot', ['/root']);
  assert.deepEqual(scanReport(scoped.head, scoped.files, baseline, ['/root']).diff, { added: ['/root/added.txt'], modified: [], removed: [] });

  const alerts = cloud.monitor.alerts.list().filter((a) => a.kind === 'WRITE_PROTECT' && a.vmId === vmId);
  assert.ok(alerts.some((a) => a.detail.includes('/bin/busybox data')), JSON.stringify(alerts));
  assert.ok(alerts.some((a) => a.detail.includes('/etc/profile')), JSON.stringify(alerts));
});
