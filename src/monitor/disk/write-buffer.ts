/**
 * The sealed disk's write-back buffer: encrypted sectors with their new leaves, held in monitor memory from
 * the write until a flush has put them in the image. A fixed arena of `capacity` sector slots (ciphertext and
 * leaf side by side) indexed by sector number; rewriting a buffered sector reuses its slot.
 *
 * A write may also seal straight into slots it reserves (no copy): they belong to no sector until it publishes
 * them, and the buffer must be drained (no reservation outstanding) before it is spilled and cleared.
 */
const SECTOR = 4096;
const LEAF = 32;
/** writev takes at most this many buffers per call (IOV_MAX on Linux). */
const MAX_IOV = 1024;

/** Consecutive sectors and the buffers holding their ciphertext, for one positioned writev. */
export interface SectorRun {
  firstSector: number;
  sectors: number;
  buffers: Buffer[];
}

export class WriteBuffer {
  readonly capacity: number;
  readonly #ciphertext: Buffer;
  readonly #leaves: Buffer;
  readonly #slots = new Map<number, number>();
  /** Slots handed out so far (published, reserved, or left by a failed reservation). */
  #used = 0;
  #reserved = 0;
  #drainWaiters: (() => void)[] = [];

  constructor(capacitySectors: number) {
    if (!Number.isInteger(capacitySectors) || capacitySectors < 1) throw new RangeError(`write buffer: bad capacity ${capacitySectors}`);
    this.capacity = capacitySectors;
    // Slots are only read after being written, so their initial contents never escape.
    this.#ciphertext = Buffer.allocUnsafeSlow(capacitySectors * SECTOR);
    this.#leaves = Buffer.allocUnsafeSlow(capacitySectors * LEAF);
  }

  /** Buffered sectors. */
  get size(): number {
    return this.#slots.size;
  }

  /** Slots taken: what counts against the capacity. */
  get used(): number {
    return this.#used;
  }

  /**
   * Reserves `count` consecutive slots for a write to seal into (ciphertextAt, leavesAt); returns the first,
   * or -1 if they do not fit. Every reservation ends in publish() or abandon().
   */
  reserve(count: number): number {
    if (this.#used + count > this.capacity) return -1;
    const slot = this.#used;
    this.#used += count;
    this.#reserved++;
    return slot;
  }

  ciphertextAt(slot: number, count: number): Buffer {
    return this.#ciphertext.subarray(slot * SECTOR, (slot + count) * SECTOR);
  }

  leavesAt(slot: number, count: number): Buffer {
    return this.#leaves.subarray(slot * LEAF, (slot + count) * LEAF);
  }

  /** The reserved slots slot.. now hold sectors first..: they are buffered from now on. */
  publish(first: number, slot: number, count: number): void {
    for (let i = 0; i < count; i++) {
      const s = first + i;
      const had = this.#slots.get(s);
      if (had === undefined) this.#slots.set(s, slot + i);
      // Rewritten while this write ran: the newer contents go into the sector's slot (the reserved one stays unused).
      else {
        this.#ciphertext.copy(this.#ciphertext, had * SECTOR, (slot + i) * SECTOR, (slot + i + 1) * SECTOR);
        this.#leaves.copy(this.#leaves, had * LEAF, (slot + i) * LEAF, (slot + i + 1) * LEAF);
      }
    }
    this.#release();
  }

  /** The write that reserved slots failed: they stay unused until the buffer is cleared. */
  abandon(): void {
    this.#release();
  }

  /** Resolves once no reservation is outstanding. */
  drained(): Promise<void> {
    if (this.#reserved === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  #release(): void {
    if (--this.#reserved === 0) for (const wake of this.#drainWaiters.splice(0)) wake();
  }

  has(sector: number): boolean {
    return this.#slots.has(sector);
  }

  /** Whether any of sectors first..first+count-1 is buffered. */
  hasAny(first: number, count: number): boolean {
    if (this.#slots.size === 0) return false;
    for (let s = first; s < first + count; s++) if (this.#slots.has(s)) return true;
    return false;
  }

  /**
   * Stores the consecutive sectors first.. from ciphertext (whole sectors) and leaves (32 bytes each), in order,
   * as many as fit; returns how many did. A sector buffered already is rewritten in its slot. One copy per
   * stretch of consecutive slots (new sectors get consecutive ones): per-sector copies cost more than the bytes.
   */
  putRun(first: number, ciphertext: Buffer, leaves: Buffer): number {
    const count = ciphertext.length / SECTOR;
    let placed = 0;
    let from = 0;
    let fromSlot = -1;
    for (; placed < count; placed++) {
      const slot = this.#slotFor(first + placed);
      if (slot < 0) break;
      if (slot !== fromSlot + (placed - from)) {
        this.#copyIn(ciphertext, leaves, from, placed, fromSlot);
        from = placed;
        fromSlot = slot;
      }
    }
    this.#copyIn(ciphertext, leaves, from, placed, fromSlot);
    return placed;
  }

  /** The sector's slot, a new one if it has none; -1 when it has none and the buffer is full. */
  #slotFor(sector: number): number {
    let slot = this.#slots.get(sector);
    if (slot === undefined) {
      if (this.#used === this.capacity) return -1;
      slot = this.#used++;
      this.#slots.set(sector, slot);
    }
    return slot;
  }

  /** Input sectors from..end-1 into slots slot.. */
  #copyIn(ciphertext: Buffer, leaves: Buffer, from: number, end: number, slot: number): void {
    if (end === from) return;
    ciphertext.copy(this.#ciphertext, slot * SECTOR, from * SECTOR, end * SECTOR);
    leaves.copy(this.#leaves, slot * LEAF, from * LEAF, end * LEAF);
  }

  /** Copies a buffered sector's ciphertext and leaf out; false if the sector is not buffered. */
  copyOut(sector: number, ciphertext: Buffer, ctAt: number, leaves: Buffer, leafAt: number): boolean {
    const slot = this.#slots.get(sector);
    if (slot === undefined) return false;
    this.#ciphertext.copy(ciphertext, ctAt, slot * SECTOR, (slot + 1) * SECTOR);
    this.#leaves.copy(leaves, leafAt, slot * LEAF, (slot + 1) * LEAF);
    return true;
  }

  /** Buffered sectors, ascending. */
  sectors(): number[] {
    return [...this.#slots.keys()].sort((a, b) => a - b);
  }

  /** The leaves of `sectors` (all buffered), concatenated in that order. */
  leavesOf(sectors: number[]): Buffer {
    const out = Buffer.allocUnsafe(sectors.length * LEAF);
    this.#stretches(sectors, (at, slot, n) => this.#leaves.copy(out, at * LEAF, slot * LEAF, (slot + n) * LEAF));
    return out;
  }

  /** Runs of consecutive sectors among `sectors` (ascending, all buffered), adjacent slots merged into one buffer. */
  runs(sectors: number[]): SectorRun[] {
    const runs: SectorRun[] = [];
    let run: SectorRun | undefined;
    this.#stretches(sectors, (at, slot, n) => {
      const s = sectors[at]!;
      if (!run || s !== run.firstSector + run.sectors || run.buffers.length === MAX_IOV) {
        run = { firstSector: s, sectors: 0, buffers: [] };
        runs.push(run);
      }
      run.buffers.push(this.#ciphertext.subarray(slot * SECTOR, (slot + n) * SECTOR));
      run.sectors += n;
    });
    return runs;
  }

  /**
   * Cuts `sectors` (ascending, all buffered) into stretches of consecutive sectors in consecutive slots:
   * each(index in `sectors` of its first, its first slot, its length).
   */
  #stretches(sectors: number[], each: (at: number, slot: number, n: number) => void): void {
    let from = 0;
    let fromSlot = -1;
    for (let i = 0; i < sectors.length; i++) {
      const s = sectors[i]!;
      const slot = this.#slots.get(s);
      if (slot === undefined) throw new Error(`write buffer: sector ${s} is not buffered`);
      if (i > from && (s !== sectors[from]! + (i - from) || slot !== fromSlot + (i - from))) {
        each(from, fromSlot, i - from);
        from = i;
      }
      if (i === from) fromSlot = slot;
    }
    if (sectors.length > from) each(from, fromSlot, sectors.length - from);
  }

  /** Empties the buffer; only when drained. */
  clear(): void {
    if (this.#reserved !== 0) throw new Error('write buffer: cleared with reservations outstanding');
    this.#slots.clear();
    this.#used = 0;
  }
}
