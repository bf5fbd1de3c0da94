/**
 * x86-64 linear-to-physical translation as the MMU does it (Intel SDM vol. 3, ch. 4.5): 4-level or
 * 5-level (CR4.LA57) paging, 4 KiB, 2 MiB and 1 GiB pages. Only the present bit and the page-size
 * bit decide the walk; access rights are the guest's business, not the reader's. A walk reads at
 * most one entry per level, so a hostile table (a loop, a self reference) cannot make it run longer.
 */
import { PhysRangeError, type PhysMemory } from './guest-memory.ts';

/** Bits 12-51 of CR3 and of paging entries: the physical frame (MAXPHYADDR is at most 52). */
const FRAME_MASK = 0x000f_ffff_ffff_f000n;
const PRESENT = 1n;
const PAGE_SIZE_BIT = 0x80n;
const PAGE_4K = 1n << 12n;

export class UnmappedError extends Error {
  override readonly name = 'UnmappedError';
  constructor(
    readonly va: bigint,
    readonly reason: string,
  ) {
    super(`unmapped 0x${va.toString(16)} (${reason})`);
  }
}

/**
 * The top-level table CR3 points to. Bits 0-11 are the PCID (or PWT/PCD without CR4.PCIDE) and bit
 * 63 is the no-flush hint of MOV to CR3: neither is part of the address.
 */
export function cr3Root(cr3: bigint): bigint {
  return cr3 & FRAME_MASK;
}

/**
 * The kernel PGD of a Linux CR3. With page-table isolation a process has a kernel/user PGD pair in
 * one 8 KiB-aligned order-1 allocation and user mode runs on the upper half (bit 12 set); a kernel
 * built with CONFIG_PAGE_TABLE_ISOLATION allocates every PGD that way (init_top_pgt too), whether
 * PTI is active or not, so clearing bit 12 always lands on the PGD that maps the whole kernel.
 */
export function linuxKernelRoot(cr3: bigint): bigint {
  return cr3Root(cr3) & ~PAGE_4K;
}

export function isCanonical(va: bigint, la57: boolean): boolean {
  if (va < 0n || va >= 1n << 64n) return false;
  const top = va >> (la57 ? 56n : 47n);
  return top === 0n || top === (la57 ? 0xffn : 0x1ffffn);
}

export interface Translation {
  pa: bigint;
  /** Physical base of the page holding `pa` and its size: the rest of that page needs no walk. */
  frame: bigint;
  pageSize: bigint;
}

/** Walks the tables under `root` (a CR3 value; non-address bits are ignored) for `va`. */
export function walk(mem: PhysMemory, root: bigint, va: bigint, la57 = false): Translation {
  return walkWith((pa) => mem.readU64(pa), root, va, la57);
}

/** The walk itself, reading entries through `readEntry` (which throws PhysRangeError outside RAM). */
function walkWith(readEntry: (pa: bigint) => bigint, root: bigint, va: bigint, la57: boolean): Translation {
  if (!isCanonical(va, la57)) throw new UnmappedError(va, 'non-canonical address');
  let table = cr3Root(root);
  for (let level = la57 ? 5 : 4; level >= 1; level--) {
    const shift = BigInt(12 + 9 * (level - 1));
    const entryPa = table + ((va >> shift) & 511n) * 8n;
    let entry: bigint;
    try {
      entry = readEntry(entryPa);
    } catch (err) {
      if (err instanceof PhysRangeError) throw new UnmappedError(va, `level-${level} table at 0x${table.toString(16)} is outside RAM`);
      throw err;
    }
    if ((entry & PRESENT) === 0n) throw new UnmappedError(va, `not present at level ${level}`);
    const large = (entry & PAGE_SIZE_BIT) !== 0n;
    if (level === 1 || (large && (level === 2 || level === 3))) {
      const pageSize = 1n << shift;
      const frame = entry & FRAME_MASK & ~(pageSize - 1n);
      return { pa: frame | (va & (pageSize - 1n)), frame, pageSize };
    }
    // PS is reserved at levels 4 and 5: the MMU raises a fault, and so do we.
    if (large) throw new UnmappedError(va, `reserved page-size bit at level ${level}`);
    table = entry & FRAME_MASK;
  }
  throw new Error('unreachable: level 1 always returns');
}

export function translate(mem: PhysMemory, root: bigint, va: bigint, la57 = false): bigint {
  return walk(mem, root, va, la57).pa;
}

/** Cached pages per cache before it starts over; a batch rarely touches more. */
const MAX_CACHED_PAGES = 1 << 16;
const PAGE_SHIFTS = [30n, 21n, 12n] as const;
/** Paging-structure pages kept per cache (16 MiB at most). */
const MAX_CACHED_TABLES = 4096;

/**
 * Translations for one batch of reads under one root: each page is walked once however often it is
 * read. Entries are keyed at the page's own size, so one 2 MiB or 1 GiB page is one entry. Guest
 * page tables change while the guest runs, so a cache must not outlive its batch.
 */
export class TranslationCache {
  /** Frames by `va >> shift`, one map per page size, largest first (PAGE_SHIFTS order). */
  private readonly frames = PAGE_SHIFTS.map(() => new Map<bigint, bigint>());
  private size = 0;
  /** Whole paging-structure pages by physical address: neighbouring pages share their tables. */
  private readonly tables = new Map<bigint, Buffer>();
  private readonly readEntry = (pa: bigint): bigint => {
    const base = pa & ~0xfffn;
    let table = this.tables.get(base);
    if (!table) {
      if (this.tables.size >= MAX_CACHED_TABLES) this.tables.clear();
      table = this.mem.readPhys(base, 4096);
      this.tables.set(base, table);
    }
    return table.readBigUInt64LE(Number(pa - base));
  };

  constructor(
    private readonly mem: PhysMemory,
    readonly root: bigint,
    readonly la57: boolean,
  ) {}

  walk(va: bigint): Translation {
    if (!isCanonical(va, this.la57)) throw new UnmappedError(va, 'non-canonical address');
    for (let i = 0; i < PAGE_SHIFTS.length; i++) {
      const shift = PAGE_SHIFTS[i]!;
      const frame = this.frames[i]!.get(va >> shift);
      if (frame !== undefined) {
        const pageSize = 1n << shift;
        return { pa: frame | (va & (pageSize - 1n)), frame, pageSize };
      }
    }
    const t = walkWith(this.readEntry, this.root, va, this.la57);
    if (this.size >= MAX_CACHED_PAGES) {
      for (const m of this.frames) m.clear();
      this.size = 0;
    }
    const i = PAGE_SHIFTS.findIndex((shift) => 1n << shift === t.pageSize);
    this.frames[i]!.set(va >> PAGE_SHIFTS[i]!, t.frame);
    this.size++;
    return t;
  }

  translate(va: bigint): bigint {
    return this.walk(va).pa;
  }
}
