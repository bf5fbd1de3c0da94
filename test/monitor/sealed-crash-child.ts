/**
 * Child process of the crash tests in sealed-backend.test.ts: opens a sealed disk, writes the `acked` sectors
 * and flushes (then prints ACKED: those writes are acknowledged as flushed), then writes each phase in turn
 * (printing `FUA <i>` once a FUA phase is acknowledged), and flushes again. It SIGKILLs itself at the
 * `crashOn`-th time (default the first) a spill or flush reaches `crashAt` after ACKED (or after phase
 * `countFromPhase` is done), or right before the final flush ('before-flush'). Argument: one JSON object.
 */
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { SealedBackend, type FlushStep } from '../../src/monitor/disk/sealed-backend.ts';
import { pattern, SECTOR } from './sealed-fixtures.ts';

export interface CrashPhase {
  sectors: number[];
  tag: number;
  fua?: boolean;
}

export interface ChildArgs {
  image: string;
  sidecar: string;
  payloadOffset: number;
  volumeKey: string;
  bundleRoot: string;
  db: string;
  crashAt: FlushStep | 'before-flush';
  crashOn?: number;
  countFromPhase?: number;
  writeBufferBytes?: number;
  acked: number[];
  ackedTag: number;
  phases: CrashPhase[];
}

const args = JSON.parse(process.argv[2] ?? '') as ChildArgs;
let armed = args.countFromPhase === undefined ? null : false;
let reached = 0;
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
  ...(args.writeBufferBytes ? { writeBufferBytes: args.writeBufferBytes } : {}),
  afterFlushStep: (step) => {
    if (armed && step === args.crashAt && ++reached === (args.crashOn ?? 1)) crash();
  },
});
const writeAll = (sectors: number[], tag: number, fua: boolean): Promise<void[]> =>
  Promise.all(sectors.map((s) => disk.write(s * SECTOR, pattern(tag, s), fua)));

await writeAll(args.acked, args.ackedTag, false);
await disk.flush();
process.stdout.write('ACKED\n');
armed ??= true;
for (const [i, phase] of args.phases.entries()) {
  await writeAll(phase.sectors, phase.tag, phase.fua ?? false);
  if (phase.fua) process.stdout.write(`FUA ${i}\n`);
  if (i === args.countFromPhase) armed = true;
}
if (args.crashAt === 'before-flush') crash();
await disk.flush();
process.stdout.write('FLUSHED\n');
await disk.close();
db.close();
