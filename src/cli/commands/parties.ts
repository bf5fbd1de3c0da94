import type { Command } from 'commander';

/**
 * The parties whose protocols are still being built. Each has its command group already, so the CLI's
 * shape is stable; running one says plainly which capability is missing instead of pretending.
 */
const PENDING: Array<{ name: string; summary: string; arrives: string }> = [];

export function registerPartyPlaceholders(program: Command): void {
  for (const p of PENDING) {
    program
      .command(p.name)
      .description(`${p.summary} [not yet available]`)
      .action(() => {
        process.stderr.write(`vmseal ${p.name}: not available yet; it arrives with ${p.arrives}.\n`);
        process.exitCode = 2;
      });
  }
}
