/**
 * The XTS-only disk end to end: a tenant seals the demo guest's disk without an integrity sidecar and launches it
 * with integrity 'none' through the management plane; the monitor serves it with the XTS backend (it has no tree
 * to check), the guest boots and writes through it, and the stored image holds only ciphertext.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sealImage } from '../../src/client/image-seal.ts';
import { MgmtClient } from '../../src/client/mgmt-client.ts';
import { SealedConsole } from '../../src/client/sealed-console.ts';
import { loadTenantState } from '../../src/client/tenant-state.ts';
import { sendVmCommand } from '../../src/client/vm-command.ts';
import { launchVm } from '../../src/client/vm-launch.ts';
import { startLocalCloud } from '../../src/cli/demo/local-cloud.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';

test("an XTS-only disk (integrity 'none') boots through the management plane and takes the guest's writes", { timeout: 600_000 }, async (t) => {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-xts-launch-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  const cloud = await startLocalCloud({ baseDir: path.join(base, 'cloud') });
  t.after(() => cloud.close());
  const guest = await buildGuest();
  const passphrase = Buffer.from('xts tenant\n');
  const image = path.join(base, 'fast.img');
  await sealImage({ input: guest.disk, output: image, passphrase, pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
  const launched = await launchVm({
    tenantDir: cloud.tenantDir,
    mgmtUrl: cloud.mgmtUrl,
    name: 'fast',
    imagePath: image,
    passphrase,
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guest.cmdline,
    integrity: 'none',
  });
  // No sidecar was built next to the image, none was uploaded, and the launch named none.
  await assert.rejects(readFile(`${image}.integrity`), { code: 'ENOENT' });
  await assert.rejects(readFile(path.join(cloud.storageDir, 'sidecars', 'fast')), { code: 'ENOENT' });

  await cloud.monitor.console(launched.vmId).waitFor(GUEST_READY_MARKER, 240_000);
  const rec = (await loadTenantState(cloud.tenantDir)).vms['fast']!;
  const sc = await SealedConsole.open(new MgmtClient(cloud.mgmtUrl), launched.vmId, Buffer.from(rec.consoleKey, 'base64'));
  await sc.write(Buffer.from('echo xts-only-$((6*7)) > /root/x.txt; sync; cat /root/x.txt\n'));
  let seen = '';
  for (let i = 0; i < 30 && !/^xts-only-42/m.test(seen); i++) seen += (await sc.read(2000)).toString();
  assert.match(seen, /^xts-only-42/m);
  assert.equal((await sendVmCommand(cloud.tenantDir, 'fast', 'poweroff')).state, 'shutdown');

  // Storage holds ciphertext only: neither the ext4 superblock nor the file the guest wrote appears in it.
  const stored = await readFile(path.join(cloud.storageDir, 'images', 'fast'));
  const plainDisk = await readFile(guest.disk);
  assert.equal(stored.indexOf(plainDisk.subarray(1024 * 1024 + 1024, 1024 * 1024 + 1024 + 96)), -1);
  assert.equal(stored.indexOf('xts-only-42'), -1);
  assert.deepEqual(cloud.monitor.alerts.list().filter((a) => a.kind === 'TAMPER' || a.kind === 'BAD_KEY_OR_DISK'), []);
});
