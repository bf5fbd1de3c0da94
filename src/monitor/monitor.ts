/**
 * The monitor's core: launches VMs from sealed bundles, holds their keys, gates sealed commands and
 * keeps the alert log. It is driven only through monitor/api; everything it is handed by the
 * management plane (bundle, file paths, command blobs) is treated as hostile.
 */
import { rm } from 'node:fs/promises';
import type Database from 'better-sqlite3';
import type { ScanPage, SealedCommandBody, VmOp } from '../formats/protocol/command.ts';
import type { MemorySource } from '../formats/protocol/ids-read.ts';
import type { IdsRegisterRequestWire } from '../formats/protocol/ids-registration.ts';
import type { LaunchBundle } from '../formats/protocol/launch-bundle.ts';
import { pinnedCaPublicKey } from '../crypto/host-certificate.ts';
import { deriveVmKey } from '../crypto/keys.ts';
import type { BlockBackend } from './disk/backend.ts';
import { openCommand, sealCommandResult } from './identity/command-gate.ts';
import { newVmId, sealIdentityProof } from './identity/identity-proof.ts';
import { RefusalError } from './identity/refusal.ts';
import { deriveVmKeys, type VmKeys } from './identity/vm-keys.ts';
import { ConsoleSession } from './identity/console-session.ts';
import { openLaunchBundle, takeBootFiles, type HostIdentity } from './launch/bundle-open.ts';
import { DiskLaunch } from './launch/disk-launch.ts';
import { openGuestIntrospection, type GuestIntrospection } from './introspect/guest-introspection.ts';
import { IdsSessions } from './introspect/ids-sessions.ts';
import { DirectMemorySource } from './introspect/read-executor.ts';
import { AlertLog, type AlertKind } from './state/alerts.ts';
import { VmCounters } from './state/vm-counters.ts';
import { createRunDir } from './vm/run-dir.ts';
import type { VtpmCa } from './vtpm/vtpm-ca.ts';
import { Vtpm } from './vtpm/vtpm.ts';
import { vtpmStateId } from './vtpm/swtpm-instance.ts';
import type { SerialConsole } from './vm/serial-console.ts';
import type { NvAccessControl } from './vtpm/nv-policy.ts';
import { isTpmCommand, runTpmCommand, type NvVm, type TpmPcrsResult } from './vtpm/nv-commands.ts';
import type { AttestRequest, AttestationEvidenceWire } from '../formats/protocol/attestation.ts';
import { AkCertifier } from './vtpm/attestation-key.ts';
import { collectEvidence } from './vtpm/evidence.ts';
import { VmDisk } from './measure/vm-disk.ts';

export interface SealedDiskRequest {
  imagePath: string;
  /** Absent for an XTS-only launch; a disk with an integrity tree is refused without one. */
  sidecarPath?: string;
  bundle: LaunchBundle;
  keys: VmKeys;
  /** Integrity failures, a bad boot sector, a failed flush; the monitor logs them and stops the VM on BAD_KEY_OR_DISK. */
  onAlert(kind: Extract<AlertKind, 'TAMPER' | 'BAD_KEY_OR_DISK' | 'DISK_FAILURE'>, detail: string): void;
}

export type OpenSealedDisk = (req: SealedDiskRequest) => Promise<BlockBackend>;

export interface MonitorOptions {
  /** caCertificatePem: the CA pinned at `vmseal host init`; IDS registrations are verified with it. */
  host: HostIdentity & { certificatePem: string; caCertificatePem?: string };
  db: Database.Database;
  openSealedDisk: OpenSealedDisk;
  accel?: 'tcg' | 'kvm' | 'auto';
  memoryMiB?: number;
  runDirBase?: string;
  /** NV access control shared by every vTPM of this host (vtpm/nv-policy.ts); without it tpm-* commands fail. */
  nvAccess?: NvAccessControl;
  /** Benchmark configuration (b) only: the IDS channel runs unencrypted. Never set by `vmseal host run`. */
  benchPlainIdsChannel?: boolean;
  /** Give every VM a vTPM: persistent state under `stateBase`, EK certificates from the host's vTPM CA. */
  vtpm?: { stateBase: string; ca: VtpmCa };
}

export interface LaunchRequest {
  bundle: Buffer;
  image: string;
  sidecar?: string;
  kernel: string;
  initrd: string;
}

interface RunningVm {
  vmId: string;
  keys: VmKeys;
  launch: DiskLaunch;
  /** Its disk behind write protection, and its scans (measure/vm-disk.ts). */
  disk: VmDisk;
  vtpm?: Vtpm;
  bootDir: string;
  exited: boolean;
  consoles: Map<string, ConsoleSession>;
  /** The tenant's launch policy: IDS measurements allowed to introspect this VM. */
  idsMeasurements: readonly string[];
  /** Its vTPM as the NV commands see it (set when the vTPM starts). */
  nv?: NvVm;
  /** Opened on the first IDS read; `refreshedAt` is when its kernel CR3 was last read. */
  introspection?: Promise<{ gi: GuestIntrospection; refreshedAt: number }>;
}

/** How stale the kernel CR3 used for IDS reads may get: the process it belongs to may exit. */
const CR3_REFRESH_MS = 1000;

/** Console sessions per VM; opening one more closes the oldest. */
const MAX_CONSOLE_SESSIONS = 4;

export class UnknownVmError extends Error {
  override name = 'UnknownVmError';
}

export class Monitor {
  readonly alerts: AlertLog;
  readonly #counters: VmCounters;
  readonly #vms = new Map<string, RunningVm>();
  readonly #ids: IdsSessions;
  readonly #akCertifier: AkCertifier | undefined;

  constructor(private readonly opts: MonitorOptions) {
    this.alerts = new AlertLog(opts.db);
    this.#akCertifier = opts.vtpm ? new AkCertifier(opts.vtpm.ca) : undefined;
    this.#counters = new VmCounters(opts.db);
    const ca = opts.host.caCertificatePem;
    this.#ids = new IdsSessions({
      db: opts.db,
      hostId: opts.host.hostId,
      hostPrivateKey: opts.host.privateKey,
      caPublicKey: ca === undefined ? undefined : pinnedCaPublicKey(ca),
      alerts: this.alerts,
      ...(opts.benchPlainIdsChannel === true ? { benchPlainChannel: true } : {}),
    });
  }

  get hostId(): string {
    return this.opts.host.hostId;
  }

  get certificatePem(): string {
    return this.opts.host.certificatePem;
  }

  /** Refusals are logged before they are answered. */
  #refused(err: unknown, vmId: string | null): never {
    if (err instanceof RefusalError) this.alerts.raise(err.code, vmId, err.message);
    throw err;
  }

  async launch(req: LaunchRequest): Promise<{ vmId: string; identityProof: Buffer }> {
    const bundle = await openLaunchBundle(this.opts.host, req.bundle).catch((e: unknown) => this.#refused(e, null));
    const vmId = newVmId().toString('hex');
    const bootDir = await createRunDir(this.opts.runDirBase);
    try {
      const boot = await takeBootFiles(bundle, req, bootDir).catch((e: unknown) => this.#refused(e, vmId));
      const keys = deriveVmKeys(bundle.volumeKey);
      let launch: DiskLaunch | undefined;
      let badDisk = false;
      const onAlert: SealedDiskRequest['onAlert'] = (kind, detail) => {
        this.alerts.raise(kind, vmId, detail);
        if (kind === 'BAD_KEY_OR_DISK') {
          badDisk = true;
          void launch?.stop(1000);
        }
      };
      const backend = await this.opts
        .openSealedDisk({ imagePath: req.image, sidecarPath: req.sidecar, bundle, keys, onAlert })
        .catch((e: unknown) => this.#refused(e, vmId));
      // Protected paths are mapped on the disk as the tenant sealed it, before the guest can write.
      const disk = await VmDisk.open(backend, bundle.policy.protectedPaths ?? [], (r) =>
        this.alerts.raise('WRITE_PROTECT', vmId, `guest ${r.op} of ${r.length} bytes at ${r.offset} refused: ${r.labels.slice(0, 8).join(', ')}`),
      ).catch(async (e: unknown) => {
        await backend.close();
        throw e;
      });
      const vtpmOpts = this.opts.vtpm;
      const nvAccess = this.opts.nvAccess;
      // The vTPM's stable identity (it survives relaunch, unlike the vmId) is what NV ownership binds to.
      const instance = vtpmStateId(deriveVmKey(bundle.volumeKey, 'vtpm'));
      const vtpm = vtpmOpts
        ? await Vtpm.start({
            ...vtpmOpts,
            volumeKey: bundle.volumeKey,
            name: vmId,
            boot: { kernel: boot.kernel, initrd: boot.initrd, cmdline: bundle.cmdline },
            ...(this.opts.runDirBase ? { runDirBase: this.opts.runDirBase } : {}),
            ...(nvAccess ? { policy: nvAccess.policyFor(instance) } : {}),
          })
        : undefined;
      if (vtpm && nvAccess) nvAccess.attach(instance, vtpm.endpoint, vmId);
      const detachNv = (): void => {
        if (vtpm && nvAccess) nvAccess.detach(instance, vtpm.endpoint);
      };
      launch = await DiskLaunch.start(disk.backend, {
        kernel: boot.kernel,
        initrd: boot.initrd,
        cmdline: bundle.cmdline,
        accel: this.opts.accel ?? 'tcg',
        memoryMiB: this.opts.memoryMiB ?? 512,
        ...(this.opts.runDirBase ? { runDirBase: this.opts.runDirBase } : {}),
        ...(vtpm ? { extraArgs: vtpm.qemuArgs() } : {}),
      }).catch(async (e: unknown) => {
        detachNv();
        await vtpm?.stop();
        throw e;
      });
      if (badDisk) void launch.stop(1000);
      const nv: NvVm = { vmId, instance, commandKey: keys.command, ...(vtpm ? { tpm: vtpm.endpoint, eventLogPath: vtpm.eventLogPath } : {}) };
      const vm: RunningVm = { vmId, keys, launch, disk, ...(vtpm ? { vtpm } : {}), nv, bootDir, exited: false, consoles: new Map(), idsMeasurements: bundle.policy.idsMeasurements };
      this.#vms.set(vmId, vm);
      // The VM counts as shut down once its disk is closed too, so a relaunch finds the image free.
      void launch.vm.waitForExit(2 ** 31 - 1).then(async () => {
        for (const c of vm.consoles.values()) c.close();
        this.#closeIntrospection(vm);
        await launch.stop();
        detachNv();
        await vm.vtpm?.stop();
        await rm(bootDir, { recursive: true, force: true });
        vm.exited = true;
      }, () => undefined);
      return { vmId, identityProof: sealIdentityProof(keys.identity, Buffer.from(vmId, 'hex'), bundle.launchNonce, this.hostId) };
    } catch (err) {
      await rm(bootDir, { recursive: true, force: true });
      throw err;
    }
  }

  async command(vmId: string, sealed: Buffer): Promise<Buffer> {
    const vm = this.#vms.get(vmId);
    if (!vm) throw new UnknownVmError(`no VM ${vmId} on this host`);
    let body;
    try {
      body = openCommand(this.#counters, { vmId, commandKey: vm.keys.command }, sealed);
    } catch (err) {
      this.#refused(err, vmId);
    }
    let error: string | undefined;
    let tpm: TpmPcrsResult | undefined;
    let measured: { scan?: ScanPage; protectedRanges?: number } | undefined;
    try {
      if (isTpmCommand(body)) tpm = await this.#tpmCommand(vm, body);
      else if (body.op === 'scan' || body.op === 'protect') measured = await this.#measureCommand(vm, body);
      else await this.#execute(vm, body.op as VmOp);
    } catch (err) {
      error = err instanceof Error ? err.message : String(err);
    }
    const state = await this.#state(vm);
    return sealCommandResult(vm.keys.command, { vmId, counter: body.counter, op: body.op, ok: error === undefined, state, ...(error ? { error } : {}), ...(tpm ? { tpm } : {}), ...measured });
  }

  /** `scan` and `protect` (docs/integrity.md): they read the decrypted disk, never guest memory. */
  async #measureCommand(vm: RunningVm, body: Extract<SealedCommandBody, { op: 'scan' | 'protect' }>): Promise<{ scan?: ScanPage; protectedRanges?: number }> {
    if (vm.exited) throw new Error('the VM has shut down');
    if (body.op === 'protect') return { protectedRanges: await vm.disk.protect([body.args.path]) };
    return { scan: await vm.disk.scanPage(body.args.page, body.args.paths) };
  }

  #tpmCommand(vm: RunningVm, body: Parameters<typeof runTpmCommand>[2]): Promise<TpmPcrsResult | undefined> {
    const nv = this.opts.nvAccess;
    if (!nv || !vm.nv || vm.exited) throw new Error('this VM has no running vTPM');
    return runTpmCommand(nv, vm.nv, body, (id) => {
      const other = this.#vms.get(id);
      return other && !other.exited ? other.nv : undefined;
    });
  }

  async #execute(vm: RunningVm, op: VmOp): Promise<void> {
    if (vm.exited && op !== 'status') throw new Error('the VM has shut down');
    const q = vm.launch.vm;
    switch (op) {
      case 'pause':
        return q.pause();
      case 'resume':
        return q.resume();
      case 'shutdown':
        return q.powerdown();
      case 'poweroff':
        vm.exited = true;
        return vm.launch.stop(2000);
      case 'reboot':
        return q.reset();
      case 'status':
        return;
    }
  }

  async #state(vm: RunningVm): Promise<string> {
    if (vm.exited) return 'shutdown';
    try {
      return (await vm.launch.vm.status()).status;
    } catch {
      return 'stopping'; // QEMU is gone, its disk not yet closed
    }
  }

  #vm(vmId: string): RunningVm {
    const vm = this.#vms.get(vmId);
    if (!vm) throw new UnknownVmError(`no VM ${vmId} on this host`);
    return vm;
  }

  /** The VM's serial console inside the monitor (tenants reach it only through sealed sessions). */
  console(vmId: string): SerialConsole {
    return this.#vm(vmId).launch.vm.console;
  }

  /** Starts a sealed console session; returns its id (the monitor's nonce). */
  openConsole(vmId: string, tenantNonce: Buffer): string {
    const vm = this.#vm(vmId);
    if (vm.exited) throw new Error('the VM has shut down');
    const session = new ConsoleSession(vm.keys.console, tenantNonce, vm.launch.vm.console);
    vm.consoles.set(session.sessionId, session);
    for (const [id, old] of vm.consoles) {
      if (vm.consoles.size <= MAX_CONSOLE_SESSIONS) break;
      old.close();
      vm.consoles.delete(id);
    }
    return session.sessionId;
  }

  #session(vmId: string, sessionId: string): ConsoleSession {
    const s = this.#vm(vmId).consoles.get(sessionId);
    if (!s) throw new UnknownVmError(`no console session ${sessionId} on VM ${vmId}`);
    return s;
  }

  /** Sealed output frames after `after`, waiting up to `waitMs` for the first one. */
  async consoleFrames(vmId: string, sessionId: string, after: number, waitMs: number): Promise<Array<{ seq: number; frame: Buffer }>> {
    const s = this.#session(vmId, sessionId);
    let frames = s.framesAfter(after);
    if (frames.length === 0 && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          s.off('frames', done);
          resolve();
        };
        const timer = setTimeout(done, waitMs);
        s.on('frames', done);
      });
      frames = s.framesAfter(after);
    }
    return frames;
  }

  consoleInput(vmId: string, sessionId: string, frame: Buffer): void {
    try {
      this.#session(vmId, sessionId).input(frame);
    } catch (err) {
      this.#refused(err, vmId);
    }
  }

  /** A quote of the VM's vTPM for a verifier's nonce (vtpm/evidence.ts); the management plane only relays it. */
  async attest(vmId: string, req: AttestRequest): Promise<AttestationEvidenceWire> {
    const vm = this.#vm(vmId);
    if (vm.exited || !vm.vtpm || !this.#akCertifier) throw new Error(vm.exited ? 'the VM has shut down' : 'this VM has no vTPM');
    return collectEvidence({ tpm: vm.vtpm.swtpm.tpm, eventLogPath: vm.vtpm.eventLogPath, vmName: vmId, certifier: this.#akCertifier }, req);
  }

  /** Registers an IDS session key for a VM (docs/ids.md); refusals are logged by IdsSessions. */
  async idsRegister(vmId: string, req: IdsRegisterRequestWire): Promise<{ sessionId: string }> {
    const vm = this.#vm(vmId);
    if (vm.exited) throw new Error('the VM has shut down');
    return this.#ids.register({ vmId, idsMeasurements: vm.idsMeasurements }, req);
  }

  /** Answers one IDS channel request frame with its response frame. */
  idsRead(sessionId: string, frame: Buffer): Promise<Buffer> {
    return this.#ids.read(sessionId, frame, (vmId) => this.#guestMemory(vmId));
  }

  /**
   * The monitor's own read path into a VM's memory, with no channel in front of it: what IDS reads
   * execute on, and the benchmark's direct configuration. In-process only; no API route exposes it.
   */
  guestMemory(vmId: string): Promise<MemorySource> {
    return this.#guestMemory(vmId);
  }

  async #guestMemory(vmId: string): Promise<MemorySource> {
    const vm = this.#vm(vmId);
    if (vm.exited) throw new Error('the VM has shut down');
    vm.introspection ??= openGuestIntrospection(vm.launch.vm).then((gi) => ({ gi, refreshedAt: Date.now() }));
    let handle;
    try {
      handle = await vm.introspection;
    } catch (err) {
      delete vm.introspection; // e.g. QMP busy: the next request tries again
      throw err;
    }
    if (Date.now() - handle.refreshedAt > CR3_REFRESH_MS) {
      await handle.gi.refresh();
      handle.refreshedAt = Date.now();
    }
    return new DirectMemorySource(handle.gi.reader);
  }

  #closeIntrospection(vm: RunningVm): void {
    this.#ids.dropVm(vm.vmId);
    void vm.introspection?.then((h) => h.gi.close(), () => undefined);
    delete vm.introspection;
  }

  async list(): Promise<Array<{ vmId: string; state: string }>> {
    return Promise.all([...this.#vms.values()].map(async (vm) => ({ vmId: vm.vmId, state: await this.#state(vm) })));
  }

  /** Stops every VM (QEMU, export, private files). */
  async close(): Promise<void> {
    await Promise.all([...this.#vms.values()].map(async (vm) => {
      this.#closeIntrospection(vm);
      await vm.launch.stop(2000);
      await vm.vtpm?.stop();
      await rm(vm.bootDir, { recursive: true, force: true });
    }));
    this.#vms.clear();
  }
}
