/** Shared setup of the native XTS tests: a scratch directory, and an XtsBackend over a random sealed image. */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XtsCipher } from '../../src/crypto/xts.ts';
import { XtsBackend } from '../../src/monitor/disk/xts-backend.ts';

export const S = 4096;

export function scratchDir(t: { after: (fn: () => void) => void }, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `vmseal-${prefix}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface RandomXtsDisk {
  file: string;
  key: Buffer;
  payloadOffset: number;
  /** What the disk decrypts to (sector 0 ends with 0x55AA for the boot-sector check). */
  plain: Buffer;
  be: XtsBackend;
}

/** `sectors` random 4 KiB sectors encrypted with a random key after a 2-sector header, opened as an XtsBackend. */
export async function randomXtsDisk(dir: string, sectors: number): Promise<RandomXtsDisk> {
  const file = join(dir, 'img');
  const key = randomBytes(64);
  const payloadOffset = 2 * S;
  const plain = randomBytes(sectors * S);
  plain[510] = 0x55;
  plain[511] = 0xaa;
  writeFileSync(file, Buffer.concat([Buffer.alloc(payloadOffset), new XtsCipher(key).encryptSectors(0n, 4096, plain)]));
  const be = await XtsBackend.open({ imagePath: file, payloadOffset, sectors, volumeKey: key, onAlert: () => undefined });
  return { file, key, payloadOffset, plain, be };
}
