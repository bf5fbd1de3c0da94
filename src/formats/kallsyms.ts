/**
 * Finds the kernel's own symbol table (kallsyms) in a decompressed, stripped vmlinux. Layout
 * facts from scripts/kallsyms.c (6.1, CONFIG_KALLSYMS_BASE_RELATIVE), tables in this order in
 * .rodata, each label aligned to 8 on 64-bit:
 *   kallsyms_offsets        s32[num_syms]
 *   kallsyms_relative_base  u64
 *   kallsyms_num_syms       u32
 *   kallsyms_names          per symbol: length (1 byte, or 2 when bit 7 of the first is set:
 *                           (b0 & 0x7f) | b1 << 7), then that many token indices
 *   kallsyms_markers        u32 per 256 symbols: offset of that symbol's entry in names
 *   (kallsyms_seqs_of_names on newer builds)
 *   kallsyms_token_table    256 NUL-terminated strings
 *   kallsyms_token_index    u16[256]: offset of each token in the table
 * A symbol expands to its type letter followed by its name. The tables are located from the
 * token table outward and accepted only if names, markers and address order all agree.
 */
import { ElfError, parseElf, SHT_PROGBITS, type ElfFile } from './elf.ts';

export class KallsymsError extends Error {
  override name = 'KallsymsError';
}

export interface KallsymsSymbol {
  name: string;
  /** nm-style type letter, as in System.map (T, t, D, d, R, r, B, b, ...). */
  type: string;
  /** Link-time (unrelocated) address. */
  address: bigint;
}

export interface KallsymsTable {
  symbols: KallsymsSymbol[];
  lookup(name: string): bigint | undefined;
  /** kallsyms_relative_base as stored (link-time). */
  relativeBase: bigint;
  /** Whether non-negative offsets are absolute values (CONFIG_KALLSYMS_ABSOLUTE_PERCPU). */
  absolutePercpu: boolean;
  /** Link-time addresses of the tables themselves, for locating them in a running guest. */
  tables: { offsets: bigint; relativeBase: bigint; numSyms: bigint; names: bigint; markers: bigint; tokenTable: bigint; tokenIndex: bigint };
}

const MIN_SYMBOLS = 256;
const MAX_SYMBOLS = 1 << 22;
/** Longest token kallsyms.c can build is far below this; it bounds the token-index scan. */
const MAX_TOKEN_LEN = 255;
const ALIGN = 8;
/** Bounds the work a crafted image full of near-miss tables can cause (header probes + name steps). */
const WORK_BUDGET = 64 << 20;

class Budget {
  left = WORK_BUDGET;
  spend(n: number): void {
    this.left -= n;
    if (this.left < 0) throw new KallsymsError('gave up: the image holds too many candidate kallsyms tables that fail validation');
  }
}

interface Region {
  bytes: Uint8Array;
  view: DataView;
  /** Link-time address of bytes[0]. */
  addr: bigint;
}

interface Tokens {
  tokens: string[];
  tableOff: number;
  indexOff: number;
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

function regionsOf(elf: ElfFile): Region[] {
  const rodata = elf.sections.filter((s) => s.name === '.rodata' && s.type === SHT_PROGBITS);
  // Unusual layouts: fall back to every allocated, file-backed section.
  const candidates = rodata.length > 0 ? rodata : elf.sections.filter((s) => s.type === SHT_PROGBITS && (s.flags & 2n) !== 0n);
  return candidates.map((s) => {
    const bytes = elf.bytes.subarray(s.offset, s.offset + s.size);
    return { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), addr: s.addr };
  });
}

/** Byte alignment of region offset `off` as an address (sections keep offset ≡ address). */
const aligned = (r: Region, off: number, a: number): boolean => (r.addr + BigInt(off)) % BigInt(a) === 0n;

function isTokenChar(b: number): boolean {
  return b > 0x20 && b < 0x7f;
}

/** Tries `p` as kallsyms_token_index; returns the tokens when the table before it agrees. */
function tokensAt(r: Region, p: number): Tokens | undefined {
  const { bytes, view } = r;
  if (p + 512 > bytes.length || view.getUint16(p, true) !== 0) return undefined;
  const idx = new Array<number>(256);
  idx[0] = 0;
  for (let i = 1; i < 256; i++) {
    const v = view.getUint16(p + 2 * i, true);
    const step = v - idx[i - 1]!;
    if (step < 2 || step > MAX_TOKEN_LEN + 1) return undefined;
    idx[i] = v;
  }
  // The table ends with the last token's NUL and at most ALIGN-1 bytes of zero padding.
  let q = p - 1;
  while (q >= 0 && q >= p - ALIGN && bytes[q] === 0) q--;
  if (q < 0 || bytes[q] === 0 || q + 1 >= p) return undefined;
  let s = q;
  while (s > 0 && bytes[s - 1] !== 0 && q - s < MAX_TOKEN_LEN) s--;
  const tableOff = s - idx[255]!;
  if (tableOff < 0 || !aligned(r, tableOff, 4)) return undefined;
  const tokens: string[] = [];
  for (let i = 0; i < 256; i++) {
    const start = tableOff + idx[i]!;
    const end = i < 255 ? tableOff + idx[i + 1]! - 1 : q + 1;
    if (bytes[end] !== 0) return undefined;
    for (let k = start; k < end; k++) if (!isTokenChar(bytes[k]!)) return undefined;
    tokens.push(String.fromCharCode(...bytes.subarray(start, end)));
  }
  return { tokens, tableOff, indexOff: p };
}

function* tokenCandidates(r: Region): Generator<Tokens> {
  for (let p = 0; p + 512 <= r.bytes.length; p += 2) {
    if (r.bytes[p] !== 0 || r.bytes[p + 1] !== 0) continue;
    const first = r.view.getUint16(p + 2, true);
    if (first < 2 || first > MAX_TOKEN_LEN + 1) continue;
    const t = tokensAt(r, p);
    if (t) yield t;
  }
}

interface NamesWalk {
  /** Offset (relative to names start) of every 256th entry. */
  markers: number[];
  end: number;
}

/** Walks `count` length-prefixed entries from `start` without decoding them. */
function walkNames(r: Region, start: number, count: number, limit: number, budget: Budget): NamesWalk | undefined {
  const { bytes } = r;
  budget.spend(count);
  const markers: number[] = [];
  let p = start;
  for (let i = 0; i < count; i++) {
    if ((i & 255) === 0) markers.push(p - start);
    if (p >= limit) return undefined;
    let len = bytes[p++]!;
    if (len & 0x80) {
      if (p >= limit) return undefined;
      len = (len & 0x7f) | (bytes[p++]! << 7);
    }
    if (len === 0 || len > limit - p) return undefined;
    p += len;
  }
  return { markers, end: p };
}

function markersMatch(r: Region, off: number, want: readonly number[], limit: number): boolean {
  if (!aligned(r, off, 4) || off + 4 * want.length > limit) return false;
  return want.every((m, k) => r.view.getUint32(off + 4 * k, true) === m);
}

function decodeName(r: Region, p: number, len: number, tokens: readonly string[]): string {
  let s = '';
  for (let k = 0; k < len; k++) s += tokens[r.bytes[p + k]!]!;
  return s;
}

function tryHeader(r: Region, p: number, tokens: Tokens, budget: Budget): KallsymsTable | undefined {
  const { view } = r;
  budget.spend(1);
  const relativeBase = view.getBigUint64(p, true);
  if (relativeBase >> 32n !== 0xffffffffn && relativeBase >> 32n !== 0n) return undefined;
  const count = view.getUint32(p + 8, true);
  if (count < MIN_SYMBOLS || count > MAX_SYMBOLS) return undefined;
  const offsetsOff = p - 4 * count - ((p - 4 * count) % ALIGN === 0 ? 0 : 4);
  if (offsetsOff < 0 || !aligned(r, offsetsOff, ALIGN) || alignUp(offsetsOff + 4 * count, ALIGN) !== p) return undefined;
  const namesOff = alignUp(p + 12, ALIGN);
  // Cheap filter before the full walk: the first entries must expand to a type letter.
  for (let i = 0, q = namesOff; i < 4; i++) {
    const len = r.bytes[q];
    if (len === undefined || len === 0 || len & 0x80 || q + 1 + len > tokens.tableOff) return undefined;
    const first = tokens.tokens[r.bytes[q + 1]!]!;
    if (!/^[A-Za-z]/.test(first)) return undefined;
    q += 1 + len;
  }
  const walk = walkNames(r, namesOff, count, tokens.tableOff, budget);
  if (!walk) return undefined;
  const markersOff = alignUp(walk.end, ALIGN);
  if (!markersMatch(r, markersOff, walk.markers, tokens.tableOff)) return undefined;

  const offsets = new Int32Array(count);
  let absolutePercpu = false;
  for (let i = 0; i < count; i++) {
    offsets[i] = view.getInt32(offsetsOff + 4 * i, true);
    if (offsets[i]! < 0) absolutePercpu = true;
  }
  const symbols: KallsymsSymbol[] = [];
  let q = namesOff;
  let prev = -1n;
  for (let i = 0; i < count; i++) {
    let len = r.bytes[q++]!;
    if (len & 0x80) len = (len & 0x7f) | (r.bytes[q++]! << 7);
    const full = decodeName(r, q, len, tokens.tokens);
    q += len;
    const type = full.charAt(0);
    if (!/^[A-Za-z?]$/.test(type) || full.length < 2) return undefined;
    const off = offsets[i]!;
    const address = absolutePercpu
      ? off >= 0
        ? BigInt(off)
        : relativeBase - 1n - BigInt(off)
      : relativeBase + BigInt(off >>> 0);
    // kallsyms.c sorts by address; anything else means these are not the tables.
    if (address < prev) return undefined;
    prev = address;
    symbols.push({ name: full.slice(1), type, address });
  }
  const byName = new Map<string, bigint>();
  for (const s of symbols) if (!byName.has(s.name)) byName.set(s.name, s.address);
  const at = (off: number): bigint => r.addr + BigInt(off);
  return {
    symbols,
    lookup: (name) => byName.get(name),
    relativeBase,
    absolutePercpu,
    tables: {
      offsets: at(offsetsOff),
      relativeBase: at(p),
      numSyms: at(p + 8),
      names: at(namesOff),
      markers: at(markersOff),
      tokenTable: at(tokens.tableOff),
      tokenIndex: at(tokens.indexOff),
    },
  };
}

export function findKallsyms(vmlinux: Uint8Array): KallsymsTable {
  let elf: ElfFile;
  try {
    elf = parseElf(vmlinux);
  } catch (err) {
    if (err instanceof ElfError) throw new KallsymsError(`vmlinux is not a usable ELF file: ${err.message}`);
    throw err;
  }
  let sawTokens = false;
  const budget = new Budget();
  for (const r of regionsOf(elf)) {
    for (const tokens of tokenCandidates(r)) {
      sawTokens = true;
      budget.spend(256);
      // The header (relative_base, num_syms) lies before the names, which lie before the tokens.
      const start = tokens.tableOff - 16;
      if (start < 0) continue;
      for (let p = start - Number((r.addr + BigInt(start)) % BigInt(ALIGN)); p >= 0; p -= ALIGN) {
        const table = tryHeader(r, p, tokens, budget);
        if (table) return table;
      }
    }
  }
  if (sawTokens) throw new KallsymsError('found a kallsyms token table but no symbol names that agree with it');
  throw new KallsymsError('no kallsyms tables found (kernel built without CONFIG_KALLSYMS, or not a 6.x base-relative layout)');
}
