import type { Command } from 'commander';
import { runFoundationDemo } from '../demo/foundation.ts';

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('the end-to-end demo: boot a real Debian guest from vmseal\'s NBD export and exercise it; prints a summary')
    .option('--accel <tcg|kvm|auto>', 'accelerator (KVM only after a probe shows it runs guest code)', 'tcg')
    .action(async (opts: { accel: string }) => {
      if (opts.accel !== 'tcg' && opts.accel !== 'kvm' && opts.accel !== 'auto') throw new Error(`--accel must be tcg, kvm or auto, not ${opts.accel}`);
      const summary = await runFoundationDemo({ accel: opts.accel, log: (m) => process.stderr.write(`demo: ${m}\n`) });
      process.stdout.write(`${summary}\n`);
    });
}
