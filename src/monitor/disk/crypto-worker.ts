/**
 * A crypto worker thread: runs seal and open jobs for the crypto pool on its shared slab (see
 * crypto-protocol.ts). Holds the key contexts the pool registered with it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SLAB_DATA_BYTES, SLAB_EXPECTED_AT, SLAB_LEAVES_AT, type WorkerInit, type WorkerReply, type WorkerRequest } from './crypto-protocol.ts';
import { SectorCrypto } from './sector-crypto.ts';

const port = parentPort;
if (!port) throw new Error('crypto-worker.ts runs only as a worker thread');
const { slab } = workerData as WorkerInit;
const data = Buffer.from(slab, 0, SLAB_DATA_BYTES);
const leaves = Buffer.from(slab, SLAB_LEAVES_AT, SLAB_EXPECTED_AT - SLAB_LEAVES_AT);
const expected = Buffer.from(slab, SLAB_EXPECTED_AT);
const contexts = new Map<number, SectorCrypto>();

port.on('message', (m: WorkerRequest) => {
  if (m.type === 'key') {
    contexts.set(m.key, new SectorCrypto({ volumeKey: Buffer.from(m.volumeKey), integrityKey: Buffer.from(m.integrityKey), encryptionSectorSize: m.encryptionSectorSize }));
    m.volumeKey.fill(0);
    m.integrityKey.fill(0);
    return;
  }
  if (m.type === 'drop') {
    contexts.delete(m.key);
    return;
  }
  let reply: WorkerReply;
  try {
    const ctx = contexts.get(m.key);
    if (!ctx) throw new Error(`no key context ${m.key}`);
    const bytes = data.subarray(0, m.sectors * 4096);
    if (m.type === 'seal') {
      ctx.seal(m.firstSector, bytes, bytes, leaves, 0);
      reply = { bad: [] };
    } else {
      reply = { bad: ctx.open(m.firstSector, bytes, expected, bytes) };
    }
  } catch (err) {
    reply = { error: err instanceof Error ? err.message : String(err) };
  }
  port.postMessage(reply);
});
