import type { Command } from 'commander';
import { pino } from 'pino';
import { FileBackend } from '../../monitor/disk/file-backend.ts';
import { NbdServer } from '../../monitor/disk/nbd-server.ts';
import { untilStopSignal } from '../until-signal.ts';

interface ServeOptions {
  file: string;
  socket: string;
  export: string;
  readOnly: boolean;
}

export function registerDiskCommands(program: Command): void {
  const disk = program.command('disk').description('disks served to QEMU over NBD');
  disk
    .command('serve')
    .description('serve a raw disk image over NBD on a unix socket until SIGINT or SIGTERM')
    .requiredOption('--file <path>', 'raw image file to serve (its size is the disk size)')
    .requiredOption('--socket <path>', 'unix socket to listen on (created with mode 0600)')
    .option('--export <name>', 'export name (the default export "" always reaches it too)', '')
    .option('--read-only', 'advertise the export read-only and refuse every write', false)
    .action((opts: ServeOptions) => serveFile(opts));
}

async function openImage(opts: ServeOptions): Promise<FileBackend> {
  try {
    return await FileBackend.open(opts.file, { readOnly: opts.readOnly });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`disk serve: ${opts.file} does not exist`);
    if (code === 'EACCES' || code === 'EPERM') throw new Error(`disk serve: no permission to open ${opts.file}${opts.readOnly ? '' : ' for writing'}`);
    throw new Error(`disk serve: cannot open ${opts.file}: ${(err as Error).message}`);
  }
}

async function serveFile(opts: ServeOptions): Promise<void> {
  const backend = await openImage(opts);
  // Refused clients and backend failures are worth seeing; the per-request chatter is not.
  const logger = pino({ name: 'vmseal-disk', level: 'warn' }, pino.destination(2));
  const server = new NbdServer({ socketPath: opts.socket, exports: new Map([[opts.export, backend]]), logger });
  try {
    await server.listen();
  } catch (err) {
    await backend.close();
    throw new Error(`disk serve: cannot listen on ${opts.socket}: ${(err as Error).message}`);
  }
  const mode = opts.readOnly ? 'read-only' : 'read-write';
  process.stdout.write(`serving ${opts.file} (${backend.size} bytes, ${mode}) as NBD export ${JSON.stringify(opts.export)} on ${opts.socket}\n`);
  await untilStopSignal();
  await server.close();
  await backend.close();
}
