/**
 * Messages between the crypto pool and its workers. Sector data never travels in messages: each worker owns
 * one SharedArrayBuffer slab, laid out as below, which the pool fills before a job and reads after it.
 */
import type { EncryptionSectorSize } from './sector-crypto.ts';

/** Sectors one job may carry (256 KiB of data). */
export const SLAB_SECTORS = 64;
export const SLAB_DATA_BYTES = SLAB_SECTORS * 4096;
/** Leaves computed by a seal job. */
export const SLAB_LEAVES_AT = SLAB_DATA_BYTES;
/** Expected leaves given to an open job. */
export const SLAB_EXPECTED_AT = SLAB_LEAVES_AT + SLAB_SECTORS * 32;
export const SLAB_BYTES = SLAB_EXPECTED_AT + SLAB_SECTORS * 32;

export interface WorkerInit {
  slab: SharedArrayBuffer;
}

export type WorkerRequest =
  | { type: 'key'; key: number; volumeKey: Uint8Array; integrityKey: Uint8Array; encryptionSectorSize: EncryptionSectorSize }
  | { type: 'drop'; key: number }
  /** Encrypt the slab's data in place and write its leaves. */
  | { type: 'seal'; key: number; firstSector: number; sectors: number }
  /** Verify the slab's data against the expected leaves; decrypt it in place only if all match. */
  | { type: 'open'; key: number; firstSector: number; sectors: number };

/** Answer to a seal or open job: `bad` lists the sectors (from 0) that failed verification. */
export type WorkerReply = { bad: number[] } | { error: string };
