/**
 * The sealed disk's write-back buffer: encrypted sectors with their new leaves, held in monitor memory from
 * the write until a flush has put them in the image. A fixed arena of `capacity` sector slots (ciphertext and
 * leaf side by side) indexed by sector number; rewriting a buffered sector reuses its slot.
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

  constructor(capacitySectors: number) {
    if (!Number.isInteger(capacitySectors) || capacitySectors < 1) throw new RangeError(`write buffer: bad capacity ${capacitySectors}`);
    this.capacity = capacitySectors;
    // Slots are only read after being written, so their initial contents never escape.
    this.#ciphertext = Buffer.allocUnsafeSlow(capacitySectors * SECTOR);
    this.#leaves = Buffer.allocUnsafeSlow(capacitySectors * LEAF);
  }

  get size(): number {
    return this.#slots.size;
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
   * Stores sector `sector` from ciphertext[ctAt..] and leaves[leafAt..]. Returns false, storing nothing, when the
   * buffer is full and the sector is not in it already.
   */
  put(sector: number, ciphertext: Buffer, ctAt: number, leaves: Buffer, leafAt: number): boolean {
    let slot = this.#slots.get(sector);
    if (slot === undefined) {
      if (this.#slots.size === this.capacity) return false;
      slot = this.#slots.size;
      this.#slots.set(sector, slot);
    }
    ciphertext.copy(this.#ciphertext, slot * SECTOR, ctAt, ctAt + SECTOR);
    leaves.copy(this.#leaves, slot * LEAF, leafAt, leafAt + LEAF);
    return true;
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
    sectors.forEach((s, i) => {
      const slot = this.#slots.get(s);
      if (slot === undefined) throw new Error(`write buffer: sector ${s} is not buffered`);
      this.#leaves.copy(out, i * LEAF, slot * LEAF, (slot + 1) * LEAF);
    });
    return out;
  }

  /** Runs of consecutive sectors among `sectors` (ascending, all buffered), adjacent slots merged into one buffer. */
  runs(sectors: number[]): SectorRun[] {
    const runs: SectorRun[] = [];
    let run: SectorRun | undefined;
    let lastSlot = -2;
    for (const s of sectors) {
      const slot = this.#slots.get(s)!;
      if (!run || s !== run.firstSector + run.sectors || run.buffers.length === MAX_IOV) {
        run = { firstSector: s, sectors: 0, buffers: [] };
        runs.push(run);
        lastSlot = -2;
      }
      if (slot === lastSlot + 1) {
        const last = run.buffers.at(-1)!;
        run.buffers[run.buffers.length - 1] = this.#ciphertext.subarray(last.byteOffset - this.#ciphertext.byteOffset, (slot + 1) * SECTOR);
      } else run.buffers.push(this.#ciphertext.subarray(slot * SECTOR, (slot + 1) * SECTOR));
      run.sectors++;
      lastSlot = slot;
    }
    return runs;
  }

  clear(): void {
    this.#slots.clear();
  }
}
