/**
 * Seed 001's future work, "many VMs": eight protected VMs run at once on this 2-core machine, each
 * from its own sealed image, with its own key and its own VM id, each managed by sealed commands
 * that open only for it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sealImage } from '../../src/client/image-seal.ts';
import { MgmtClient, MgmtError } from '../../src/client/mgmt-client.ts';
import { sealCommand } from '../../src/client/sealed-command.ts';
import { loadTenantState } from '../../src/client/tenant-state.ts';
import { sendVmCommand } from '../../src/client/vm-command.ts';
import { launchVm } from '../../src/client/vm-launch.ts';
import { startLocalCloud } from '../../src/cli/demo/local-cloud.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';

const VMS = 8;

test(`${VMS} sealed VMs run at once, each with its own key and id`, { timeout: 1_200_000 }, async (t) => {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-many-'));
  const cloud = await startLocalCloud({ baseDir: path.join(base, 'cloud'), memoryMiB: 256 });
  t.after(() => cloud.close());
  const guest = await buildGuest();

  const names = Array.from({ length: VMS }, (_, i) => `vm-${i}`);
  for (const name of names) {
    const passphrase = Buffer.from(`passphrase of ${name}`);
    const image = path.join(base, `${name}.img`);
    await sealImage({ input: guest.disk, output: image, passphrase, pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
    await launchVm({ tenantDir: cloud.tenantDir, mgmtUrl: cloud.mgmtUrl, name, imagePath: image, passphrase, kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline });
  }
  const vms = (await loadTenantState(cloud.tenantDir)).vms;
  const ids = names.map((n) => vms[n]!.vmId);
  assert.equal(new Set(ids).size, VMS, 'every VM has its own id');
  assert.equal(new Set(names.map((n) => vms[n]!.commandKey)).size, VMS, 'every VM has its own command key');

  await Promise.all(ids.map((id) => cloud.monitor.console(id).waitFor(GUEST_READY_MARKER, 900_000)));
  const running = await cloud.monitor.list();
  assert.equal(running.filter((v) => v.state === 'running').length, VMS, `all ${VMS} run at once`);
  for (const name of names) assert.equal((await sendVmCommand(cloud.tenantDir, name, 'status')).state, 'running');

  // vm-0's command, relayed to each of the others, is a redirect every time.
  const first = vms['vm-0']!;
  const mgmt = new MgmtClient(cloud.mgmtUrl);
  for (const id of ids.slice(1)) {
    const blob = sealCommand(Buffer.from(first.commandKey, 'base64'), first.vmId, 1000, 'poweroff').toString('base64');
    await assert.rejects(mgmt.command(id, blob), (e: unknown) => e instanceof MgmtError && e.refusal === 'REDIRECT');
  }
  for (const name of names) assert.equal((await sendVmCommand(cloud.tenantDir, name, 'poweroff')).state, 'shutdown');
});
