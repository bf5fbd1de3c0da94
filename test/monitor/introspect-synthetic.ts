/**
 * Synthetic guest RAM for introspection tests: a sparse temp file opened writable, and a page-table
 * builder that writes x86-64 paging structures into it the way the SDM lays them out.
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WritableGuestMemoryForTests } from '../../src/monitor/introspect/guest-memory.ts';

export const KiB4 = 0x1000n;
export const MiB2 = 0x20_0000n;
export const GiB1 = 0x4000_0000n;

export interface SyntheticRam {
  mem: WritableGuestMemoryForTests;
  file: string;
  remove(): void;
}

export function syntheticRam(ramBytes: bigint): SyntheticRam {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmseal-ram-'));
  const file = path.join(dir, 'guest.ram');
  writeFileSync(file, '');
  truncateSync(file, Number(ramBytes)); // sparse: only the pages written take space
  const mem = WritableGuestMemoryForTests.openWritable(file, ramBytes);
  return {
    mem,
    file,
    remove: () => {
      mem.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const P = 1n; // present
const RW = 2n;
const PS = 0x80n;
const NX = 1n << 63n;

/** Builds page tables in synthetic RAM; tables come from a bump allocator starting at `tablesAt`. */
export class PageTables {
  readonly root: bigint;
  private next: bigint;

  constructor(
    private readonly ram: WritableGuestMemoryForTests,
    readonly levels: 4 | 5,
    tablesAt: bigint,
  ) {
    this.next = tablesAt;
    this.root = this.allocTable();
  }

  allocTable(): bigint {
    const pa = this.next;
    this.next += KiB4;
    this.ram.writePhys(pa, Buffer.alloc(4096));
    return pa;
  }

  entryAddr(table: bigint, va: bigint, level: number): bigint {
    return table + ((va >> BigInt(12 + 9 * (level - 1))) & 511n) * 8n;
  }

  readEntry(at: bigint): bigint {
    return this.ram.readU64(at);
  }

  writeEntry(at: bigint, value: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(value);
    this.ram.writePhys(at, b);
  }

  /** Maps `va` to `pa` with a page of `size` (4 KiB, 2 MiB or 1 GiB), creating tables on the way. */
  map(va: bigint, pa: bigint, size: bigint): void {
    const leafLevel = size === KiB4 ? 1 : size === MiB2 ? 2 : 3;
    let table = this.root;
    for (let level = this.levels; level > leafLevel; level--) {
      const at = this.entryAddr(table, va, level);
      let entry = this.readEntry(at);
      if ((entry & P) === 0n) {
        entry = this.allocTable() | P | RW;
        this.writeEntry(at, entry);
      }
      table = entry & 0x000f_ffff_ffff_f000n;
    }
    this.writeEntry(this.entryAddr(table, va, leafLevel), pa | P | RW | NX | (leafLevel > 1 ? PS : 0n));
  }

  /** The entry that maps `va` at `level` (tables must exist down to it). */
  entryFor(va: bigint, level: number): bigint {
    let table = this.root;
    for (let l = this.levels; l > level; l--) table = this.readEntry(this.entryAddr(table, va, l)) & 0x000f_ffff_ffff_f000n;
    return this.entryAddr(table, va, level);
  }
}
