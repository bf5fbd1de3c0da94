/**
 * Reads a guest's memory the three ways the IDS asks for it: physical, kernel virtual (through the
 * kernel's page tables) and user virtual (through a CR3 the caller names). Virtual reads may cross
 * pages; physically contiguous pages are read with one pread. Everything is synchronous.
 */
import type { PhysMemory } from './guest-memory.ts';
import { cr3Root, linuxKernelRoot, TranslationCache } from './page-walk.ts';

export interface GuestReaderOptions {
  /** A CR3 value of the guest kernel (any process's: the kernel half is shared). */
  kernelCr3: bigint;
  /** CR4.LA57: 5-level paging. */
  la57: boolean;
}

export class GuestReader {
  private kernelCr3Value: bigint;
  /** Translation caches by root while a batch runs; null outside batches. */
  private caches: Map<bigint, TranslationCache> | null = null;
  readonly la57: boolean;

  constructor(
    readonly mem: PhysMemory,
    opts: GuestReaderOptions,
  ) {
    this.kernelCr3Value = opts.kernelCr3;
    this.la57 = opts.la57;
  }

  get kernelCr3(): bigint {
    return this.kernelCr3Value;
  }

  /** The PGD kernel reads walk (PTI's kernel half of the CR3's pair). */
  get kernelRoot(): bigint {
    return linuxKernelRoot(this.kernelCr3Value);
  }

  /** A fresh CR3 from the vCPU (see cpu-state.ts); takes effect for the next read. */
  setKernelCr3(cr3: bigint): void {
    this.kernelCr3Value = cr3;
  }

  /**
   * Runs `fn` with translations cached, so pages read repeatedly are walked once. The cache lives
   * only as long as `fn`: the guest keeps changing its page tables between batches.
   */
  batch<T>(fn: () => T): T {
    if (this.caches) return fn();
    this.caches = new Map();
    try {
      return fn();
    } finally {
      this.caches = null;
    }
  }

  readPhys(pa: bigint, len: number): Buffer {
    checkLength(len);
    return this.mem.readPhys(pa, len);
  }

  /**
   * Reads through the tables under `cr3`. Throws UnmappedError naming the first unmapped byte, or
   * PhysRangeError where a page maps to something other than RAM (MMIO).
   */
  readVirt(cr3: bigint, va: bigint, len: number): Buffer {
    checkLength(len);
    const buf = Buffer.allocUnsafe(len);
    this.readVirtInto(cr3Root(cr3), va, buf, 0, len);
    return buf;
  }

  readKernel(va: bigint, len: number): Buffer {
    checkLength(len);
    const buf = Buffer.allocUnsafe(len);
    this.readVirtInto(this.kernelRoot, va, buf, 0, len);
    return buf;
  }

  /** Translates one kernel virtual address. */
  kernelToPhys(va: bigint): bigint {
    return this.cache(this.kernelRoot).translate(va);
  }

  /** Reads into `buf[off, off+len)` under a root (already masked); the buffer is the caller's. */
  readVirtInto(root: bigint, va: bigint, buf: Buffer, off: number, len: number): void {
    const cache = this.cache(root);
    let done = 0;
    // A run of physically contiguous pages, flushed as one read when the next page is elsewhere.
    let runPa = 0n;
    let runLen = 0;
    while (done < len) {
      const t = cache.walk(va + BigInt(done));
      const inPage = Number(t.frame + t.pageSize - t.pa);
      const n = Math.min(len - done, inPage);
      if (runLen > 0 && runPa + BigInt(runLen) !== t.pa) {
        this.mem.readInto(runPa, buf, off + done - runLen, runLen);
        runLen = 0;
      }
      if (runLen === 0) runPa = t.pa;
      runLen += n;
      done += n;
    }
    if (runLen > 0) this.mem.readInto(runPa, buf, off + done - runLen, runLen);
  }

  private cache(root: bigint): TranslationCache {
    const existing = this.caches?.get(root);
    if (existing) return existing;
    const cache = new TranslationCache(this.mem, root, this.la57);
    this.caches?.set(root, cache);
    return cache;
  }
}

function checkLength(len: number): void {
  if (!Number.isSafeInteger(len) || len < 0) throw new RangeError(`read length must be a non-negative integer, got ${len}`);
}
