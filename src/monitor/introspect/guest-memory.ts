/**
 * Guest-physical memory of a q35 VM, read from QEMU's RAM file (`memory-backend-file`, see
 * qemu-args.ts). Reads are synchronous preads on one held fd: an IDS batch is a burst of small reads
 * and a page walk needs each entry before the next, so promises and mmap buy nothing here.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

const GiB = 1n << 30n;
const FOUR_GIB = 4n * GiB;
/** QEMU 7.2 hw/i386/pc_q35.c: RAM of this size or more is split at 2 GiB, smaller RAM at 2.75 GiB. */
const Q35_SPLIT_THRESHOLD = 0xb000_0000n;

/**
 * How q35 lays the RAM file out in guest-physical space: file offsets [0, below4g) at the same
 * addresses, file offsets [below4g, ram) from 4 GiB up; the gap is the PCI/MMCONFIG hole.
 * (QEMU overlays the legacy VGA/BIOS window 0xa0000-0xfffff on the low alias; the RAM behind it is
 * what the file holds, and that is what is read there.)
 */
export interface RamLayout {
  ramBytes: bigint;
  below4g: bigint;
  above4g: bigint;
}

export function q35RamLayout(ramBytes: bigint): RamLayout {
  if (ramBytes <= 0n) throw new RangeError(`RAM size must be positive, got ${ramBytes}`);
  // max-ram-below-4g is not set by vmseal, so QEMU's default (4 GiB, no limit) applies.
  const lowmem = ramBytes >= Q35_SPLIT_THRESHOLD ? 0x8000_0000n : Q35_SPLIT_THRESHOLD;
  return ramBytes >= lowmem
    ? { ramBytes, below4g: lowmem, above4g: ramBytes - lowmem }
    : { ramBytes, below4g: ramBytes, above4g: 0n };
}

/** A guest-physical range that no RAM backs (the PCI hole, or past the end of RAM). */
export class PhysRangeError extends Error {
  override readonly name = 'PhysRangeError';
  constructor(
    readonly addr: bigint,
    readonly len: number,
  ) {
    super(`no guest RAM at 0x${addr.toString(16)} (+${len})`);
  }
}

/**
 * The file offset of a guest-physical range, which must lie wholly in RAM; throws PhysRangeError
 * otherwise. Low RAM ends below the PCI hole and high RAM starts above it, so a range in RAM is
 * always one contiguous stretch of the file.
 */
export function physToFileOffset(layout: RamLayout, pa: bigint, len: number): number {
  const end = pa + BigInt(len);
  if (pa < 0n || len < 0) throw new PhysRangeError(pa, len);
  if (end <= layout.below4g) return Number(pa);
  if (pa >= FOUR_GIB && end <= FOUR_GIB + layout.above4g) return Number(layout.below4g + (pa - FOUR_GIB));
  throw new PhysRangeError(pa, len);
}

/** What page walks and readers need from guest-physical memory. */
export interface PhysMemory {
  readonly layout: RamLayout;
  /** Fills `buf[off, off+len)` from guest-physical `pa`; throws PhysRangeError outside RAM. */
  readInto(pa: bigint, buf: Buffer, off: number, len: number): void;
  readPhys(pa: bigint, len: number): Buffer;
  /** A little-endian u64 (page-table entry). */
  readU64(pa: bigint): bigint;
}

export class GuestMemory implements PhysMemory {
  private fd: number | null;
  private readonly scratch = Buffer.alloc(8);

  protected constructor(
    fd: number,
    readonly path: string,
    readonly layout: RamLayout,
  ) {
    this.fd = fd;
  }

  /** Opens a RAM file read-only; its size must be exactly the VM's RAM size. */
  static open(file: string, ramBytes: number | bigint): GuestMemory {
    return new GuestMemory(openChecked(file, BigInt(ramBytes), 'r'), file, q35RamLayout(BigInt(ramBytes)));
  }

  readInto(pa: bigint, buf: Buffer, off: number, len: number): void {
    const fd = this.handle();
    const offset = physToFileOffset(this.layout, pa, len);
    let done = 0;
    while (done < len) {
      const n = readSync(fd, buf, off + done, len - done, offset + done);
      // The file was checked to be RAM-sized; a short read means someone truncated it.
      if (n === 0) throw new Error(`guest RAM file ${this.path} ended at offset ${offset + done}`);
      done += n;
    }
  }

  readPhys(pa: bigint, len: number): Buffer {
    const buf = Buffer.allocUnsafe(len);
    this.readInto(pa, buf, 0, len);
    return buf;
  }

  readU64(pa: bigint): bigint {
    this.readInto(pa, this.scratch, 0, 8);
    return this.scratch.readBigUInt64LE(0);
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  protected handle(): number {
    if (this.fd === null) throw new Error(`guest RAM file ${this.path} is closed`);
    return this.fd;
  }
}

/**
 * Guest memory that can also be written. For tests only (synthetic RAM, planting markers): the
 * monitor itself never writes guest memory, so the production class has no write path at all.
 */
export class WritableGuestMemoryForTests extends GuestMemory {
  static openWritable(file: string, ramBytes: number | bigint): WritableGuestMemoryForTests {
    return new WritableGuestMemoryForTests(openChecked(file, BigInt(ramBytes), 'r+'), file, q35RamLayout(BigInt(ramBytes)));
  }

  writePhys(pa: bigint, data: Buffer): void {
    const fd = this.handle();
    const offset = physToFileOffset(this.layout, pa, data.length);
    let done = 0;
    while (done < data.length) done += writeSync(fd, data, done, data.length - done, offset + done);
  }
}

function openChecked(file: string, ramBytes: bigint, flags: 'r' | 'r+'): number {
  const fd = openSync(file, flags);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`guest RAM ${file} is not a regular file`);
    if (BigInt(st.size) !== ramBytes) throw new Error(`guest RAM ${file} has ${st.size} bytes, expected ${ramBytes}`);
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
