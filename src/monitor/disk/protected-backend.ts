/**
 * Hypervisor-enforced write protection (seed 003's filter driver, from outside the guest): wraps the
 * VM's BlockBackend and refuses any write or write-zeroes that would change a protected byte, and any
 * trim touching one, with EPERM, which the NBD server sends to QEMU as NBD_EPERM and the guest sees
 * as an I/O error. A write that leaves every protected byte as it is passes: the guest writes whole
 * blocks, and a protected inode shares its inode-table block with other inodes the guest may update.
 * Reads pass through. Which ranges to protect is decided elsewhere (measure/protect-map.ts maps
 * files to blocks); this layer only enforces and reports.
 */
import type { BlockBackend, BlockSizes } from './backend.ts';

export interface ProtectedRange {
  offset: number;
  length: number;
  /** What the range protects, for the log (e.g. "/bin/busybox data"). */
  label: string;
}

export interface WriteRefusal {
  op: 'write' | 'trim' | 'write-zeroes';
  offset: number;
  length: number;
  /** Labels of every protected range the request touched. */
  labels: string[];
}

const COMPARE_LIMIT = 32 << 20;

interface Interval {
  start: number;
  end: number;
  labels: string[];
}

function refused(r: WriteRefusal): Error {
  return Object.assign(new Error(`${r.op} of ${r.length} bytes at ${r.offset} touches protected ${r.labels.join(', ')}`), { code: 'EPERM' });
}

/** Sorted, disjoint intervals; overlapping or touching ranges merge and keep every label. */
function merge(ranges: readonly ProtectedRange[]): Interval[] {
  const sorted = ranges.filter((r) => r.length > 0).map((r) => ({ start: r.offset, end: r.offset + r.length, labels: [r.label] }));
  sorted.sort((a, b) => a.start - b.start);
  const out: Interval[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) {
      last.end = Math.max(last.end, r.end);
      for (const l of r.labels) if (!last.labels.includes(l)) last.labels.push(l);
    } else out.push(r);
  }
  return out;
}

export class ProtectedBackend implements BlockBackend {
  #ranges: ProtectedRange[] = [];
  #intervals: Interval[] = [];
  #refusals = 0;

  constructor(
    private readonly inner: BlockBackend,
    ranges: readonly ProtectedRange[],
    private readonly onRefusal: (r: WriteRefusal) => void,
  ) {
    this.addRanges(ranges);
  }

  get size(): number {
    return this.inner.size;
  }
  get blockSizes(): BlockSizes {
    return this.inner.blockSizes;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get canTrim(): boolean {
    return this.inner.canTrim;
  }
  get canWriteZeroes(): boolean {
    return this.inner.canWriteZeroes;
  }
  /** How many requests have been refused since the backend was created. */
  get refusals(): number {
    return this.#refusals;
  }
  get ranges(): readonly ProtectedRange[] {
    return this.#ranges;
  }

  /** Adds ranges at runtime (e.g. `vmseal vm protect`); takes effect for the next request. */
  addRanges(ranges: readonly ProtectedRange[]): void {
    for (const r of ranges) {
      if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.length) || r.offset < 0 || r.length < 0) {
        throw new RangeError(`protected range ${r.label}: offset ${r.offset} / length ${r.length} out of range`);
      }
    }
    this.#ranges = [...this.#ranges, ...ranges];
    this.#intervals = merge(this.#ranges);
  }

  /** Protected intervals overlapping [offset, offset + length). */
  #overlapping(offset: number, length: number): Interval[] {
    const end = offset + length;
    const iv = this.#intervals;
    // Binary search for the first interval ending after `offset`.
    let lo = 0;
    let hi = iv.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (iv[mid]!.end <= offset) lo = mid + 1;
      else hi = mid;
    }
    const out: Interval[] = [];
    for (let i = lo; i < iv.length && iv[i]!.start < end; i++) out.push(iv[i]!);
    return out;
  }

  /** Labels of protected ranges overlapping [offset, offset + length). */
  touched(offset: number, length: number): string[] {
    return this.#overlapping(offset, length).flatMap((i) => i.labels);
  }

  /**
   * Refuses (and reports) the request when it would change protected bytes; `data` null means the
   * request's new content is undefined (trim), which always counts as a change.
   */
  async #check(op: WriteRefusal['op'], offset: number, length: number, data: Buffer | null): Promise<void> {
    const hits = this.#overlapping(offset, length);
    if (hits.length === 0) return;
    let changed = hits;
    if (data) {
      // The request is aligned for the inner backend, so its own span can be read back as is.
      const current = Buffer.allocUnsafe(length);
      await this.inner.read(offset, length, current);
      changed = hits.filter((i) => {
        const s = Math.max(i.start, offset) - offset;
        const e = Math.min(i.end, offset + length) - offset;
        return !current.subarray(s, e).equals(data.subarray(s, e));
      });
      if (changed.length === 0) return;
    }
    const r: WriteRefusal = { op, offset, length, labels: changed.flatMap((i) => i.labels) };
    this.#refusals++;
    this.onRefusal(r);
    throw refused(r);
  }

  read(offset: number, length: number, into: Buffer): Promise<void> {
    return this.inner.read(offset, length, into);
  }
  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.#check('write', offset, data.length, data);
    return this.inner.write(offset, data, fua);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.#check('trim', offset, length, null);
    return this.inner.trim(offset, length, fua);
  }
  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    // Large zeroing requests are not compared (that would mean allocating their size): refused when they touch.
    if (this.#overlapping(offset, length).length > 0) await this.#check('write-zeroes', offset, length, length <= COMPARE_LIMIT ? Buffer.alloc(length) : null);
    return this.inner.writeZeroes(offset, length, fua);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
