/**
 * ELF64 reader: file header, section headers (with names), program headers and symbol tables.
 * Pure and bounds-checked: every table and every file-backed section is checked against the
 * buffer before it is used, so a hostile file yields an ElfError, never a huge allocation or a
 * read past the end. Addresses stay bigint (kernel addresses do not fit a double); offsets and
 * sizes of file-backed data are numbers because they were checked to lie inside the buffer.
 */

export class ElfError extends Error {
  override name = 'ElfError';
}

export const ET_REL = 1;
export const EM_X86_64 = 62;

/** Section types (sh_type) that callers name. */
export const SHT_NULL = 0;
export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_NOBITS = 8;
export const SHT_DYNSYM = 11;

/** Program header type of a loadable segment. */
export const PT_LOAD = 1;

const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const PHDR_SIZE = 56;
const SYM_SIZE = 24;
const SHN_UNDEF = 0;
const SHN_XINDEX = 0xffff;
const PN_XNUM = 0xffff;

export interface ElfSection {
  index: number;
  name: string;
  type: number;
  flags: bigint;
  addr: bigint;
  /** File offset; meaningful only when the section is not SHT_NOBITS. */
  offset: number;
  size: number;
  link: number;
  info: number;
  addralign: bigint;
  entsize: number;
}

export interface ElfSegment {
  type: number;
  flags: number;
  offset: number;
  vaddr: bigint;
  paddr: bigint;
  filesz: number;
  memsz: bigint;
  align: bigint;
}

export interface ElfSymbol {
  name: string;
  value: bigint;
  size: bigint;
  /** STT_* (low nibble of st_info). */
  type: number;
  /** STB_* (high nibble of st_info). */
  bind: number;
  /** STV_* (low two bits of st_other). */
  visibility: number;
  /** Raw st_shndx: a section index, or a reserved value such as SHN_ABS (0xfff1). */
  shndx: number;
}

export interface ElfFile {
  endian: 'little' | 'big';
  type: number;
  machine: number;
  entry: bigint;
  sections: ElfSection[];
  segments: ElfSegment[];
  /** The parsed buffer; section data are views into it. */
  bytes: Uint8Array;
}

const utf8 = new TextDecoder('utf-8');

class Reader {
  private readonly view: DataView;
  constructor(
    readonly bytes: Uint8Array,
    private readonly little: boolean,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  u8(off: number): number {
    return this.view.getUint8(off);
  }
  u16(off: number): number {
    return this.view.getUint16(off, this.little);
  }
  u32(off: number): number {
    return this.view.getUint32(off, this.little);
  }
  u64(off: number): bigint {
    return this.view.getBigUint64(off, this.little);
  }
  /** A 64-bit field that must be a file offset or size: rejected unless it is a safe integer. */
  size64(off: number, what: string): number {
    const v = this.u64(off);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError(`${what} is absurdly large (${v})`);
    return Number(v);
  }
}

function checkRange(offset: number, length: number, total: number, what: string): void {
  if (offset > total || length > total - offset) {
    throw new ElfError(`${what} (offset ${offset}, ${length} bytes) lies outside the ${total}-byte file`);
  }
}

/** A NUL-terminated string at `off` inside `table`. */
function stringAt(table: Uint8Array, off: number, what: string): string {
  if (off >= table.length) throw new ElfError(`${what}: name offset ${off} is past the string table (${table.length} bytes)`);
  const end = table.indexOf(0, off);
  if (end < 0) throw new ElfError(`${what}: name at offset ${off} is not NUL-terminated`);
  return utf8.decode(table.subarray(off, end));
}

export function parseElf(bytes: Uint8Array): ElfFile {
  if (bytes.length < EHDR_SIZE) throw new ElfError(`file is ${bytes.length} bytes, too short for an ELF64 header`);
  if (bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    throw new ElfError('bad magic: not an ELF file');
  }
  if (bytes[4] !== 2) throw new ElfError(`ELF class ${bytes[4]} is not ELFCLASS64`);
  const data = bytes[5];
  if (data !== 1 && data !== 2) throw new ElfError(`ELF data encoding ${data} is neither little nor big endian`);
  if (bytes[6] !== 1) throw new ElfError(`ELF ident version ${bytes[6]} is not 1`);
  const r = new Reader(bytes, data === 1);

  const type = r.u16(16);
  const machine = r.u16(18);
  const entry = r.u64(24);
  const phoff = r.size64(32, 'e_phoff');
  const shoff = r.size64(40, 'e_shoff');
  const phentsize = r.u16(54);
  let phnum = r.u16(56);
  const shentsize = r.u16(58);
  let shnum = r.u16(60);
  let shstrndx = r.u16(62);

  // Extended numbering: the real counts live in section header 0 when they overflow 16 bits.
  if (shoff !== 0) {
    if (shentsize < SHDR_SIZE) throw new ElfError(`e_shentsize ${shentsize} is smaller than an ELF64 section header`);
    checkRange(shoff, shentsize, bytes.length, 'section header 0');
    if (shnum === 0) shnum = r.size64(shoff + 32, 'extended section count');
    if (shstrndx === SHN_XINDEX) shstrndx = r.u32(shoff + 40);
    if (phnum === PN_XNUM) phnum = r.u32(shoff + 44);
  } else {
    shnum = 0;
  }

  const sections: ElfSection[] = [];
  if (shnum > 0) {
    checkRange(shoff, shnum * shentsize, bytes.length, `section header table (${shnum} entries)`);
    for (let i = 0; i < shnum; i++) {
      const o = shoff + i * shentsize;
      const section: ElfSection = {
        index: i,
        name: '',
        type: r.u32(o + 4),
        flags: r.u64(o + 8),
        addr: r.u64(o + 16),
        offset: r.size64(o + 24, `section ${i} offset`),
        size: r.size64(o + 32, `section ${i} size`),
        link: r.u32(o + 40),
        info: r.u32(o + 44),
        addralign: r.u64(o + 48),
        entsize: r.size64(o + 56, `section ${i} entsize`),
      };
      if (section.type !== SHT_NOBITS && section.type !== SHT_NULL) {
        checkRange(section.offset, section.size, bytes.length, `section ${i} data`);
      }
      sections.push(section);
    }
    if (shstrndx !== SHN_UNDEF) {
      const strtab = sections[shstrndx];
      if (!strtab) throw new ElfError(`section name table index ${shstrndx} is out of range (${shnum} sections)`);
      if (strtab.type === SHT_NOBITS) throw new ElfError('section name table has no data (SHT_NOBITS)');
      const table = bytes.subarray(strtab.offset, strtab.offset + strtab.size);
      for (let i = 0; i < shnum; i++) {
        const nameOff = r.u32(shoff + i * shentsize);
        // Index 0 is the null section; an empty name table may only be paired with empty names.
        if (nameOff !== 0 || table.length > 0) sections[i]!.name = stringAt(table, nameOff, `section ${i}`);
      }
    }
  }

  const segments: ElfSegment[] = [];
  if (phnum > 0) {
    if (phentsize < PHDR_SIZE) throw new ElfError(`e_phentsize ${phentsize} is smaller than an ELF64 program header`);
    checkRange(phoff, phnum * phentsize, bytes.length, `program header table (${phnum} entries)`);
    for (let i = 0; i < phnum; i++) {
      const o = phoff + i * phentsize;
      const segment: ElfSegment = {
        type: r.u32(o),
        flags: r.u32(o + 4),
        offset: r.size64(o + 8, `segment ${i} offset`),
        vaddr: r.u64(o + 16),
        paddr: r.u64(o + 24),
        filesz: r.size64(o + 32, `segment ${i} file size`),
        memsz: r.u64(o + 40),
        align: r.u64(o + 48),
      };
      checkRange(segment.offset, segment.filesz, bytes.length, `segment ${i} data`);
      segments.push(segment);
    }
  }

  return { endian: data === 1 ? 'little' : 'big', type, machine, entry, sections, segments, bytes };
}

export function findSection(elf: ElfFile, name: string): ElfSection | undefined {
  return elf.sections.find((s) => s.name === name);
}

/** The bytes of a file-backed section (a view, no copy). */
export function sectionData(elf: ElfFile, section: ElfSection): Uint8Array {
  if (section.type === SHT_NOBITS) throw new ElfError(`section ${section.name || section.index} occupies no file space (SHT_NOBITS)`);
  if (section.type === SHT_NULL) return new Uint8Array(0);
  return elf.bytes.subarray(section.offset, section.offset + section.size);
}

/** Symbols of a SHT_SYMTAB or SHT_DYNSYM section, names taken from its linked string table. */
export function readSymbols(elf: ElfFile, section: ElfSection): ElfSymbol[] {
  const label = section.name || `section ${section.index}`;
  if (section.type !== SHT_SYMTAB && section.type !== SHT_DYNSYM) throw new ElfError(`${label} is not a symbol table`);
  if (section.entsize !== SYM_SIZE) throw new ElfError(`${label}: entry size ${section.entsize} is not ${SYM_SIZE}`);
  if (section.size % SYM_SIZE !== 0) throw new ElfError(`${label}: size ${section.size} is not a multiple of ${SYM_SIZE}`);
  const strSection = elf.sections[section.link];
  if (!strSection || strSection.type !== SHT_STRTAB) throw new ElfError(`${label}: linked section ${section.link} is not a string table`);
  const strings = sectionData(elf, strSection);
  const data = sectionData(elf, section);
  const r = new Reader(data, elf.endian === 'little');
  const symbols: ElfSymbol[] = [];
  for (let o = 0; o < data.length; o += SYM_SIZE) {
    const nameOff = r.u32(o);
    const info = r.u8(o + 4);
    symbols.push({
      name: nameOff === 0 ? '' : stringAt(strings, nameOff, `${label} symbol ${o / SYM_SIZE}`),
      value: r.u64(o + 8),
      size: r.u64(o + 16),
      type: info & 0xf,
      bind: info >> 4,
      visibility: r.u8(o + 5) & 0x3,
      shndx: r.u16(o + 6),
    });
  }
  return symbols;
}


/** Program header types the dynamic reader needs. */
export const PT_DYNAMIC = 2;
export const PT_INTERP = 3;

/** Dynamic section tags (d_tag) that readDynamic decodes. */
export const DT_NULL = 0;
export const DT_NEEDED = 1;
export const DT_STRTAB = 5;
export const DT_STRSZ = 10;
export const DT_SONAME = 14;
export const DT_RPATH = 15;
export const DT_RUNPATH = 29;

const DYN_SIZE = 16;

export interface ElfDynamic {
  /** DT_NEEDED sonames, in the order the loader resolves them. */
  needed: string[];
  soname?: string;
  rpath?: string;
  runpath?: string;
  /** The program interpreter (PT_INTERP), e.g. /lib64/ld-linux-x86-64.so.2. */
  interpreter?: string;
}

/** File offset of `length` bytes at virtual address `vaddr`, through the PT_LOAD segment that maps them from the file. */
function fileOffsetOf(elf: ElfFile, vaddr: bigint, length: number, what: string): number {
  for (const s of elf.segments) {
    if (s.type !== PT_LOAD || vaddr < s.vaddr) continue;
    const delta = vaddr - s.vaddr;
    if (delta + BigInt(length) <= BigInt(s.filesz)) return s.offset + Number(delta);
  }
  throw new ElfError(`${what} (address 0x${vaddr.toString(16)}, ${length} bytes) is not mapped from the file by any PT_LOAD segment`);
}

/**
 * The dynamic-linking view of an executable or shared object, read as the loader reads it:
 * PT_DYNAMIC for the entries, DT_STRTAB (a virtual address, mapped through PT_LOAD) for the
 * names, PT_INTERP for the interpreter. A static file yields no entries.
 */
export function readDynamic(elf: ElfFile): ElfDynamic {
  const out: ElfDynamic = { needed: [] };
  const interp = elf.segments.find((s) => s.type === PT_INTERP);
  if (interp) {
    const raw = elf.bytes.subarray(interp.offset, interp.offset + interp.filesz);
    const end = raw.indexOf(0);
    if (end < 0) throw new ElfError('PT_INTERP is not NUL-terminated');
    out.interpreter = utf8.decode(raw.subarray(0, end));
  }
  const dyn = elf.segments.find((s) => s.type === PT_DYNAMIC);
  if (!dyn) return out;
  const r = new Reader(elf.bytes.subarray(dyn.offset, dyn.offset + dyn.filesz), elf.endian === 'little');
  const entries: Array<{ tag: bigint; val: bigint }> = [];
  for (let o = 0; o + DYN_SIZE <= dyn.filesz; o += DYN_SIZE) {
    const tag = r.u64(o);
    if (tag === BigInt(DT_NULL)) break;
    entries.push({ tag, val: r.u64(o + 8) });
  }
  const value = (tag: number) => entries.find((e) => e.tag === BigInt(tag))?.val;
  const names = entries.filter((e) => [DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH].includes(Number(e.tag)));
  if (names.length === 0) return out;
  const strtab = value(DT_STRTAB);
  const strsz = value(DT_STRSZ);
  if (strtab === undefined || strsz === undefined) throw new ElfError('the dynamic section names libraries but has no DT_STRTAB/DT_STRSZ');
  if (strsz > BigInt(elf.bytes.length)) throw new ElfError(`DT_STRSZ ${strsz} is larger than the file`);
  const tableOffset = fileOffsetOf(elf, strtab, Number(strsz), 'the dynamic string table');
  const table = elf.bytes.subarray(tableOffset, tableOffset + Number(strsz));
  for (const e of names) {
    if (e.val >= BigInt(table.length)) throw new ElfError(`dynamic entry name offset ${e.val} is past the string table (${table.length} bytes)`);
    const name = stringAt(table, Number(e.val), `dynamic tag ${e.tag}`);
    const tag = Number(e.tag);
    if (tag === DT_NEEDED) out.needed.push(name);
    else if (tag === DT_SONAME) out.soname = name;
    else if (tag === DT_RPATH) out.rpath = name;
    else out.runpath = name;
  }
  return out;
}
