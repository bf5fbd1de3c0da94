import type { Command } from 'commander';
import { buildGuest } from '../../guest/build.ts';
import { PlainLaunch, type DiskLaunch } from '../../monitor/launch/disk-launch.ts';
import { registerHostInit } from './host-init.ts';

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
