import type { Command } from 'commander';
import { startMgmt } from '../../mgmt/server.ts';
import { untilStopSignal } from '../until-signal.ts';

/** `vmseal mgmt …`: the provider's management plane (untrusted by design). */
export function registerMgmtCommands(program: Command): void {
  const mgmt = program.command('mgmt').description('the untrusted management plane: image storage, relays sealed blobs to the monitor');
  mgmt
    .command('run')
    .description('serve the management API over HTTP, storing objects under DIR and relaying to the monitor socket')
    .requiredOption('--dir <dir>', 'storage directory')
    .requiredOption('--monitor <socket>', "the monitor's API socket (vmseal host run)")
    .option('--port <port>', 'TCP port (0 picks a free one)', '8480')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--verbose', 'log every request')
    .action(async (opts: { dir: string; monitor: string; port: string; host: string; verbose?: boolean }) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be 0-65535, not ${opts.port}`);
      const app = await startMgmt({ storageDir: opts.dir, monitorSocket: opts.monitor, port, host: opts.host, logger: opts.verbose ?? false });
      const addr = app.server.address();
      const actual = typeof addr === 'object' && addr ? addr.port : port;
      process.stdout.write(`mgmt listening on http://${opts.host}:${actual}\n`);
      await untilStopSignal();
      await app.close();
    });
}
