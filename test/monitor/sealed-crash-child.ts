/**
 * Child process of the crash tests in sealed-backend.test.ts: opens a sealed disk, writes the `acked` sectors
 * and flushes (then prints ACKED: those writes are acknowledged), writes the `unacked` sectors, and flushes
 * again, SIGKILLing itself at `crashAt` (a flush step, or 'before-flush'). Argument: one JSON object.
 */
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { SealedBackend, type FlushStep } from '../../src/monitor/disk/sealed-backend.ts';
import { pattern, SECTOR } from './sealed-fixtures.ts';

interface ChildArgs {
  image: string;
  sidecar: string;
  payloadOffset: number;
  volumeKey: string;
  bundleRoot: string;
  db: string;
  crashAt: FlushStep | 'before-flush';
  acked: number[];
  unacked: number[];
  ackedTag: number;
  unackedTag: number;
}

const args = JSON.parse(process.argv[2] ?? '') as ChildArgs;
let armed = false;
const crash = (): never => {
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
};
const db = MonitorDb.open(args.db);
const disk = await SealedBackend.open({
  imagePath: args.image,
  sidecarPath: args.sidecar,
  payloadOffset: args.payloadOffset,
  volumeKey: Buffer.from(args.volumeKey, 'hex'),
  bundleRoot: Buffer.from(args.bundleRoot, 'hex'),
  db,
  onAlert: (a) => process.stderr.write(`ALERT ${JSON.stringify(a)}\n`),
  afterFlushStep: (step) => {
    if (armed && step === args.crashAt) crash();
  },
});
const writeAll = (sectors: number[], tag: number): Promise<void[]> =>
  Promise.all(sectors.map((s) => disk.write(s * SECTOR, pattern(tag, s), false)));

await writeAll(args.acked, args.ackedTag);
await disk.flush();
process.stdout.write('ACKED\n');
await writeAll(args.unacked, args.unackedTag);
if (args.crashAt === 'before-flush') crash();
armed = true;
await disk.flush();
process.stdout.write('FLUSHED\n');
await disk.close();
db.close();
