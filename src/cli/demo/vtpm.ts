/**
 * The vTPM part of `vmseal demo` (seed 002): a sealed VM boots with its own vTPM behind the monitor's proxy.
 * The monitor measured its kernel, initrd and cmdline into PCRs 9 and 8 before the firmware's Startup was
 * answered; the tenant fetches the PCRs and the launch event log with the sealed tpm-pcrs command, replays
 * the log, and the guest's own `tpm2_pcrread` shows the same values. The guest then defines and writes an
 * NV index in the managed range; a second VM of the same tenant tries to read it with ordinary tpm2-tools
 * and gets TPM errors: the index belongs to the first VM's token and there is no grant. The tenant then
 * peers the two VMs (sealed tpm-peer through the management plane), the first guest shares the index
 * itself (vmseal-tpm-grant), the second reads it with stock tpm2_nvread, and loses it again when the first
 * guest revokes. Each line of the summary is a checked fact.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sealImage } from '../../client/image-seal.ts';
import { pcrRows } from '../../client/tpm-pcrs.ts';
import { sendTpmCommand, sendVmCommand } from '../../client/vm-command.ts';
import { launchVm } from '../../client/vm-launch.ts';
import { EV, parseEventLog } from '../../formats/tcg-eventlog.ts';
import { TPM_ALG, nvReadCommand } from '../../formats/tpm2/index.ts';
import type { GuestBuild } from '../../guest/build.ts';
import { runInGuest, type GuestConsole } from '../../guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../guest/contract.ts';
import { startLocalCloud, type LocalCloud } from './local-cloud.ts';

export interface VtpmDemoOptions {
  guest: GuestBuild;
  accel: 'tcg' | 'kvm' | 'auto';
  log: (msg: string) => void;
}

const BOOT_TIMEOUT_MS = 240_000;
const GUEST_CMD_TIMEOUT_MS = 60_000;
/** In the managed range (vtpm/nv-policy.ts), so the proxy binds it to the VM that defines it. */
const INDEX = 0x01800042;
const IDX = `0x${INDEX.toString(16)}`;

/** The TPM_RC values this section can meet, by the names Part 2 gives them. */
const RC_NAMES: Record<number, string> = {
  0x149: 'TPM_RC_NV_AUTHORIZATION',
  0x148: 'TPM_RC_NV_LOCKED',
  0x18b: 'TPM_RC_HANDLE (handle 1): the index looks absent',
  0x910: 'TPM_RC_REFERENCE_S0',
};
const rcName = (rc: number) => `0x${rc.toString(16)} ${RC_NAMES[rc] ?? ''}`.trim();

const evName = (type: number) => Object.entries(EV).find(([, v]) => v === type)?.[0] ?? `0x${type.toString(16)}`;

/** Each byte as a printf octal escape, for busybox's printf. */
const octal = (b: Buffer) => [...b].map((x) => `\\${x.toString(8).padStart(3, '0')}`).join('');

async function sh(c: GuestConsole, cmd: string): Promise<string> {
  const r = await runInGuest(c, cmd, GUEST_CMD_TIMEOUT_MS);
  if (r.exitCode !== 0) throw new Error(`guest: ${cmd} failed (${r.exitCode}):\n${r.output}`);
  return r.output;
}

/** Runs `cmd`, which must fail; returns the first TPM response code tpm2-tools printed. */
async function refused(c: GuestConsole, cmd: string): Promise<number> {
  const r = await runInGuest(c, cmd, GUEST_CMD_TIMEOUT_MS);
  if (r.exitCode === 0) throw new Error(`guest: ${cmd} succeeded but must be refused:\n${r.output}`);
  const m = /\((0x[0-9a-f]+)\)/i.exec(r.output) ?? /\b(0x[0-9a-f]{3,8})\b/i.exec(r.output);
  if (!m) throw new Error(`guest: ${cmd} failed without a TPM response code:\n${r.output}`);
  return Number(m[1]);
}

/** A sealed copy of the demo disk under its own volume key (so its own vTPM), launched and booted. */
async function launchTpmVm(cloud: LocalCloud, base: string, guest: GuestBuild, name: string, log: (m: string) => void): Promise<{ vmId: string; console: GuestConsole }> {
  const passphrase = randomBytes(16);
  const image = path.join(base, `${name}.img`);
  log(`sealing a disk for ${name} and launching it with a vTPM`);
  // The keyslot's KDF cost is not what this section shows.
  await sealImage({ input: guest.disk, output: image, passphrase, pbkdf: 'pbkdf2', kdfCost: { iterations: 10_000 } });
  const vm = await launchVm({ tenantDir: cloud.tenantDir, mgmtUrl: cloud.mgmtUrl, name, imagePath: image, passphrase, kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, onProgress: (m) => log(m) });
  const console = cloud.monitor.console(vm.vmId);
  await console.waitFor(GUEST_READY_MARKER, BOOT_TIMEOUT_MS);
  await sh(console, 'dmesg -n 1'); // kernel messages would interleave with command output
  return { vmId: vm.vmId, console };
}

export async function runVtpmDemo(opts: VtpmDemoOptions): Promise<string[]> {
  const { guest, log } = opts;
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-demo-vtpm-'));
  const lines: string[] = [];
  log('vTPM: starting a local cloud whose monitor gives every VM a vTPM with NV access control');
  const cloud = await startLocalCloud({ baseDir: base, accel: opts.accel, vtpm: true });
  try {
    const t0 = Date.now();
    const a = await launchTpmVm(cloud, base, guest, 'tpm-a', log);

    // The measured launch: the monitor's log, its replay, the vTPM's PCRs (sealed tpm-pcrs) and the guest's view.
    const result = await sendTpmCommand(cloud.tenantDir, 'tpm-a', 'tpm-pcrs');
    if (!result.ok || !result.tpm) throw new Error(`tpm-pcrs failed: ${result.error ?? 'no PCRs in the result'}`);
    const events = parseEventLog(Buffer.from(result.tpm.eventLog, 'base64')).events.filter((e) => e.eventType !== EV.NO_ACTION);
    for (const e of events) {
      const text = e.event.toString('latin1').replace(/\0+$/, '');
      lines.push(`event log PCR ${e.pcrIndex} ${evName(e.eventType)} sha256 ${e.digests.get(TPM_ALG.SHA256)?.toString('hex').slice(0, 16)}…  "${text}"`);
    }
    const guestOut = await sh(a.console, 'tpm2_pcrread sha256:8,9');
    const inGuest = new Map([...guestOut.matchAll(/^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]{64})\s*$/gm)].map((m) => [Number(m[1]), m[2]!.toLowerCase()]));
    const rows = pcrRows(result.tpm);
    for (const pcr of [8, 9]) {
      const row = rows[pcr];
      const seen = inGuest.get(pcr);
      if (!row || row.replay === undefined || row.replay !== row.tpm || seen !== row.tpm) {
        throw new Error(`PCR ${pcr}: vTPM ${row?.tpm}, log replay ${row?.replay}, guest tpm2_pcrread ${seen}`);
      }
      lines.push(`PCR ${pcr}     log replay = vTPM (sealed tpm-pcrs) = guest's tpm2_pcrread: ${row.tpm.slice(0, 32)}…`);
    }

    // A's guest makes an NV index; the proxy binds it to A's vTPM (a token under the monitor's manager key).
    const value = `vmseal-demo-${randomBytes(6).toString('hex')}`;
    await sh(a.console, `tpm2_nvdefine ${IDX} -C o -s ${value.length} -a "ownerread|ownerwrite|authread|authwrite|no_da"`);
    await sh(a.console, `printf %s ${value} > /tmp/nv.in && tpm2_nvwrite ${IDX} -C o -i /tmp/nv.in`);
    const back = (await sh(a.console, `tpm2_nvread ${IDX} -s ${value.length} -o /tmp/nv.out && cat /tmp/nv.out`)).trim().split('\n').pop();
    if (back !== value) throw new Error(`A reads back ${JSON.stringify(back)}, not ${value}`);
    lines.push(`NV        VM A defined ${IDX} (managed range) and wrote "${value}" with tpm2_nvdefine/tpm2_nvwrite`);

    // B, the same tenant's other VM, without a grant.
    const b = await launchTpmVm(cloud, base, guest, 'tpm-b', log);
    const readPublic = await refused(b.console, `tpm2_nvreadpublic ${IDX}`);
    const nvread = await refused(b.console, `tpm2_nvread ${IDX} -C o -s ${value.length}`);
    // The plain NV_Read a TSS sends (index auth, password session) written to /dev/tpm0 as raw bytes.
    const raw = (await sh(b.console, `printf '${octal(nvReadCommand(INDEX, value.length))}' > /tmp/rd && exec 3<>/dev/tpm0 && cat /tmp/rd >&3 && dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1; exec 3<&-`)).replace(/\s+/g, '');
    const rawRc = raw.length >= 20 ? parseInt(raw.slice(12, 20), 16) : NaN;
    if (rawRc !== 0x149) throw new Error(`B's raw NV_Read of A's index answered ${raw}, not TPM_RC_NV_AUTHORIZATION`);
    lines.push(`refused   VM B (same tenant, no grant): tpm2_nvreadpublic ${IDX} -> ${rcName(readPublic)}; tpm2_nvread -> ${rcName(nvread)}`);
    lines.push(`refused   VM B's raw TPM2_NV_Read of ${IDX} on /dev/tpm0 -> ${rcName(rawRc)}: nothing of A's index came back`);

    // The tenant lets A's guest share with B; A's guest shares the index itself; B reads it with stock tools.
    const peer = await sendTpmCommand(cloud.tenantDir, 'tpm-a', 'tpm-peer', { other: 'tpm-b' });
    if (!peer.ok) throw new Error(`tpm-peer failed: ${peer.error}`);
    await sh(a.console, `vmseal-tpm-grant share ${IDX} ${b.vmId}`);
    const nvreadB = `rm -f /tmp/nv.out; tpm2_nvread ${IDX} -s ${value.length} -o /tmp/nv.out && cat /tmp/nv.out`;
    const shared = (await sh(b.console, nvreadB)).trim().split('\n').pop();
    if (shared !== value) throw new Error(`B reads ${JSON.stringify(shared)} after A's guest shared ${IDX}, not ${value}`);
    lines.push(`shared    tenant: vm tpm peer tpm-a --with tpm-b (sealed); A's guest: vmseal-tpm-grant share ${IDX}; B's tpm2_nvread -> "${value}"`);
    await sh(a.console, `vmseal-tpm-grant revoke ${IDX} ${b.vmId}`);
    const afterRevoke = await refused(b.console, `tpm2_nvread ${IDX} -s ${value.length}`);
    lines.push(`revoked   A's guest: vmseal-tpm-grant revoke; B's next tpm2_nvread -> ${rcName(afterRevoke)}`);
    await sendVmCommand(cloud.tenantDir, 'tpm-a', 'poweroff');
    await sendVmCommand(cloud.tenantDir, 'tpm-b', 'poweroff');
    lines.push(`time      two sealed launches with vTPMs, the checks above: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await cloud.close();
  }
  return lines;
}
