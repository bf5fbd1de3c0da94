/**
 * ADVERSARY: what a storage administrator can do to a tenant's stored image and sidecar. Sector edits
 * are made in place (same inode, fsync'd), so a monitor that has the file open sees them at once, as
 * it would if the administrator wrote to the disk under a running VM. Sector numbers count 4096-byte
 * payload sectors from the image's payload offset (public: it is in the LUKS header).
 */
import { copyFile, open, rename } from 'node:fs/promises';
import { createReadStream } from 'node:fs';

export const STORED_SECTOR_BYTES = 4096;

function sectorPosition(payloadOffset: number, sector: number): number {
  if (!Number.isSafeInteger(sector) || sector < 0) throw new Error(`bad sector number ${sector}`);
  return payloadOffset + sector * STORED_SECTOR_BYTES;
}

export async function readSector(file: string, payloadOffset: number, sector: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(STORED_SECTOR_BYTES);
    const { bytesRead } = await fh.read(buf, 0, buf.length, sectorPosition(payloadOffset, sector));
    if (bytesRead !== buf.length) throw new Error(`${file} has no whole sector ${sector}`);
    return buf;
  } finally {
    await fh.close();
  }
}

export async function writeSector(file: string, payloadOffset: number, sector: number, data: Buffer): Promise<void> {
  if (data.length !== STORED_SECTOR_BYTES) throw new Error(`a sector is ${STORED_SECTOR_BYTES} bytes, got ${data.length}`);
  const fh = await open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, sectorPosition(payloadOffset, sector));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Flips one bit of a ciphertext sector. */
export async function flipBit(file: string, payloadOffset: number, sector: number, bit = 0): Promise<void> {
  if (!Number.isInteger(bit) || bit < 0 || bit >= STORED_SECTOR_BYTES * 8) throw new Error(`bad bit ${bit}`);
  const data = await readSector(file, payloadOffset, sector);
  data[bit >> 3]! ^= 1 << (bit & 7);
  await writeSector(file, payloadOffset, sector, data);
}

/** Copies ciphertext sector `from` over sector `to` (a "move": valid ciphertext in the wrong place). */
export async function copySector(file: string, payloadOffset: number, from: number, to: number): Promise<void> {
  await writeSector(file, payloadOffset, to, await readSector(file, payloadOffset, from));
}

/** Puts back one sector as it was in an older copy of the image (a per-sector rollback). */
export async function rollBackSector(file: string, olderCopy: string, payloadOffset: number, sector: number): Promise<void> {
  await writeSector(file, payloadOffset, sector, await readSector(olderCopy, payloadOffset, sector));
}

/**
 * Replaces a stored file's whole content with another file's (a swap, or a rollback to a saved copy).
 * Written beside it and renamed over it, as the management plane's own uploads are.
 */
export async function replaceFile(file: string, withFile: string): Promise<void> {
  const tmp = `${file}.adversary-${process.pid}`;
  await copyFile(withFile, tmp);
  await rename(tmp, file);
}

/** Byte offsets where `needle` occurs in `file` (streamed; matches across chunk boundaries count). */
export async function findBytes(file: string, needle: Buffer): Promise<number[]> {
  if (needle.length === 0) throw new Error('findBytes: empty needle');
  const found: number[] = [];
  let carry = Buffer.alloc(0);
  let base = 0; // file offset of carry[0]
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) {
    const window = Buffer.concat([carry, chunk as Buffer]);
    for (let i = window.indexOf(needle); i !== -1; i = window.indexOf(needle, i + 1)) found.push(base + i);
    const keep = Math.min(needle.length - 1, window.length);
    base += window.length - keep;
    carry = window.subarray(window.length - keep);
  }
  return found;
}
