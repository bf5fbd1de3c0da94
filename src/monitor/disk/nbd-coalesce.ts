/**
 * Bookkeeping for coalescing contiguous requests into one backend call. A thread-pool round
 * trip per 64 KiB request costs more CPU than copying the data, so runs of adjoining reads or
 * writes that have already arrived are served with one call each. Runs may grow upwards or
 * downwards: QEMU resubmits requests in descending bursts.
 */
import type { RequestHeader } from '../../formats/nbd/transmission.ts';

/** Adjoining reads; the caller reads [lo, hi) once and answers each request from it. */
export class ReadRun {
  lo: number;
  hi: number;
  readonly requests: RequestHeader[];

  constructor(first: RequestHeader) {
    this.lo = first.offset;
    this.hi = first.offset + first.length;
    this.requests = [first];
  }

  /** Adds `h` if it adjoins the run and the run stays within the limits. */
  add(h: RequestHeader, maxBytes: number, maxRequests: number): boolean {
    if (this.hi - this.lo + h.length > maxBytes || this.requests.length >= maxRequests) return false;
    if (h.offset === this.hi) this.hi += h.length;
    else if (h.offset + h.length === this.lo) this.lo = h.offset;
    else return false;
    this.requests.push(h);
    return true;
  }
}

/**
 * Adjoining writes gathered in one buffer. The export range [lo, hi) sits at
 * buf[start, start + hi - lo); buf is twice the limit and the first write lands in the middle,
 * so the range can grow either way up to the limit without moving data.
 */
export class WriteRun {
  lo: number;
  hi: number;
  start: number;
  fua = false;
  readonly requests: RequestHeader[] = [];

  constructor(
    offset: number,
    readonly buf: Buffer,
    readonly maxBytes: number,
  ) {
    this.lo = offset;
    this.hi = offset;
    this.start = buf.length / 2;
  }

  /** Where `h`'s payload goes in buf, or -1 if it does not adjoin the run or would overflow it. */
  place(h: RequestHeader, maxRequests: number): number {
    if (this.hi - this.lo + h.length > this.maxBytes || this.requests.length >= maxRequests) return -1;
    if (h.offset === this.hi) return this.start + (this.hi - this.lo);
    if (h.offset + h.length === this.lo) return this.start - h.length;
    return -1;
  }

  /** Records `h` once its payload is complete at buf[at]. */
  commit(h: RequestHeader, at: number, fua: boolean): void {
    if (h.offset === this.hi) this.hi += h.length;
    else {
      this.lo = h.offset;
      this.start = at;
    }
    this.fua ||= fua;
    this.requests.push(h);
  }

  data(): Buffer {
    return this.buf.subarray(this.start, this.start + (this.hi - this.lo));
  }
}
