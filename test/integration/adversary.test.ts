/**
 * Issue 3, part 9: the adversary suite. A malicious management plane (src/mgmt/adversary: a man in
 * the middle in front of the honest management plane, plus what its storage administrator can do to
 * the files) attacks a tenant on one local cloud. Every attack must fail AND be detected with its
 * specific error: a refusal code or identity-proof error on the tenant side, an alert in the
 * monitor's log naming the VM or the sector. Three boots in all: the tenant's VM, the administrator's
 * decoy, and the tenant's relaunch after the storage was tampered with.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { fetchCaCertificate } from '../../src/authority/http-client.ts';
import { startLocalCloud, type LocalCloud } from '../../src/cli/demo/local-cloud.ts';
import { openImage } from '../../src/client/image-import.ts';
import { sealImage } from '../../src/client/image-seal.ts';
import { buildSidecarForImage, sidecarPathFor } from '../../src/client/integrity-sidecar-writer.ts';
import { MgmtClient, MgmtError } from '../../src/client/mgmt-client.ts';
import { IdentityProofError, sealLaunchBundle, sha256File, verifyIdentityProof } from '../../src/client/sealed-launch.ts';
import { createTenantState, loadTenantState, updateTenantState, verifyHostForTenant } from '../../src/client/tenant-state.ts';
import { sendVmCommand } from '../../src/client/vm-command.ts';
import { launchVm } from '../../src/client/vm-launch.ts';
import type { Refusal } from '../../src/formats/protocol/command.ts';
import { hostResponseSchema, launchResponseSchema } from '../../src/formats/protocol/monitor-api.ts';
import { buildGuest, type GuestBuild } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER, INITRAMFS_FAILURE_MARKER } from '../../src/guest/contract.ts';
import { FS_BLOCK_BYTES, PARTITION_OFFSET, partitionSpec } from '../../src/guest/disk-image.ts';
import { answerLaunchWith, overwriteBootFileBeforeLaunch, substituteBootFile, swapDiskBeforeLaunch } from '../../src/mgmt/adversary/launch-attacks.ts';
import { MitmProxy } from '../../src/mgmt/adversary/mitm-proxy.ts';
import { findEntries, probeAsUser } from '../../src/mgmt/adversary/privilege-probe.ts';
import { copySector, findBytes, flipBit, readSector, replaceFile, rollBackSector, STORED_SECTOR_BYTES } from '../../src/mgmt/adversary/storage-tamper.ts';
import { storedPath } from '../../src/mgmt/server.ts';
import type { Alert } from '../../src/monitor/state/alerts.ts';
import { defaultRunDirBase } from '../../src/monitor/vm/run-dir.ts';

const FAST_KDF = { pbkdf: 'pbkdf2' as const, kdfCost: { iterations: 1000 } };
const NOBODY = { uid: 65534, gid: 65534 };
const BOOT_TIMEOUT_MS = 240_000;
const exec = promisify(execFile);

/** Files the test adds to the tenant's disk before sealing: their first payload sectors are attack targets. */
const ADV_FILES = ['f1', 'f2', 'f3', 'f4', 'f5'] as const;
type AdvName = (typeof ADV_FILES)[number];
interface AdvFile {
  data: Buffer;
  /** Payload sector of the file's first block (the fs uses 4096-byte blocks, like the image's sectors). */
  sector: number;
}

/** Copies the guest disk and adds /adv/f1..f5 (64 KiB of random bytes each) with debugfs. */
async function tenantDisk(guest: GuestBuild, dir: string): Promise<{ disk: string; files: Record<AdvName, AdvFile> }> {
  assert.equal(FS_BLOCK_BYTES, STORED_SECTOR_BYTES);
  const disk = path.join(dir, 'tenant.raw');
  await copyFile(guest.disk, disk);
  const cmds = ['mkdir adv'];
  const data = {} as Record<AdvName, Buffer>;
  for (const f of ADV_FILES) {
    data[f] = randomBytes(64 * 1024);
    await writeFile(path.join(dir, f), data[f]);
    cmds.push(`write ${path.join(dir, f)} adv/${f}`);
  }
  await writeFile(path.join(dir, 'debugfs.cmds'), cmds.join('\n') + '\n');
  await exec('debugfs', ['-w', '-f', path.join(dir, 'debugfs.cmds'), partitionSpec(disk)], { timeout: 60_000 });
  const files = {} as Record<AdvName, AdvFile>;
  for (const f of ADV_FILES) {
    const { stdout } = await exec('debugfs', ['-R', `blocks /adv/${f}`, partitionSpec(disk)], { timeout: 60_000 });
    const blocks = stdout.trim().split(/\s+/).map(Number);
    assert.ok(blocks.length === 16 && blocks.every(Number.isInteger), `blocks of /adv/${f}: ${stdout}`);
    files[f] = { data: data[f], sector: PARTITION_OFFSET / FS_BLOCK_BYTES + blocks[0]! };
  }
  return { disk, files };
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

function refusedWith(code: Refusal) {
  return (e: unknown) => {
    assert.ok(e instanceof MgmtError, `expected a MgmtError, got ${String(e)}`);
    assert.equal(e.refusal, code, e.message);
    return true;
  };
}

/** A disk refused as a whole: the alerts name every sector and say the sidecar does not verify against the trusted root. */
function assertWholeDiskTamper(alerts: Alert[], what: string): void {
  const tamper = alerts.filter((a) => a.kind === 'TAMPER');
  assert.ok(tamper.length >= 1, `${what}: no TAMPER alert`);
  assert.ok(
    tamper.some((a) => /sectors 0\.\.\d+: the sidecar does not verify against the trusted root/.test(a.detail)),
    `${what}: ${tamper.map((a) => a.detail).join(' | ')}`,
  );
}

test('a malicious management plane: every attack fails and is detected', { timeout: 600_000 }, async (t) => {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-adv-'));
  const parts: { cloud?: LocalCloud; proxy?: MitmProxy } = {};
  t.after(async () => {
    await parts.proxy?.close();
    await parts.cloud?.close();
    await rm(base, { recursive: true, force: true });
  });
  const cloud = (parts.cloud = await startLocalCloud({ baseDir: path.join(base, 'cloud'), memoryMiB: 256 }));
  const proxy = (parts.proxy = await MitmProxy.start(cloud.mgmtUrl));
  const storage = cloud.storageDir;
  const guest = await buildGuest();
  const boot = { kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline };
  const alertsAfter = (id: number): Alert[] => cloud.monitor.alerts.list(id);
  const lastAlertId = (): number => cloud.monitor.alerts.list(0, 1_000_000).at(-1)?.id ?? 0;

  // Three parties with their own keys: the tenant, another tenant, and the administrator (a tenant of its own cloud).
  const newTenant = async (name: string) => {
    const dir = path.join(base, name);
    await createTenantState(dir, { authorityUrl: cloud.authorityUrl, caCertificatePem: await fetchCaCertificate(cloud.authorityUrl) });
    return dir;
  };
  const tenant = cloud.tenantDir;
  const [other, admin] = await Promise.all([newTenant('other-tenant'), newTenant('admin-tenant')]);
  const pass = { tenant: Buffer.from('tenant pass'), other: Buffer.from('other pass'), admin: Buffer.from('admin pass') };
  const { disk: tenantRaw, files } = await tenantDisk(guest, base);
  const img = { tenant: path.join(base, 'web.img'), other: path.join(base, 'other.img'), admin: path.join(base, 'admin.img') };
  await Promise.all([
    sealImage({ input: tenantRaw, output: img.tenant, passphrase: pass.tenant, ...FAST_KDF }),
    sealImage({ input: guest.disk, output: img.other, passphrase: pass.other, ...FAST_KDF }),
    sealImage({ input: guest.disk, output: img.admin, passphrase: pass.admin, ...FAST_KDF }),
  ]);
  const sealedWeb = await openImage({ path: img.tenant, passphrase: pass.tenant });
  const po = sealedWeb.payloadOffset;

  // The tenant launches through the man in the middle, which passes this one through and records it.
  const web = await launchVm({ tenantDir: tenant, mgmtUrl: proxy.url, name: 'web', imagePath: img.tenant, passphrase: pass.tenant, ...boot });
  const webReply = proxy.launches.at(-1)!.reply;
  assert.equal((webReply.body as { vmId: string }).vmId, web.vmId);
  const webImage = storedPath(storage, 'image', 'web');
  const webSidecar = storedPath(storage, 'sidecar', 'web');
  // The administrator launches a decoy of its own, also through the proxy so it has the reply.
  const decoy = await launchVm({ tenantDir: admin, mgmtUrl: proxy.url, name: 'decoy', imagePath: img.admin, passphrase: pass.admin, ...boot });
  const decoyReply = proxy.launches.at(-1)!.reply;
  await cloud.monitor.console(web.vmId).waitFor(GUEST_READY_MARKER, BOOT_TIMEOUT_MS);
  let loadedVmId = web.vmId;
  const webConsole = () => cloud.monitor.console(loadedVmId);

  await t.test('storage holds only ciphertext', async () => {
    const plain = await readFile(tenantRaw);
    const superblock = plain.subarray(PARTITION_OFFSET + 1024, PARTITION_OFFSET + 1024 + 96);
    const known = files.f5.data.subarray(0, 64);
    // The oracle: both needles are in the plaintext disk the tenant sealed.
    assert.notDeepEqual(await findBytes(tenantRaw, superblock), []);
    assert.notDeepEqual(await findBytes(tenantRaw, known), []);
    assert.deepEqual(await findBytes(webImage, superblock), []);
    assert.deepEqual(await findBytes(webImage, known), []);
  });

  await t.test('the guest reads its files; it rewrites f3 in place', async () => {
    const r = await runInGuest(webConsole(), 'md5sum /adv/f5');
    assert.equal(r.exitCode, 0, r.output);
    assert.match(r.output, new RegExp(md5(files.f5.data)));
    const w = await runInGuest(webConsole(), 'dd if=/dev/urandom of=/adv/f3 bs=4096 count=16 conv=notrunc 2>/dev/null && sync', 60_000);
    assert.equal(w.exitCode, 0, w.output);
  });

  await t.test('1. redirect a command to the administrator\'s decoy: REDIRECT', async () => {
    const since = lastAlertId();
    proxy.policy = { commandTarget: () => decoy.vmId };
    await assert.rejects(sendVmCommand(tenant, 'web', 'pause'), refusedWith('REDIRECT'));
    proxy.policy = {};
    assert.equal(proxy.commands.at(-1)!.sentTo, decoy.vmId);
    // Neither VM was paused.
    assert.equal((await sendVmCommand(tenant, 'web', 'status')).state, 'running');
    assert.equal((await sendVmCommand(admin, 'decoy', 'status')).state, 'running');
    const a = alertsAfter(since).filter((x) => x.kind === 'REDIRECT');
    assert.equal(a.length, 1);
    assert.equal(a[0]!.vmId, decoy.vmId);
  });

  await t.test('2. replay an old command: REPLAY', async () => {
    const since = lastAlertId();
    const captured = proxy.commands.filter((c) => c.vmId === web.vmId && c.reply.status === 200).at(-1);
    assert.ok(captured);
    await assert.rejects(new MgmtClient(cloud.mgmtUrl).command(web.vmId, captured.command), refusedWith('REPLAY'));
    const a = alertsAfter(since).filter((x) => x.kind === 'REPLAY');
    assert.equal(a.length, 1);
    assert.equal(a[0]!.vmId, web.vmId);
  });

  await t.test('3. replay an old identity proof: the tenant rejects it', async () => {
    proxy.policy = { launch: answerLaunchWith(webReply) };
    await assert.rejects(
      launchVm({ tenantDir: tenant, mgmtUrl: proxy.url, name: 'web2', imagePath: img.tenant, passphrase: pass.tenant, ...boot }),
      (e: unknown) => e instanceof IdentityProofError && /replayed proof/.test(e.message),
    );
    proxy.policy = {};
    assert.equal((await loadTenantState(tenant)).vms['web2'], undefined);
  });

  await t.test('4. answer the tenant\'s launch with the administrator\'s own VM: the tenant rejects it', async () => {
    proxy.policy = { launch: answerLaunchWith(decoyReply) };
    await assert.rejects(
      launchVm({ tenantDir: tenant, mgmtUrl: proxy.url, name: 'web3', imagePath: img.tenant, passphrase: pass.tenant, ...boot }),
      (e: unknown) => e instanceof IdentityProofError && /does not open with this VM's key/.test(e.message),
    );
    proxy.policy = {};
    assert.equal((await loadTenantState(tenant)).vms['web3'], undefined);
  });

  await t.test('5. swap the disk for the administrator\'s own or another tenant\'s: TAMPER', async () => {
    for (const [name, swapIn] of [['o-swap-own', img.admin], ['o-swap-tenant', img.tenant]] as const) {
      const since = lastAlertId();
      proxy.policy = { launch: swapDiskBeforeLaunch(storage, { image: swapIn, sidecar: sidecarPathFor(swapIn) }) };
      await assert.rejects(launchVm({ tenantDir: other, mgmtUrl: proxy.url, name, imagePath: img.other, passphrase: pass.other, ...boot }), refusedWith('TAMPER'));
      proxy.policy = {};
      assert.equal((await loadTenantState(other)).vms[name], undefined);
      assertWholeDiskTamper(alertsAfter(since), name);
    }
  });

  await t.test('5b. swap the image but keep the tenant\'s sidecar: the launch proceeds, the first read fails, TAMPER names sector 0', async () => {
    const since = lastAlertId();
    proxy.policy = { launch: swapDiskBeforeLaunch(storage, { image: img.admin }) };
    const vm = await launchVm({ tenantDir: other, mgmtUrl: proxy.url, name: 'o-swap-image', imagePath: img.other, passphrase: pass.other, ...boot });
    proxy.policy = {};
    try {
      const deadline = Date.now() + BOOT_TIMEOUT_MS;
      const sector0 = () => alertsAfter(since).filter((a) => a.kind === 'TAMPER' && a.vmId === vm.vmId && a.detail.includes('sectors 0..0:'));
      while (sector0().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
      assert.ok(sector0().length >= 1, `no TAMPER alert for sector 0: ${alertsAfter(since).map((a) => a.detail).join(' | ')}`);
      // Nothing of the swapped disk was served: the guest finds no root partition and gives up.
      const out = await cloud.monitor.console(vm.vmId).waitFor(INITRAMFS_FAILURE_MARKER, BOOT_TIMEOUT_MS);
      assert.doesNotMatch(out, new RegExp(GUEST_READY_MARKER));
    } finally {
      await sendVmCommand(other, 'o-swap-image', 'poweroff');
    }
  });

  await t.test('7. hand over a different kernel or initrd: BAD_KERNEL', async () => {
    const evilKernel = path.join(base, 'evil-kernel');
    await writeFile(evilKernel, Buffer.concat([await readFile(guest.kernel), Buffer.from('x')]));
    await copyFile(evilKernel, storedPath(storage, 'kernel', 'evil-k'));
    const evilInitrd = path.join(base, 'evil-initrd');
    await writeFile(evilInitrd, Buffer.concat([await readFile(guest.initrd), Buffer.from('x')]));
    const policies = [
      ['o-kernel', substituteBootFile('kernel', 'evil-k'), /kernel/],
      ['o-initrd', overwriteBootFileBeforeLaunch(storage, 'initrd', evilInitrd), /initrd/],
    ] as const;
    for (const [name, policy, what] of policies) {
      const since = lastAlertId();
      proxy.policy = { launch: policy };
      await assert.rejects(launchVm({ tenantDir: other, mgmtUrl: proxy.url, name, imagePath: img.other, passphrase: pass.other, ...boot }), refusedWith('BAD_KERNEL'));
      proxy.policy = {};
      const a = alertsAfter(since).filter((x) => x.kind === 'BAD_KERNEL');
      assert.equal(a.length, 1, name);
      assert.match(a[0]!.detail, what);
    }
  });

  await t.test('8. the monitor\'s guest memory and NBD sockets are closed to another user', async () => {
    const runBase = defaultRunDirBase();
    const rams = await findEntries(runBase, (n) => n === 'guest.ram');
    const sockets = await findEntries(runBase, (n) => n.endsWith('.sock'));
    assert.ok(rams.length >= 2, `guest RAM files: ${rams.join(', ')}`);
    assert.ok(sockets.some((s) => path.basename(s) === 'disk.sock'), `sockets: ${sockets.join(', ')}`);
    const results = await probeAsUser(NOBODY, { files: rams, sockets });
    assert.equal(results.length, rams.length + sockets.length);
    for (const r of results) assert.equal(r.outcome, 'EACCES', `${r.kind} ${r.target}`);
  });

  // The tenant's relaunch from what is stored, with a fresh bundle carrying the root from sealing time.
  const sealedRoot = await buildSidecarForImage(img.tenant, sealedWeb.volumeKey, po, { sidecarPath: path.join(base, 'web.sealed.integrity'), overwrite: true });
  const relaunch = async (): Promise<string> => {
    const mgmt = new MgmtClient(cloud.mgmtUrl);
    const host = await verifyHostForTenant(tenant, hostResponseSchema.parse(await mgmt.getHost()).certificate);
    const [kernelSha256, initrdSha256] = await Promise.all([sha256File(guest.kernel), sha256File(guest.initrd)]);
    const names = { kernel: `k-${kernelSha256.slice(0, 32)}`, initrd: `i-${initrdSha256.slice(0, 32)}` };
    await mgmt.upload('kernel', names.kernel, guest.kernel);
    await mgmt.upload('initrd', names.initrd, guest.initrd);
    const { sealed, launchNonce } = await sealLaunchBundle({
      hostId: host.hostId,
      hostPublicKey: host.hpkePublicKey,
      name: 'web',
      volumeKey: sealedWeb.volumeKey,
      kernelSha256,
      initrdSha256,
      cmdline: guest.cmdline,
      disk: { payloadOffset: po, sectorSize: 4096, sectors: sealedRoot.sectors, integrityRoot: sealedRoot.root.toString('hex') },
      policy: { idsMeasurements: [] },
    });
    const reply = launchResponseSchema.parse(await mgmt.launch({ bundle: sealed.toString('base64'), image: 'web', ...names }));
    const vmId = verifyIdentityProof(sealedWeb.volumeKey, Buffer.from(reply.identityProof, 'base64'), { launchNonce, hostId: host.hostId });
    assert.equal(vmId, reply.vmId);
    await updateTenantState(tenant, (s) => {
      s.vms['web'] = { ...s.vms['web']!, vmId, launchedAt: new Date().toISOString(), commandCounter: 0 };
    });
    return vmId;
  };

  await t.test('6a. roll back the whole image and sidecar between runs: TAMPER, the monitor\'s root wins over the bundle\'s', async () => {
    assert.equal((await sendVmCommand(tenant, 'web', 'poweroff')).state, 'shutdown');
    // The guest's rewrite of f3 reached storage: the sealed copy is an older version.
    assert.notDeepEqual(await readSector(webImage, po, files.f3.sector), await readSector(img.tenant, po, files.f3.sector));
    const saved = { image: path.join(base, 'saved.img'), sidecar: path.join(base, 'saved.integrity') };
    await copyFile(webImage, saved.image);
    await copyFile(webSidecar, saved.sidecar);
    const since = lastAlertId();
    await replaceFile(webImage, img.tenant);
    await replaceFile(webSidecar, sealedRoot.sidecarPath);
    try {
      await assert.rejects(relaunch(), refusedWith('TAMPER'));
      assertWholeDiskTamper(alertsAfter(since), 'rollback');
    } finally {
      await replaceFile(webImage, saved.image);
      await replaceFile(webSidecar, saved.sidecar);
    }
  });

  await t.test('6b. flip, move and roll back sectors between runs, flip one during the run: EIO in the guest, TAMPER names each sector', async () => {
    await flipBit(webImage, po, files.f1.sector, 77);
    await copySector(webImage, po, files.f2.sector + 1, files.f2.sector);
    await rollBackSector(webImage, img.tenant, po, files.f3.sector);
    const since = lastAlertId();
    loadedVmId = await relaunch();
    await cloud.monitor.console(loadedVmId).waitFor(GUEST_READY_MARKER, BOOT_TIMEOUT_MS);
    // The disk otherwise works: an untouched file reads back exactly.
    const ok = await runInGuest(webConsole(), 'md5sum /adv/f5');
    assert.equal(ok.exitCode, 0, ok.output);
    assert.match(ok.output, new RegExp(md5(files.f5.data)));

    await flipBit(webImage, po, files.f4.sector, 5); // under the running VM
    for (const f of ['f1', 'f2', 'f3', 'f4'] as const) {
      const r = await runInGuest(webConsole(), `cat /adv/${f} > /dev/null`, 60_000);
      assert.notEqual(r.exitCode, 0, `${f} read without error: ${r.output}`);
      assert.match(r.output, /Input\/output error/, f); // strerror(EIO)
      const s = files[f].sector;
      const named = alertsAfter(since).filter((a) => a.kind === 'TAMPER' && a.vmId === loadedVmId && a.detail.includes(`sectors ${s}..${s}:`));
      assert.ok(named.length >= 1, `no TAMPER alert names sector ${s} (${f}): ${alertsAfter(since).map((a) => a.detail).join(' | ')}`);
    }
    assert.equal((await sendVmCommand(tenant, 'web', 'poweroff')).state, 'shutdown');
  });
});
