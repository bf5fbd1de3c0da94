import type { Command } from 'commander';
import { buildGuest } from '../../guest/build.ts';
import { PlainLaunch, type DiskLaunch } from '../../monitor/launch/disk-launch.ts';
import { registerHostInit } from './host-init.ts';
import path from 'node:path';
import { startMonitorApi } from '../../monitor/api/server.ts';
import { sealedDiskOpener } from '../../monitor/launch/sealed-disk.ts';
import { Monitor } from '../../monitor/monitor.ts';
import { loadHostKeys } from '../../monitor/state/host-keys.ts';
import { MonitorDb } from '../../monitor/state/monitor-db.ts';
import { registerCleanup } from '../../monitor/vm/cleanup.ts';
import { ensureVtpmCa } from '../../monitor/vtpm/vtpm-ca.ts';
import { loadOrCreateNvManagerKey, NV_MANAGER_KEY_FILE } from '../../monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../monitor/vtpm/nv-policy.ts';
import { AlertLog } from '../../monitor/state/alerts.ts';

const DETACH_KEY = 0x1d; // Ctrl-]
const POWERDOWN_WAIT_MS = 60_000;

interface BootOptions {
  disk: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  accel: 'tcg' | 'kvm' | 'auto';
  memory: string;
}

/**
 * `vmseal host …`: the monitor's side. For now it boots a VM from a plain disk through the
 * monitor's own NBD server; the sealed launch of the next issue replaces the plain backend.
 */
export function registerHostCommands(program: Command): void {
  const host = program.command('host').description('the trusted monitor on a cloud host: owns QEMU, disks and keys');
  registerHostInit(host);
  host
    .command('run')
    .description('run the monitor: serve its API on a unix socket for the management plane, launch sealed VMs')
    .requiredOption('--dir <dir>', 'host state directory (vmseal host init)')
    .requiredOption('--storage <dir>', "the management plane's storage: launch files must lie inside it")
    .option('--socket <path>', 'API socket (default DIR/monitor.sock)')
    .option('--accel <tcg|kvm|auto>', 'accelerator for the VMs', 'tcg')
    .option('--memory <MiB>', 'RAM per VM', '512')
    .action(async (opts: { dir: string; storage: string; socket?: string; accel: string; memory: string }) => {
      if (opts.accel !== 'tcg' && opts.accel !== 'kvm' && opts.accel !== 'auto') throw new Error(`--accel must be tcg, kvm or auto, not ${opts.accel}`);
      const memoryMiB = Number(opts.memory);
      if (!Number.isInteger(memoryMiB) || memoryMiB < 64) throw new Error(`--memory must be a whole number of MiB >= 64, not ${opts.memory}`);
      const keys = await loadHostKeys(opts.dir);
      if (!keys.certificatePem) throw new Error(`host ${keys.hostId} has no certificate yet; enroll it with vmseal host init`);
      const db = MonitorDb.open(path.join(opts.dir, 'monitor.db'));
      const monitor = new Monitor({
        host: {
          hostId: keys.hostId,
          privateKey: keys.privateKey,
          certificatePem: keys.certificatePem,
          ...(keys.caCertificatePem !== undefined ? { caCertificatePem: keys.caCertificatePem } : {}),
        },
        db: db.sql,
        openSealedDisk: sealedDiskOpener(db),
        accel: opts.accel,
        memoryMiB,
        vtpm: { stateBase: path.join(opts.dir, 'vtpm'), ca: await ensureVtpmCa(opts.dir, keys.hostId) },
        nvAccess: new NvAccessControl({
          ownership: new NvOwnership(db.sql, await loadOrCreateNvManagerKey(path.join(opts.dir, NV_MANAGER_KEY_FILE)), (detail) => {
            new AlertLog(db.sql).raise('TAMPER', null, `vTPM NV ownership: ${detail}`);
          }),
        }),
      });
      const socketPath = path.resolve(opts.socket ?? path.join(opts.dir, 'monitor.sock'));
      const api = await startMonitorApi({ monitor, socketPath, storageDir: opts.storage });
      registerCleanup(async () => {
        await api.close();
        await monitor.close();
        db.close();
      });
      process.stdout.write(`monitor for host ${keys.hostId} listening on ${socketPath}\n`);
      await new Promise(() => undefined); // runs until SIGINT/SIGTERM, which run the cleanups and exit
    });
  host
    .command('boot')
    .description('boot a VM from a raw disk served by vmseal\'s NBD server; the serial console is this terminal (Ctrl-] powers down)')
    .requiredOption('--disk <file>', 'raw disk image (the guest sees /dev/vda); it is modified by the guest')
    .option('--kernel <file>', 'kernel image (default: the demo guest\'s)')
    .option('--initrd <file>', 'initramfs (default: the demo guest\'s)')
    .option('--cmdline <text>', 'kernel command line (default: the demo guest\'s)')
    .option('--accel <tcg|kvm|auto>', 'accelerator; kvm is used only after a probe shows it runs guest code', 'tcg')
    .option('--memory <MiB>', 'guest RAM', '512')
    .action(async (opts: BootOptions) => {
      if (!['tcg', 'kvm', 'auto'].includes(opts.accel)) throw new Error(`--accel must be tcg, kvm or auto, not ${opts.accel}`);
      const memoryMiB = Number(opts.memory);
      if (!Number.isInteger(memoryMiB) || memoryMiB < 64) throw new Error(`--memory must be a whole number of MiB >= 64, not ${opts.memory}`);
      const needDemo = !(opts.kernel && opts.initrd && opts.cmdline !== undefined);
      const demo = needDemo ? await buildGuest({ onProgress: (m) => process.stderr.write(`guest: ${m}\n`) }) : undefined;
      const launch = await PlainLaunch.start({
        diskPath: opts.disk,
        kernel: opts.kernel ?? demo!.kernel,
        initrd: opts.initrd ?? demo!.initrd,
        cmdline: opts.cmdline ?? demo!.cmdline,
        accel: opts.accel,
        memoryMiB,
      });
      process.stderr.write(`vmseal: VM running (QEMU pid ${launch.vm.pid}, ${launch.vm.accel}); Ctrl-] powers it down\n`);
      await attachTerminal(launch);
      await launch.stop();
    });
}

/** Pipes the serial console to this terminal until QEMU exits; Ctrl-] asks the guest to power down. */
async function attachTerminal(launch: DiskLaunch): Promise<void> {
  const { vm } = launch;
  const onData = (chunk: string): void => void process.stdout.write(chunk);
  vm.console.on('data', onData);
  const stdin = process.stdin;
  let poweringDown = false;
  const onInput = (buf: Buffer): void => {
    if (buf.includes(DETACH_KEY)) {
      if (poweringDown) return;
      poweringDown = true;
      process.stderr.write('\r\nvmseal: ACPI power button pressed; waiting for the guest to shut down\r\n');
      vm.powerdown().catch((err: unknown) => process.stderr.write(`vmseal: powerdown failed: ${String(err)}\r\n`));
      setTimeout(() => void vm.stop({ graceMs: 2000 }), POWERDOWN_WAIT_MS).unref();
      return;
    }
    vm.console.write(buf);
  };
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.on('data', onInput);
  try {
    const exit = await vm.waitForExit(2 ** 31 - 1);
    process.stderr.write(`\r\nvmseal: QEMU exited (${exit.signal ?? `code ${exit.code}`})\r\n`);
  } finally {
    stdin.off('data', onInput);
    if (stdin.isTTY) stdin.setRawMode(false);
    stdin.pause();
    vm.console.off('data', onData);
  }
}
