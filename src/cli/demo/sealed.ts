/**
 * The sealed part of `vmseal demo` (seed 001 and 004): a tenant who trusts only the CA it pinned
 * seals the demo disk, launches it through an untrusted management plane, checks the monitor's
 * identity proof, manages the VM with sealed commands, and watches the management plane's redirect
 * and replay fail. Each line of the summary is a checked fact.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fetchCaCertificate } from '../../authority/http-client.ts';
import { sealImage } from '../../client/image-seal.ts';
import { MgmtClient, MgmtError } from '../../client/mgmt-client.ts';
import { sealCommand } from '../../client/sealed-command.ts';
import { createTenantState, loadTenantState, updateTenantState } from '../../client/tenant-state.ts';
import { sendVmCommand } from '../../client/vm-command.ts';
import { launchVm } from '../../client/vm-launch.ts';
import type { Refusal } from '../../formats/protocol/command.ts';
import type { GuestBuild } from '../../guest/build.ts';
import { GUEST_READY_MARKER } from '../../guest/contract.ts';
import { startLocalCloud } from './local-cloud.ts';

export interface SealedDemoOptions {
  guest: GuestBuild;
  accel: 'tcg' | 'kvm' | 'auto';
  log: (msg: string) => void;
}

const BOOT_TIMEOUT_MS = 240_000;

async function refusalOf(work: Promise<unknown>): Promise<Refusal | 'ACCEPTED'> {
  try {
    await work;
    return 'ACCEPTED';
  } catch (err) {
    if (err instanceof MgmtError && err.refusal) return err.refusal;
    throw err;
  }
}

export async function runSealedDemo(opts: SealedDemoOptions): Promise<string[]> {
  const { guest, log } = opts;
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-demo-cloud-'));
  const lines: string[] = [];
  log('starting the authority, a host monitor, the management plane and a tenant (all on this machine)');
  const cloud = await startLocalCloud({ baseDir: base, accel: opts.accel });
  try {
    const tenant = await loadTenantState(cloud.tenantDir);
    lines.push(`trust     tenant pinned the authority CA ${tenant.authority.caFingerprint.slice(0, 23)}…; host ${cloud.hostId} enrolled with a one-time token`);

    log('sealing the demo disk into a LUKS2 image (argon2id keyslot)');
    const passphrase = Buffer.from('demo tenant passphrase');
    const image = path.join(base, 'web.img');
    await sealImage({ input: guest.disk, output: image, passphrase });
    log('launching through the management plane');
    const t0 = Date.now();
    const web = await launchVm({ tenantDir: cloud.tenantDir, mgmtUrl: cloud.mgmtUrl, name: 'web', imagePath: image, passphrase, kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, onProgress: (m) => log(m) });
    const launchedAt = Date.now();
    lines.push(`launch    bundle HPKE-sealed to the certified host key; identity proof verified: VM ${web.vmId} (unlock, sidecar, upload, launch: ${((launchedAt - t0) / 1000).toFixed(1)} s)`);
    await cloud.monitor.console(web.vmId).waitFor(GUEST_READY_MARKER, BOOT_TIMEOUT_MS);
    lines.push(`boot      the guest reached its ready marker on its encrypted, integrity-checked disk ${((Date.now() - launchedAt) / 1000).toFixed(1)} s after launch`);

    const stored = await readFile(path.join(cloud.storageDir, 'images', 'web'));
    const plain = await readFile(guest.disk);
    const superblock = plain.subarray(1024 * 1024 + 1024, 1024 * 1024 + 1024 + 96);
    if (stored.indexOf(superblock) !== -1) throw new Error('the management plane stores plaintext');
    lines.push('storage   the management plane holds only LUKS2 ciphertext and the integrity sidecar');

    const states: string[] = [];
    for (const op of ['pause', 'resume', 'status'] as const) states.push(`${op} -> ${(await sendVmCommand(cloud.tenantDir, 'web', op)).state}`);
    lines.push(`commands  sealed, counted, results sealed: ${states.join(', ')}`);

    log('the management plane turns adversary: a decoy VM of its own, a redirected command, a replayed one');
    const adminTenant = path.join(base, 'admin-tenant');
    await createTenantState(adminTenant, { authorityUrl: cloud.authorityUrl, caCertificatePem: await fetchCaCertificate(cloud.authorityUrl) });
    const decoyImage = path.join(base, 'decoy.img');
    await sealImage({ input: guest.disk, output: decoyImage, passphrase: Buffer.from('admin'), pbkdf: 'pbkdf2' });
    const decoy = await launchVm({ tenantDir: adminTenant, mgmtUrl: cloud.mgmtUrl, name: 'decoy', imagePath: decoyImage, passphrase: Buffer.from('admin'), kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline });
    const rec = (await loadTenantState(cloud.tenantDir)).vms['web']!;
    const key = Buffer.from(rec.commandKey, 'base64');
    const admin = new MgmtClient(cloud.mgmtUrl);
    const redirected = await refusalOf(admin.command(decoy.vmId, sealCommand(key, rec.vmId, rec.commandCounter + 1, 'poweroff').toString('base64')));
    const blob = sealCommand(key, rec.vmId, rec.commandCounter + 2, 'status').toString('base64');
    await admin.command(rec.vmId, blob);
    const replayed = await refusalOf(admin.command(rec.vmId, blob));
    if (redirected !== 'REDIRECT' || replayed !== 'REPLAY') throw new Error(`attacks not refused as expected: redirect ${redirected}, replay ${replayed}`);
    await updateTenantState(cloud.tenantDir, (s) => {
      s.vms['web']!.commandCounter = rec.commandCounter + 2;
    });
    const alerts = cloud.monitor.alerts.list().map((a) => a.kind);
    lines.push(`attacks   tenant's poweroff redirected to the admin's decoy VM: ${redirected}; relayed command replayed: ${replayed} (monitor alerts: ${alerts.join(', ')})`);

    const down = await sendVmCommand(cloud.tenantDir, 'web', 'shutdown');
    await sendVmCommand(adminTenant, 'decoy', 'poweroff');
    lines.push(`shutdown  sealed ACPI shutdown ${down.ok ? 'accepted' : `failed: ${down.error}`}`);
  } finally {
    await cloud.close();
  }
  return lines;
}
