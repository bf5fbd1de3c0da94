import type { Command } from 'commander';
import { buildGuest } from '../../guest/build.ts';
import { GUEST_READY_MARKER } from '../../guest/contract.ts';
import { createProgress } from '../progress.ts';

/** `vmseal guest build`: the demo guest (Debian cloud kernel, busybox initramfs and disk), cached. */
export function registerGuestCommands(program: Command): void {
  const guest = program.command('guest').description('the demo guest: a Debian cloud kernel with a busybox root filesystem');
  guest
    .command('build')
    .description('build (or reuse from the cache) the demo guest kernel, initramfs and disk image')
    .option('--json', 'print {"kernel","initrd","disk","cmdline","kernelVersion"} as the last line of stdout')
    .option('--force', 'rebuild everything even if cached')
    .action(async (opts: { json?: boolean; force?: boolean }) => {
      const progress = createProgress(process.stderr, 'guest: ');
      try {
        const built = await buildGuest({ force: opts.force ?? false, onProgress: progress.onProgress, onTransfer: progress.onTransfer });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(built)}\n`);
        } else {
          process.stdout.write(
            [
              `kernel:  ${built.kernel}  (${built.kernelVersion})`,
              `initrd:  ${built.initrd}`,
              `disk:    ${built.disk}  (raw, MBR, ext4 root on partition 1)`,
              `cmdline: ${built.cmdline}`,
              `The guest prints ${GUEST_READY_MARKER} on ttyS0 when it is up; a root shell follows there.`,
              '',
            ].join('\n'),
          );
        }
      } finally {
        progress.stop();
      }
    });
}
