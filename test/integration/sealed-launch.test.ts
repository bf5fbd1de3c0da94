/**
 * Seed 001 end to end on real parties: a tenant seals the demo guest's disk, launches it through an
 * untrusted management plane onto a monitor it knows only through the CA it pinned, checks the
 * identity proof, and manages the VM with sealed commands. The management plane then acts as the
 * adversary: it launches a decoy VM of its own and redirects the tenant's command to it, and it
 * replays a command it relayed before. Both are refused, logged, and shown to the tenant by name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sealImage } from '../../src/client/image-seal.ts';
import { MgmtClient, MgmtError } from '../../src/client/mgmt-client.ts';
import { sealCommand } from '../../src/client/sealed-command.ts';
import { SealedConsole } from '../../src/client/sealed-console.ts';
import { fetchCaCertificate } from '../../src/authority/http-client.ts';
import { createTenantState, loadTenantState, updateTenantState } from '../../src/client/tenant-state.ts';
import { sendVmCommand } from '../../src/client/vm-command.ts';
import { launchVm } from '../../src/client/vm-launch.ts';
import { startLocalCloud } from '../../src/cli/demo/local-cloud.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';

const FAST_KDF = { pbkdf: 'pbkdf2' as const, kdfCost: { iterations: 1000 } };

test('sealed launch, identity proof and sealed commands through an untrusted management plane; redirect and replay refused', { timeout: 600_000 }, async (t) => {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-sealed-'));
  const cloud = await startLocalCloud({ baseDir: path.join(base, 'cloud') });
  t.after(() => cloud.close());
  const guest = await buildGuest();

  const passphrase = Buffer.from('tenant passphrase\n');
  const image = path.join(base, 'web.img');
  await sealImage({ input: guest.disk, output: image, passphrase, ...FAST_KDF });
  const launched = await launchVm({
    tenantDir: cloud.tenantDir,
    mgmtUrl: cloud.mgmtUrl,
    name: 'web',
    imagePath: image,
    passphrase,
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guest.cmdline,
  });
  assert.match(launched.vmId, /^[0-9a-f]{32}$/);
  assert.equal(launched.hostId, cloud.hostId);
  const state = await loadTenantState(cloud.tenantDir);
  assert.equal(state.vms['web']?.vmId, launched.vmId);

  // The management plane holds only ciphertext: the guest's ext4 superblock magic is nowhere in its copy.
  const stored = await readFile(path.join(cloud.storageDir, 'images', 'web'));
  const plainDisk = await readFile(guest.disk);
  const superblock = plainDisk.subarray(1024 * 1024 + 1024, 1024 * 1024 + 1024 + 96);
  assert.equal(stored.indexOf(superblock), -1);

  await cloud.monitor.console(launched.vmId).waitFor(GUEST_READY_MARKER, 240_000);
  assert.equal((await sendVmCommand(cloud.tenantDir, 'web', 'status')).state, 'running');
  assert.equal((await sendVmCommand(cloud.tenantDir, 'web', 'pause')).state, 'paused');
  assert.equal((await sendVmCommand(cloud.tenantDir, 'web', 'resume')).state, 'running');

  // The sealed console: a command typed by the tenant runs in the guest, its output comes back sealed.
  const sc = await SealedConsole.open(new MgmtClient(cloud.mgmtUrl), launched.vmId, Buffer.from(state.vms['web']!.consoleKey, 'base64'));
  await sc.write(Buffer.from('echo sealed-$((6*7))\n'));
  let seen = '';
  for (let i = 0; i < 30 && !seen.includes('sealed-42'); i++) seen += (await sc.read(2000)).toString();
  assert.match(seen, /sealed-42/);
  // The management plane cannot replay a frame of input (nor forge one): it has only the sealed blobs.
  const ctrl = new MgmtClient(cloud.mgmtUrl);
  await assert.rejects(ctrl.consoleInput(launched.vmId, sc.sessionId, Buffer.alloc(60, 7).toString('base64')), (e: unknown) => e instanceof MgmtError && e.refusal === 'TAMPER');
  await sc.write(Buffer.from('echo kept-across-runs > /root/kept.txt; sync\n'));

  // The adversary launches a decoy from its own image and key, and redirects the tenant's next command to it.
  const adversary = new MgmtClient(cloud.mgmtUrl);
  const decoyTenant = path.join(base, 'admin-tenant');
  await createTenantState(decoyTenant, { authorityUrl: cloud.authorityUrl, caCertificatePem: await fetchCaCertificate(cloud.authorityUrl) });
  const decoyImage = path.join(base, 'decoy.img');
  await sealImage({ input: guest.disk, output: decoyImage, passphrase: Buffer.from('admin'), ...FAST_KDF });
  const decoy = await launchVm({
    tenantDir: decoyTenant,
    mgmtUrl: cloud.mgmtUrl,
    name: 'decoy',
    imagePath: decoyImage,
    passphrase: Buffer.from('admin'),
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guest.cmdline,
  });
  const web = (await loadTenantState(cloud.tenantDir)).vms['web']!;
  const commandKey = Buffer.from(web.commandKey, 'base64');
  const captured = sealCommand(commandKey, web.vmId, web.commandCounter + 1, 'poweroff').toString('base64');
  await assert.rejects(adversary.command(decoy.vmId, captured), (e: unknown) => e instanceof MgmtError && e.refusal === 'REDIRECT');

  // Relayed once to the right VM (it runs), then replayed: refused.
  const pauseBlob = sealCommand(commandKey, web.vmId, web.commandCounter + 2, 'pause').toString('base64');
  await adversary.command(web.vmId, pauseBlob);
  await assert.rejects(adversary.command(web.vmId, pauseBlob), (e: unknown) => e instanceof MgmtError && e.refusal === 'REPLAY');

  const kinds = cloud.monitor.alerts.list().map((a) => a.kind);
  assert.ok(kinds.includes('REDIRECT') && kinds.includes('REPLAY'), `alerts: ${kinds.join(', ')}`);

  // The test sent two blobs on the tenant's behalf; its counter moves past them, then it shuts the VM down.
  await updateTenantState(cloud.tenantDir, (s) => {
    s.vms['web']!.commandCounter = web.commandCounter + 2;
  });
  assert.equal((await sendVmCommand(cloud.tenantDir, 'web', 'resume')).state, 'running'); // the relayed pause took effect
  const shutdown = await sendVmCommand(cloud.tenantDir, 'web', 'shutdown');
  assert.equal(shutdown.ok, true);
  let runState = '';
  for (let i = 0; i < 120 && runState !== 'shutdown'; i++) {
    runState = (await sendVmCommand(cloud.tenantDir, 'web', 'status')).state;
    if (runState !== 'shutdown') await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(runState, 'shutdown', 'the guest powered off after the ACPI shutdown');

  // Relaunch: the stored disk, with what the guest wrote, verifies against the monitor's root; a new VM id.
  await assert.rejects(launchVm({ tenantDir: cloud.tenantDir, mgmtUrl: cloud.mgmtUrl, name: 'web', imagePath: image, passphrase, kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline }), /--relaunch/);
  const again = await launchVm({ tenantDir: cloud.tenantDir, mgmtUrl: cloud.mgmtUrl, name: 'web', imagePath: image, passphrase, kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, relaunch: true });
  assert.notEqual(again.vmId, launched.vmId);
  await cloud.monitor.console(again.vmId).waitFor(GUEST_READY_MARKER, 240_000);
  const rec = (await loadTenantState(cloud.tenantDir)).vms['web']!;
  const sc2 = await SealedConsole.open(new MgmtClient(cloud.mgmtUrl), again.vmId, Buffer.from(rec.consoleKey, 'base64'));
  await sc2.write(Buffer.from('cat /root/kept.txt\n'));
  let seen2 = '';
  for (let i = 0; i < 30 && !/^kept-across-runs/m.test(seen2); i++) seen2 += (await sc2.read(2000)).toString();
  assert.match(seen2, /^kept-across-runs/m);
  assert.equal((await sendVmCommand(cloud.tenantDir, 'web', 'poweroff')).state, 'shutdown');
});
