import type { Command } from 'commander';
import { join } from 'node:path';
import { ALERTS_FILE, readAlertsFile } from '../../authority/heartbeat.ts';
import type { HeartbeatAlert } from '../../formats/protocol/ids-heartbeat.ts';
import { untilStopSignal } from '../until-signal.ts';

function describe(a: HeartbeatAlert): string {
  const good = a.lastGoodSeq === null ? 'never answered' : `last good #${a.lastGoodSeq} at ${a.lastGoodAt}`;
  return `${a.at}  ${a.kind}  session ${a.sessionId}  vm ${a.vmId}  host ${a.hostId}  ${good}  ${a.detail}\n`;
}

/** `vmseal authority ids alerts --dir D [--follow] [--json]`: heartbeat alerts recorded by the authority. */
export function registerIdsAlertsCommand(ids: Command): void {
  ids
    .command('alerts')
    .description('list IDS heartbeat alerts (MISSED_HEARTBEAT, BAD_HEARTBEAT) recorded by the authority')
    .requiredOption('--dir <dir>', 'authority state directory')
    .option('--follow', 'keep printing new alerts until interrupted')
    .option('--json', 'one JSON object per line')
    .action(async (opts: { dir: string; follow?: boolean; json?: boolean }) => {
      const path = join(opts.dir, ALERTS_FILE);
      const print = (alerts: HeartbeatAlert[]): void => {
        for (const a of alerts) process.stdout.write(opts.json ? `${JSON.stringify(a)}\n` : describe(a));
      };
      let seen = 0;
      const more = async (): Promise<void> => {
        const fresh = (await readAlertsFile(path)).filter((a) => a.id > seen);
        print(fresh);
        seen = fresh.at(-1)?.id ?? seen;
      };
      await more();
      if (!opts.follow) return;
      // The authority appends to the file; polling it needs no connection to the running service.
      const timer = setInterval(() => void more().catch((err: Error) => process.stderr.write(`vmseal: ${err.message}\n`)), 500);
      await untilStopSignal();
      clearInterval(timer);
    });
}
