/** A fixed set of sector ranges (the unverifiable parts of a sealed disk), looked up by binary search. */
export interface SectorRange {
  first: number;
  /** Exclusive. */
  end: number;
}

export class SectorRanges {
  readonly #ranges: SectorRange[];

  /** Sorts and merges overlapping or adjoining ranges. */
  constructor(ranges: SectorRange[]) {
    const sorted = ranges.filter((r) => r.end > r.first).sort((a, b) => a.first - b.first);
    const merged: SectorRange[] = [];
    for (const r of sorted) {
      const last = merged.at(-1);
      if (last && r.first <= last.end) last.end = Math.max(last.end, r.end);
      else merged.push({ ...r });
    }
    this.#ranges = merged;
  }

  get empty(): boolean {
    return this.#ranges.length === 0;
  }

  /** The parts of [first, first+count) inside the set. */
  intersect(first: number, count: number): SectorRange[] {
    const end = first + count;
    const out: SectorRange[] = [];
    // First range that ends after `first`.
    let lo = 0;
    let hi = this.#ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#ranges[mid]!.end <= first) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.#ranges.length && this.#ranges[i]!.first < end; i++) {
      const r = this.#ranges[i]!;
      out.push({ first: Math.max(first, r.first), end: Math.min(end, r.end) });
    }
    return out;
  }
}
