/**
 * Reuses request-sized buffers (read replies, write payloads) within one connection, so a
 * steady stream of same-sized requests costs no malloc, no ArrayBuffer creation and no GC
 * sweeping. A buffer goes back only once nothing refers to it any more: after the socket has
 * written a reply, after the backend has finished with a payload. Buffers are never shared
 * between connections, and every byte sent from one is freshly filled.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  #pooledBytes = 0;

  constructor(
    /** Bytes kept for reuse at most. */
    readonly maxPooledBytes: number,
    /** Larger buffers are not kept: a rare huge request must not pin its memory. */
    readonly maxBufferSize: number,
  ) {}

  /** A buffer of exactly `size` bytes with unspecified contents. */
  take(size: number): Buffer {
    const b = this.#free.get(size)?.pop();
    if (b) {
      this.#pooledBytes -= size;
      return b;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(b: Buffer): void {
    const size = b.length;
    if (size > this.maxBufferSize || this.#pooledBytes + size > this.maxPooledBytes) return;
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, (list = []));
    list.push(b);
    this.#pooledBytes += size;
  }

  clear(): void {
    this.#free.clear();
    this.#pooledBytes = 0;
  }
}

/**
 * A few reusable buffers for requests of varying size (encryption output): take() hands out the last kept
 * buffer that is large enough, cut to the length asked, else a new one of at least `minAlloc` bytes. A
 * buffer goes back whole with give(), which accepts only what take() handed out (a view from offset 0 of
 * its own ArrayBuffer).
 */
export class SpareBuffers {
  readonly #spare: Buffer[] = [];

  constructor(
    /** Buffers kept at most. */
    readonly maxBuffers: number,
    /** Larger buffers are not kept. */
    readonly maxBufferSize: number,
    /** Smallest buffer allocated, so one spare serves the common request sizes. */
    readonly minAlloc: number,
  ) {}

  take(length: number): Buffer {
    for (let i = this.#spare.length - 1; i >= 0; i--) {
      const b = this.#spare[i]!;
      if (b.length >= length) {
        this.#spare.splice(i, 1);
        return b.subarray(0, length);
      }
    }
    return Buffer.allocUnsafeSlow(length <= this.maxBufferSize ? Math.max(length, this.minAlloc) : length).subarray(0, length);
  }

  give(b: Buffer): void {
    const whole = Buffer.from(b.buffer, 0, b.buffer.byteLength);
    if (whole.length <= this.maxBufferSize && this.#spare.length < this.maxBuffers) this.#spare.push(whole);
  }
}
