// Plaintext reads of a tenant's disk image from outside the VM: a raw image as is, a sealed (LUKS2 or
// LUKS1, aes-xts-plain64) image decrypted with its passphrase, and the file system inside: the first
// Linux partition of an MBR disk, or the whole disk when it has no partition table.
import { open, type FileHandle } from 'node:fs/promises';
import { XtsCipher } from '../crypto/xts.ts';
import type { ReadAt } from '../formats/ext4/index.ts';
import { MBR_TYPE_LINUX, parseMbr, SECTOR_SIZE } from '../formats/mbr.ts';
import { openImage } from './image-import.ts';

export interface DiskReader {
  read: ReadAt;
  /** Plaintext disk size in bytes. */
  size: number;
  close(): Promise<void>;
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(b, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return b.subarray(0, done);
}

/** Opens `path`; with a passphrase it must be a LUKS image, which is decrypted on every read. */
export async function openDisk(path: string, passphrase?: Buffer): Promise<DiskReader> {
  if (!passphrase) {
    const fh = await open(path, 'r');
    const size = (await fh.stat()).size;
    return {
      size,
      read: (offset, length) => (offset < 0 || offset + length > size ? Promise.reject(new Error(`read past the end of ${path}`)) : readAt(fh, offset, length)),
      close: () => fh.close(),
    };
  }
  const img = await openImage({ path, passphrase });
  const xts = new XtsCipher(img.volumeKey);
  const fh = await open(path, 'r');
  const ss = img.sectorSize;
  return {
    size: img.size,
    read: async (offset, length) => {
      if (offset < 0 || offset + length > img.size) throw new Error(`read past the end of the encrypted payload of ${path}`);
      const first = Math.floor(offset / ss);
      const end = Math.ceil((offset + length) / ss);
      const ct = await readAt(fh, img.payloadOffset + first * ss, (end - first) * ss);
      if (ct.length !== (end - first) * ss) throw new Error(`${path} is shorter than its LUKS payload`);
      const pt = xts.decryptSectors(first, ss, ct);
      return pt.subarray(offset - first * ss, offset - first * ss + length);
    },
    close: () => fh.close(),
  };
}

/** The byte offset and size of the file system on the disk. */
export async function findFilesystem(disk: DiskReader): Promise<{ offset: number; size: number }> {
  const boot = await disk.read(0, SECTOR_SIZE);
  let mbr;
  try {
    mbr = parseMbr(boot, Math.floor(disk.size / SECTOR_SIZE));
  } catch {
    return { offset: 0, size: disk.size }; // no partition table: a bare file system
  }
  const linux = mbr.partitions.find((p) => p.type === MBR_TYPE_LINUX);
  if (!linux) throw new Error('the disk has an MBR but no Linux partition');
  return { offset: linux.startLba * SECTOR_SIZE, size: linux.sectors * SECTOR_SIZE };
}

/** A ReadAt over a window of the disk. */
export function windowed(read: ReadAt, offset: number, size: number): ReadAt {
  return (off, len) => (off < 0 || off + len > size ? Promise.reject(new Error('read past the end of the partition')) : read(offset + off, len));
}
