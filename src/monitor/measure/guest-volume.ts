/**
 * Finds the guest's file system on its decrypted disk: an MBR partition (the first ext4 or NTFS
 * one) or the whole disk, and opens it with the matching reader. Also adapts a BlockBackend, whose
 * reads must be aligned to its minimum block, to the unaligned `read(offset, length)` the readers use.
 */
import { parseMbr } from '../../formats/mbr.ts';
import { NtfsVolume } from '../../formats/ntfs/volume.ts';
import type { BlockBackend } from '../disk/backend.ts';
import { Ext4, type ReadAt } from '../../formats/ext4/index.ts';

export type { ReadAt };

export type GuestVolume =
  | { kind: 'ext4'; offset: number; fs: Ext4 }
  | { kind: 'ntfs'; offset: number; fs: NtfsVolume };

const MAX_BACKEND_READ = 4 << 20;

/** Unaligned reads over a BlockBackend; reads past the end come back short. */
export function backendReader(backend: BlockBackend): ReadAt {
  const align = Math.max(1, backend.blockSizes.min);
  const maxChunk = Math.max(align, Math.floor(Math.min(MAX_BACKEND_READ, backend.blockSizes.max) / align) * align);
  return async (offset, length) => {
    const end = Math.min(backend.size, offset + length);
    if (offset >= end) return new Uint8Array(0);
    const start = Math.floor(offset / align) * align;
    const stop = Math.min(backend.size, Math.ceil(end / align) * align);
    const buf = Buffer.allocUnsafe(stop - start);
    for (let at = start; at < stop; at += maxChunk) {
      const n = Math.min(maxChunk, stop - at);
      await backend.read(at, n, buf.subarray(at - start, at - start + n));
    }
    return buf.subarray(offset - start, end - start);
  };
}

/** `read` shifted to start at `base` (a partition). */
export function offsetReader(read: ReadAt, base: number): ReadAt {
  return (offset, length) => read(base + offset, length);
}

async function probe(read: ReadAt, offset: number): Promise<GuestVolume | undefined> {
  const r = offsetReader(read, offset);
  const boot = await r(0, 512);
  if (boot.length === 512 && Buffer.from(boot.subarray(3, 11)).toString('latin1') === 'NTFS    ') return { kind: 'ntfs', offset, fs: await NtfsVolume.open(r) };
  const sb = await r(1024 + 0x38, 2);
  if (sb.length === 2 && sb[0] === 0x53 && sb[1] === 0xef) return { kind: 'ext4', offset, fs: await Ext4.open(r) };
  return undefined;
}

/** The first ext4 or NTFS file system on the disk (MBR partitions first, then the bare disk). */
export async function openGuestVolume(read: ReadAt, diskSize: number): Promise<GuestVolume> {
  const sector = await read(0, 512);
  let partitions: number[] = [];
  try {
    partitions = parseMbr(sector, Math.floor(diskSize / 512)).partitions.map((p) => p.startLba * 512);
  } catch {
    // No valid partition table: the file system may start at sector 0 (an NTFS boot sector also ends in 0x55AA).
  }
  for (const offset of [...partitions, 0]) {
    const v = await probe(read, offset);
    if (v) return v;
  }
  throw new Error('no ext4 or NTFS file system found on the disk');
}
