/**
 * Child-process entry of bench/disk: serves one sealed image over our NBD server, either with the
 * integrity tree (SealedBackend) or XTS only (XtsBackend, config `integrity: "none"`), until SIGTERM or SIGINT, so its CPU use is separate from the benchmark's.
 * Usage: node --import tsx bench/lib/serve-sealed.ts CONFIG.json, where the config (written 0600 by
 * the benchmark, in its scratch directory) names the files, the volume key and the sealing root.
 */
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { z } from 'zod';
import { NbdServer } from '../../src/monitor/disk/nbd-server.ts';
import { SealedBackend } from '../../src/monitor/disk/sealed-backend.ts';
import { XtsBackend } from '../../src/monitor/disk/xts-backend.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';

const hex = (bytes: number) => z.string().regex(new RegExp(`^[0-9a-f]{${bytes * 2}}$`));
const SealedServeConfig = z.object({
  image: z.string().min(1),
  sidecar: z.string().min(1),
  payloadOffset: z.number().int().nonnegative(),
  volumeKey: hex(64),
  root: hex(32),
  db: z.string().min(1),
  socket: z.string().min(1),
  export: z.string(),
  integrity: z.enum(['tree', 'none']),
  sectors: z.number().int().positive(),
});

const path = process.argv[2];
if (!path) throw new Error('usage: serve-sealed.ts CONFIG.json');
const config = SealedServeConfig.parse(JSON.parse(readFileSync(path, 'utf8')));

const db = MonitorDb.open(config.db);
// An alert in a benchmark means a bug: say so loudly, the failed request makes the bench fail.
const onAlert = (a: unknown): void => void process.stderr.write(`serve-sealed: ALERT ${JSON.stringify(a)}\n`);
const volumeKey = Buffer.from(config.volumeKey, 'hex');
const backend =
  config.integrity === 'none'
    ? await XtsBackend.open({ imagePath: config.image, payloadOffset: config.payloadOffset, sectors: config.sectors, volumeKey, onAlert })
    : await SealedBackend.open({
        imagePath: config.image,
        sidecarPath: config.sidecar,
        payloadOffset: config.payloadOffset,
        volumeKey,
        bundleRoot: Buffer.from(config.root, 'hex'),
        db,
        onAlert,
      });
const logger = pino({ name: 'vmseal-bench-sealed', level: 'warn' }, pino.destination(2));
const server = new NbdServer({ socketPath: config.socket, exports: new Map([[config.export, backend]]), logger });
await server.listen();
await new Promise<void>((resolve) => {
  process.once('SIGTERM', resolve);
  process.once('SIGINT', resolve);
});
await server.close();
await backend.close();
db.close();
