/**
 * The IDS part of `vmseal demo` (seed 000, SGmonitor), and the world it runs in, which the
 * integration test and bench/introspect reuse: a local cloud whose authority runs the heartbeat
 * service, the kernel profile built from the guest's kernel image, an enclave configuration the
 * tenant puts in the launch policy and the authority approves for this VM, and the sealed demo
 * guest launched with that policy. The demo then lists the guest's processes through the sealed
 * channel, catches an unauthorized program, and stops the enclave to show the authority's alert.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { approveIdsMeasurement } from '../../authority/ids-approvals.ts';
import { sealImage } from '../../client/image-seal.ts';
import { launchVm } from '../../client/vm-launch.ts';
import { serializeIsf } from '../../formats/isf.ts';
import type { EnclaveConfig } from '../../formats/protocol/enclave-call.ts';
import type { HeartbeatAlert } from '../../formats/protocol/ids-heartbeat.ts';
import type { GuestBuild } from '../../guest/build.ts';
import { runInGuest, type GuestConsole } from '../../guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../guest/contract.ts';
import { GUEST_SERVICES } from '../../guest/rootfs.ts';
import { measureEnclave } from '../../ids/enclave/loader.ts';
import { fetchEnclaveConfig } from '../../ids/host/enclave-config.ts';
import { startIdsSession, type IdsSession } from '../../ids/host/sgmonitor.ts';
import { buildProfile } from '../../ids/profile/build-profile.ts';
import { startLocalCloud, type LocalCloud } from './local-cloud.ts';

const BOOT_TIMEOUT_MS = 240_000;

/**
 * What the demo guest runs: init, the root shell on ttyS0, its services and the few tools those
 * (and the demo's own commands) start, and `date`, the crontab's minutely job. Every program is
 * busybox, or the sensor daemon's script.
 */
export const DEMO_GUEST_ALLOWLIST = {
  comms: ['init', 'sh', ...GUEST_SERVICES.map((s) => s.name), 'sleep', 'logger', 'start-stop-daem', 'ps', 'cat', 'cp', 'killall', 'pidof', 'seq', 'date'],
  exes: ['/bin/busybox', '/usr/sbin/vmseal-sensord'],
};

/** Every check, each with the demo guest's settings. */
export const DEMO_CHECKS: Record<string, Record<string, unknown>> = {
  pslist: {},
  allowlist: DEMO_GUEST_ALLOWLIST,
  'hidden-process': {},
  modules: {},
  'syscall-hooks': {},
  privesc: {},
};

export interface IdsWorldOptions {
  guest: GuestBuild;
  accel: 'tcg' | 'kvm' | 'auto';
  log: (msg: string) => void;
  heartbeatMs?: number;
  checks?: Record<string, Record<string, unknown>>;
  /** Benchmark configuration (b) only: the monitor and the enclave run the channel unencrypted. */
  benchPlainIdsChannel?: boolean;
  /** Also give the VM a vTPM and run the authority's attestation verifier (src/cli/demo/attest.ts). */
  attest?: boolean;
}

export interface IdsWorld {
  cloud: LocalCloud;
  vmId: string;
  /** The guest's serial console (its root shell): how the demo plays the attacker inside the guest. */
  guestConsole: GuestConsole;
  profileText: string;
  config: EnclaveConfig;
  measurement: string;
  /** Starts the host library with this world's enclave, VM, monitor and authority. */
  startSession(): Promise<IdsSession>;
  close(): Promise<void>;
}

export async function startIdsWorld(opts: IdsWorldOptions): Promise<IdsWorld> {
  const { guest, log } = opts;
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmseal-ids-'));
  const cloud = await startLocalCloud({
    baseDir: base,
    accel: opts.accel,
    ...(opts.heartbeatMs !== undefined ? { heartbeatMs: opts.heartbeatMs } : {}),
    ...(opts.benchPlainIdsChannel === true ? { benchPlainIdsChannel: true } : {}),
    ...(opts.attest === true ? { attest: true } : {}),
  });
  try {
    log('building the kernel profile from the guest kernel image (BTF + kallsyms, no debug symbols)');
    const profileText = serializeIsf(buildProfile(await readFile(guest.kernel)));
    const config = await fetchEnclaveConfig({
      authorityUrl: new URL(cloud.authorityUrl),
      profileText,
      checks: opts.checks ?? DEMO_CHECKS,
      ...(opts.benchPlainIdsChannel === true ? { benchPlainChannel: true } : {}),
    });
    const measurement = await measureEnclave(config);

    log('sealing the demo disk and launching it with a policy that allows the IDS measurement');
    const passphrase = Buffer.from('ids demo passphrase');
    const image = path.join(base, 'ids.img');
    await sealImage({ input: guest.disk, output: image, passphrase, pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
    const vm = await launchVm({
      tenantDir: cloud.tenantDir,
      mgmtUrl: cloud.mgmtUrl,
      name: 'ids',
      imagePath: image,
      passphrase,
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: guest.cmdline,
      idsMeasurements: [measurement],
    });
    // The authority signs this measurement's registrations for this VM on this host only.
    await approveIdsMeasurement(cloud.authorityPaths, measurement, { vmId: vm.vmId, hostId: cloud.hostId, note: 'vmseal demo IDS' });
    const guestConsole = cloud.monitor.console(vm.vmId);
    await guestConsole.waitFor(GUEST_READY_MARKER, BOOT_TIMEOUT_MS);
    return {
      cloud,
      vmId: vm.vmId,
      guestConsole,
      profileText,
      config,
      measurement,
      startSession: () =>
        startIdsSession({
          vmId: vm.vmId,
          monitorSocket: cloud.monitorSocket,
          authorityUrl: new URL(cloud.authorityUrl),
          config,
          profile: profileText,
          onStderr: (line) => log(`enclave: ${line}`),
        }),
      close: () => cloud.close(),
    };
  } catch (err) {
    await cloud.close();
    throw err;
  }
}

/** Waits for the authority's first alert of `kind` on `sessionId` after alert id `after`. */
export async function waitForHeartbeatAlert(cloud: LocalCloud, sessionId: string, kind: HeartbeatAlert['kind'], after: number, timeoutMs: number): Promise<HeartbeatAlert | undefined> {
  const deadline = Date.now() + timeoutMs;
  let seen = after;
  for (let left = timeoutMs; left > 0; left = deadline - Date.now()) {
    const alerts = await cloud.heartbeats.alerts(seen, left);
    const hit = alerts.find((a) => a.sessionId === sessionId && a.kind === kind);
    if (hit) return hit;
    seen = alerts.at(-1)?.id ?? seen;
  }
  return undefined;
}

/** The newest alert id at the authority (0 when none). */
export async function lastHeartbeatAlertId(cloud: LocalCloud): Promise<number> {
  return (await cloud.heartbeats.alerts(0)).at(-1)?.id ?? 0;
}

export interface IdsDemoOptions {
  guest: GuestBuild;
  accel: 'tcg' | 'kvm' | 'auto';
  log: (msg: string) => void;
}

interface Row {
  pid: number;
  ppid: number;
  uid: number;
  state: string;
  threads: number;
  comm: string;
  kthread: boolean;
}

const HEARTBEAT_MS = 500;

export async function runIdsDemo(opts: IdsDemoOptions): Promise<string[]> {
  const { log } = opts;
  const lines: string[] = [];
  const world = await startIdsWorld({ ...opts, heartbeatMs: HEARTBEAT_MS });
  let session: IdsSession | undefined;
  try {
    lines.push(`profile   Volatility ISF from the kernel image alone; enclave measurement ${world.measurement.slice(0, 16)}… in the VM's launch policy and approved at the authority for VM ${world.vmId.slice(0, 8)}…`);
    log('starting the IDS enclave: registration through the authority and the monitor');
    session = await world.startSession();
    lines.push(`register  software enclave pid ${session.enclave.pid}, session ${session.sessionId.slice(0, 16)}…: keys sealed to the host and the authority, registration signed by the authority`);

    const rows = (await session.enclave.pslist()) as Row[];
    const users = rows.filter((r) => !r.kthread);
    lines.push(`pslist    ${rows.length} tasks (${users.length} user processes) read through the sealed channel; the first 10:`);
    lines.push('             PID   PPID   UID S THR COMMAND');
    for (const r of rows.slice(0, 10)) lines.push(`          ${String(r.pid).padStart(6)} ${String(r.ppid).padStart(6)} ${String(r.uid).padStart(5)} ${r.state} ${String(r.threads).padStart(3)} ${r.comm}${r.kthread ? ' [kthread]' : ''}`);

    const quiet = await session.enclave.runCheck('allowlist');
    if (quiet.alerts.length !== 0) throw new Error(`the allowlist alerts on the guest as booted: ${JSON.stringify(quiet.alerts)}`);
    log('the attacker starts a program of its own inside the guest');
    const started = await runInGuest(world.guestConsole, 'cp /bin/busybox /tmp/busybox-evil && (/tmp/busybox-evil sleep 100000 &) && until pidof busybox-evil >/dev/null; do sleep 0.1; done');
    if (started.exitCode !== 0) throw new Error(`could not start the demo attack: ${started.output}`);
    const caught = await session.enclave.runCheck('allowlist');
    const alert = caught.alerts[0] as { message?: string; evidence?: Record<string, unknown> } | undefined;
    if (caught.alerts.length !== 1 || alert?.evidence?.comm !== 'busybox-evil') throw new Error(`the allowlist did not catch the attack: ${JSON.stringify(caught.alerts)}`);
    lines.push(`attack    /tmp/busybox-evil started in the guest; the enclave's allowlist check alerts in one scan: ${alert.message}`);
    lines.push(`          evidence ${JSON.stringify(alert.evidence)}`);
    await runInGuest(world.guestConsole, 'killall busybox-evil; rm -f /tmp/busybox-evil');

    const after = await lastHeartbeatAlertId(world.cloud);
    const pid = session.enclave.pid;
    if (pid === undefined) throw new Error('the enclave has no pid');
    log('stopping the enclave (SIGSTOP): the authority expects its heartbeat');
    const stoppedAt = Date.now();
    process.kill(pid, 'SIGSTOP');
    const missed = await waitForHeartbeatAlert(world.cloud, session.sessionId, 'MISSED_HEARTBEAT', after, 20 * HEARTBEAT_MS);
    process.kill(pid, 'SIGKILL');
    if (!missed) throw new Error('the authority raised no MISSED_HEARTBEAT');
    lines.push(`heartbeat enclave SIGSTOPped: the authority raised ${missed.kind} after ${((Date.parse(missed.at) - stoppedAt) / 1000).toFixed(1)} s (period ${HEARTBEAT_MS} ms; last good answer #${missed.lastGoodSeq}): ${missed.detail}`);
  } finally {
    await session?.close().catch(() => undefined);
    await world.close();
  }
  return lines;
}
