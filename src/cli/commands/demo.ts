import type { Command } from 'commander';
import { buildGuest } from '../../guest/build.ts';
import { runFoundationDemo } from '../demo/foundation.ts';
import { runIdsDemo } from '../demo/ids.ts';
import { runAttestDemo } from '../demo/attest.ts';
import { runSealedDemo } from '../demo/sealed.ts';
import { runVtpmDemo } from '../demo/vtpm.ts';

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('the end-to-end demo: a real Debian guest on vmseal\'s disk path, then sealed launch, identity and commands, then the offloaded IDS; prints a summary')
    .option('--accel <tcg|kvm|auto>', 'accelerator (KVM only after a probe shows it runs guest code)', 'tcg')
    .action(async (opts: { accel: string }) => {
      if (opts.accel !== 'tcg' && opts.accel !== 'kvm' && opts.accel !== 'auto') throw new Error(`--accel must be tcg, kvm or auto, not ${opts.accel}`);
      const accel = opts.accel;
      const log = (m: string) => process.stderr.write(`demo: ${m}\n`);
      log('building or finding the demo guest');
      const guest = await buildGuest({ onProgress: (m) => log(`guest: ${m}`) });
      const plain = await runFoundationDemo({ guest, accel, log });
      const sealed = await runSealedDemo({ guest, accel, log });
      const ids = await runIdsDemo({ guest, accel, log });
      const attest = await runAttestDemo({ guest, accel, log });
      const vtpm = await runVtpmDemo({ guest, accel, log });
      const section = (title: string, lines: string[]) => [title, ...lines.map((l) => `  ${l}`)];
      process.stdout.write(
        [
          '',
          `vmseal demo — Debian ${guest.kernelVersion} under QEMU (${accel})`,
          ...section('1. the disk path: a real guest on vmseal\'s own NBD export', plain),
          ...section('2. sealed launch, VM identity and sealed commands through an untrusted management plane', sealed),
          ...section('3. an IDS outside the VM: a measured enclave reads the guest kernel through a sealed channel', ids),
          ...section('4. remote attestation: vTPM quote, measured launch and the IMA list read from outside the guest', attest),
          ...section('5. a vTPM per VM: the measured launch replayed, and NV indices bound to the VM that made them unless it shares them', vtpm),
          '',
        ].join('\n'),
      );
    });
}
