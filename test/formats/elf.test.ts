import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EM_X86_64, ET_REL, ElfError, findSection, parseElf, readSymbols, sectionData, SHT_NOBITS, SHT_PROGBITS, SHT_STRTAB, SHT_SYMTAB } from '../../src/formats/elf.ts';
import { ModinfoError, parseModinfo } from '../../src/formats/modinfo.ts';
import { buildGuest } from '../../src/guest/build.ts';

// ---- a synthetic ELF64 writer, so hostile variants can be made field by field ----

interface SynthSection {
  name: string;
  type: number;
  data?: Uint8Array;
  link?: number;
  info?: number;
  entsize?: number;
  /** For SHT_NOBITS: the size without file bytes. */
  size?: number;
}

/** ELF64 REL file: header, section data, .shstrtab, then the section header table. */
function synthElf(sections: SynthSection[], opts: { bigEndian?: boolean; extendedNumbering?: boolean } = {}): Buffer {
  const little = !opts.bigEndian;
  const all: SynthSection[] = [{ name: '', type: 0 }, ...sections];
  const names: number[] = [];
  let shstr = Buffer.from([0]);
  for (const s of [...all, { name: '.shstrtab', type: SHT_STRTAB }]) {
    if (s.name === '') {
      names.push(0);
      continue;
    }
    names.push(shstr.length);
    shstr = Buffer.concat([shstr, Buffer.from(`${s.name}\0`)]);
  }
  all.push({ name: '.shstrtab', type: SHT_STRTAB, data: shstr });
  const chunks: Buffer[] = [Buffer.alloc(64)];
  const offsets: number[] = [];
  let off = 64;
  for (const s of all) {
    offsets.push(off);
    if (s.data && s.type !== SHT_NOBITS) {
      chunks.push(Buffer.from(s.data));
      off += s.data.length;
    }
  }
  const pad = (8 - (off % 8)) % 8;
  chunks.push(Buffer.alloc(pad));
  const shoff = off + pad;
  const table = Buffer.alloc(64 * all.length);
  const w16 = (b: Buffer, v: number, o: number) => (little ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o));
  const w32 = (b: Buffer, v: number, o: number) => (little ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o));
  const w64 = (b: Buffer, v: bigint, o: number) => (little ? b.writeBigUInt64LE(v, o) : b.writeBigUInt64BE(v, o));
  all.forEach((s, i) => {
    const o = i * 64;
    w32(table, names[i]!, o);
    w32(table, s.type, o + 4);
    w64(table, BigInt(offsets[i]!), o + 24);
    w64(table, BigInt(s.size ?? s.data?.length ?? 0), o + 32);
    w32(table, s.link ?? 0, o + 40);
    w32(table, s.info ?? 0, o + 44);
    w64(table, 1n, o + 48);
    w64(table, BigInt(s.entsize ?? 0), o + 56);
  });
  const h = chunks[0]!;
  h.set([0x7f, 0x45, 0x4c, 0x46, 2, little ? 1 : 2, 1]);
  w16(h, ET_REL, 16);
  w16(h, EM_X86_64, 18);
  w32(h, 1, 20);
  w64(h, BigInt(shoff), 40);
  w16(h, 64, 52);
  w16(h, 64, 58);
  if (opts.extendedNumbering) {
    // Counts too large for 16 bits live in section 0: sh_size = count, sh_link = shstrndx.
    w16(h, 0, 60);
    w16(h, 0xffff, 62);
    w64(table, BigInt(all.length), 32);
    w32(table, all.length - 1, 40);
  } else {
    w16(h, all.length, 60);
    w16(h, all.length - 1, 62);
  }
  chunks.push(table);
  return Buffer.concat(chunks);
}

function symtabFor(names: string[], little = true): { symtab: Buffer; strtab: Buffer } {
  let strtab = Buffer.from([0]);
  const symtab = Buffer.alloc(24 * (names.length + 1));
  names.forEach((n, i) => {
    const o = 24 * (i + 1);
    if (little) symtab.writeUInt32LE(strtab.length, o);
    else symtab.writeUInt32BE(strtab.length, o);
    symtab[o + 4] = (1 << 4) | 2; // GLOBAL FUNC
    if (little) symtab.writeBigUInt64LE(0xffffffff81000000n + BigInt(i), o + 8);
    else symtab.writeBigUInt64BE(0xffffffff81000000n + BigInt(i), o + 8);
    strtab = Buffer.concat([strtab, Buffer.from(`${n}\0`)]);
  });
  return { symtab, strtab };
}

function withTemp<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-elf-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- readelf as the oracle ----

interface ReadelfSection {
  index: number;
  name: string;
  type: string;
  offset: number;
  size: number;
}

function readelfSections(file: string): ReadelfSection[] {
  const out = execFileSync('readelf', ['-S', '-W', file], { encoding: 'utf8' });
  const rows: ReadelfSection[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*\[\s*(\d+)\]\s(.*)$/.exec(line);
    if (!m || m[1] === '0') continue;
    // Index 0 (the only unnamed section) is skipped, so the columns are NAME TYPE ADDR OFF SIZE ...
    const f = m[2]!.trim().split(/\s+/);
    rows.push({ index: Number(m[1]), name: f[0]!, type: f[1]!, offset: Number.parseInt(f[3]!, 16), size: Number.parseInt(f[4]!, 16) });
  }
  return rows;
}

function readelfSymbolNames(file: string, table: string): string[] {
  const out = execFileSync('readelf', ['-s', '-W', file], { encoding: 'utf8' });
  const section = out.split(/\n(?=Symbol table ')/).find((s) => s.includes(`Symbol table '${table}'`));
  assert.ok(section, `readelf shows no ${table}`);
  return section
    .split('\n')
    .filter((l) => /^\s+\d+:/.test(l))
    .map((l) => {
      const f = l.trim().split(/\s+/);
      return f.slice(7).join(' ').replace(/@.*$/, '');
    });
}

// ---- real kernel modules, from the cached guest build's initramfs ----

function extractModules(initrd: string, into: string): string[] {
  execFileSync('cpio', ['-i', '-d', '--quiet', 'lib/modules/*'], { cwd: into, input: execFileSync('gzip', ['-dc', initrd], { maxBuffer: 1 << 28 }) });
  const dir = join(into, 'lib', 'modules');
  return readdirSync(dir).map((f) => join(dir, f));
}

test('sections, symbols and .modinfo of the real kernel modules agree with readelf', { timeout: 600_000 }, async () => {
  const guest = await buildGuest();
  withTemp((dir) => {
    const modules = extractModules(guest.initrd, dir);
    assert.ok(modules.length >= 5, `expected the virtio modules in the initramfs, got ${modules.length}`);
    for (const path of modules) {
      const bytes = readFileSync(path);
      const elf = parseElf(bytes);
      assert.equal(elf.type, ET_REL);
      assert.equal(elf.machine, EM_X86_64);
      assert.equal(elf.endian, 'little');

      const ours = elf.sections.slice(1).map((s) => ({ index: s.index, name: s.name, offset: s.offset, size: s.size }));
      const theirs = readelfSections(path).map(({ index, name, offset, size }) => ({ index, name, offset, size }));
      assert.deepEqual(ours, theirs, `section table of ${path}`);

      const symtab = findSection(elf, '.symtab');
      assert.ok(symtab);
      // readelf names section symbols (STT_SECTION, 3) after their section.
      assert.deepEqual(
        readSymbols(elf, symtab).map((s) => (s.type === 3 && s.name === '' ? elf.sections[s.shndx]!.name : s.name)),
        readelfSymbolNames(path, '.symtab'),
        `symbols of ${path}`,
      );

      // .modinfo: our parser against readelf's string dump of the same section.
      const info = parseModinfo(sectionData(elf, findSection(elf, '.modinfo')!));
      const dump = execFileSync('readelf', ['-p', '.modinfo', path], { encoding: 'utf8' });
      const strings = [...dump.matchAll(/^\s*\[\s*[0-9a-f]+\]\s\s(.*)$/gm)].map((m) => m[1]!);
      assert.deepEqual(
        info.entries.map((e) => `${e.key}=${e.value}`),
        strings,
      );
      const dependsLine = strings.find((s) => s.startsWith('depends='));
      const expected = dependsLine === undefined || dependsLine === 'depends=' ? [] : dependsLine.slice('depends='.length).split(',').map((d) => d.replaceAll('-', '_'));
      assert.deepEqual(info.depends, expected);
      assert.equal(info.vermagic?.split(' ')[0], guest.kernelVersion);
    }
  });
});

test('virtio_pci depends on virtio_ring and virtio (real module)', { timeout: 600_000 }, async () => {
  const guest = await buildGuest();
  withTemp((dir) => {
    const path = extractModules(guest.initrd, dir).find((p) => p.endsWith('/virtio_pci.ko'));
    assert.ok(path);
    const elf = parseElf(readFileSync(path));
    const info = parseModinfo(sectionData(elf, findSection(elf, '.modinfo')!));
    assert.equal(info.name, 'virtio_pci');
    assert.ok(info.depends.includes('virtio_ring') && info.depends.includes('virtio'), info.depends.join(','));
  });
});

test('program headers of the static busybox agree with readelf -l', () => {
  const path = '/bin/busybox';
  const elf = parseElf(readFileSync(path));
  const out = execFileSync('readelf', ['-l', '-W', path], { encoding: 'utf8' });
  const rows = out
    .split('\n')
    .filter((l) => /^\s+[A-Z_]+\s+0x[0-9a-f]+\s+0x/.test(l))
    .map((l) => l.trim().split(/\s+/));
  assert.equal(elf.segments.length, rows.length);
  elf.segments.forEach((s, i) => {
    const r = rows[i]!;
    assert.equal(s.offset, Number.parseInt(r[1]!, 16));
    assert.equal(s.vaddr, BigInt(r[2]!));
    assert.equal(s.filesz, Number.parseInt(r[4]!, 16));
    assert.equal(s.memsz, BigInt(r[5]!));
  });
  assert.equal(elf.entry, BigInt(/Entry point (0x[0-9a-f]+)/.exec(out)![1]!));
});

test('synthetic ELF files, little and big endian, with and without extended numbering, match readelf', () => {
  for (const bigEndian of [false, true]) {
    for (const extendedNumbering of [false, true]) {
      const { symtab, strtab } = symtabFor(['start_kernel', 'init_task', 'swapper_pg_dir'], !bigEndian);
      const file = synthElf(
        [
          { name: '.text', type: SHT_PROGBITS, data: Buffer.from('code') },
          { name: '.bss', type: SHT_NOBITS, size: 1 << 20 },
          { name: '.symtab', type: SHT_SYMTAB, data: symtab, link: 4, info: 1, entsize: 24 },
          { name: '.strtab', type: SHT_STRTAB, data: strtab },
        ],
        { bigEndian, extendedNumbering },
      );
      const elf = parseElf(file);
      assert.equal(elf.endian, bigEndian ? 'big' : 'little');
      assert.deepEqual(
        elf.sections.map((s) => s.name),
        ['', '.text', '.bss', '.symtab', '.strtab', '.shstrtab'],
      );
      assert.equal(Buffer.from(sectionData(elf, findSection(elf, '.text')!)).toString(), 'code');
      assert.throws(() => sectionData(elf, findSection(elf, '.bss')!), ElfError);
      const symbols = readSymbols(elf, findSection(elf, '.symtab')!);
      assert.deepEqual(
        symbols.map((s) => [s.name, s.value]),
        [
          ['', 0n],
          ['start_kernel', 0xffffffff81000000n],
          ['init_task', 0xffffffff81000001n],
          ['swapper_pg_dir', 0xffffffff81000002n],
        ],
      );
      assert.equal(symbols[1]!.type, 2);
      assert.equal(symbols[1]!.bind, 1);
      withTemp((dir) => {
        const path = join(dir, 'synth.o');
        writeFileSync(path, file);
        assert.deepEqual(
          readelfSections(path).map((s) => s.name),
          elf.sections.slice(1).map((s) => s.name),
        );
        assert.deepEqual(readelfSymbolNames(path, '.symtab'), symbols.map((s) => s.name));
      });
    }
  }
});

// ---- hostile input ----

function valid(): Buffer {
  const { symtab, strtab } = symtabFor(['a']);
  return synthElf([
    { name: '.text', type: SHT_PROGBITS, data: Buffer.from('code') },
    { name: '.symtab', type: SHT_SYMTAB, data: symtab, link: 3, info: 1, entsize: 24 },
    { name: '.strtab', type: SHT_STRTAB, data: strtab },
  ]);
}

function patched(fn: (b: Buffer, shoff: number) => void): Buffer {
  const b = valid();
  fn(b, Number(b.readBigUInt64LE(40)));
  return b;
}

test('hostile ELF headers and tables are refused with clear errors', () => {
  const cases: Array<[string, Uint8Array, RegExp]> = [
    ['empty', new Uint8Array(0), /too short/],
    ['truncated header', valid().subarray(0, 40), /too short/],
    ['bad magic', patched((b) => b.write('MZ', 0)), /bad magic/],
    ['32-bit class', patched((b) => (b[4] = 1)), /ELFCLASS64/],
    ['bad data encoding', patched((b) => (b[5] = 7)), /endian/],
    ['bad ident version', patched((b) => (b[6] = 9)), /version/],
    ['section table past EOF', patched((b) => b.writeBigUInt64LE(BigInt(b.length - 10), 40)), /outside/],
    ['absurd e_shoff', patched((b) => b.writeBigUInt64LE(1n << 62n, 40)), /absurdly large/],
    ['absurd section count', patched((b) => b.writeUInt16LE(0xfff0, 60)), /section header table \(65520 entries\).*outside/],
    ['absurd extended count', patched((b, shoff) => (b.writeUInt16LE(0, 60), b.writeBigUInt64LE(1n << 40n, shoff + 32))), /outside/],
    ['tiny e_shentsize', patched((b) => b.writeUInt16LE(16, 58)), /e_shentsize/],
    ['section data past EOF', patched((b, shoff) => b.writeBigUInt64LE(BigInt(b.length), shoff + 64 + 32)), /section 1 data.*outside/],
    ['absurd section size', patched((b, shoff) => b.writeBigUInt64LE(0xffffffffffffffffn, shoff + 64 + 32)), /absurdly large/],
    ['name table index out of range', patched((b) => b.writeUInt16LE(99, 62)), /out of range/],
    ['name offset past the name table', patched((b, shoff) => b.writeUInt32LE(0xffffff, shoff + 64)), /past the string table/],
    ['program headers past EOF', patched((b) => (b.writeBigUInt64LE(BigInt(b.length), 32), b.writeUInt16LE(56, 54), b.writeUInt16LE(3, 56))), /program header table.*outside/],
  ];
  for (const [what, bytes, message] of cases) {
    assert.throws(() => parseElf(bytes), (err: unknown) => err instanceof ElfError && message.test(err.message), what);
  }
  // Cut anywhere inside the section table or the data it points at: never a crash, always ElfError.
  const whole = valid();
  for (let len = 64; len < whole.length; len += 7) {
    assert.throws(() => parseElf(whole.subarray(0, len)), ElfError, `truncated to ${len}`);
  }
});

test('hostile symbol tables are refused', () => {
  const elf = parseElf(valid());
  const symtab = findSection(elf, '.symtab')!;
  assert.throws(() => readSymbols(elf, findSection(elf, '.text')!), /not a symbol table/);
  assert.throws(() => readSymbols(elf, { ...symtab, entsize: 16 }), /entry size/);
  assert.throws(() => readSymbols(elf, { ...symtab, size: symtab.size - 1 }), /multiple of 24/);
  assert.throws(() => readSymbols(elf, { ...symtab, link: 1 }), /not a string table/);
  const badName = patched((b) => {
    const e = parseElf(b);
    b.writeUInt32LE(1000, findSection(e, '.symtab')!.offset + 24);
  });
  const e = parseElf(badName);
  assert.throws(() => readSymbols(e, findSection(e, '.symtab')!), /past the string table/);
});

test('modinfo: parsing, padding, repeated keys and hostile entries', () => {
  const enc = (...s: string[]) => Buffer.from(s.join('\0') + '\0');
  const info = parseModinfo(enc('alias=pci:v1', '', '', 'alias=pci:v2', 'depends=virtio-ring,virtio', 'name=virtio_pci', 'vermagic=6.1.0 SMP '));
  assert.deepEqual(
    info.entries.filter((e) => e.key === 'alias').map((e) => e.value),
    ['pci:v1', 'pci:v2'],
  );
  assert.deepEqual(info.depends, ['virtio_ring', 'virtio']);
  assert.equal(info.name, 'virtio_pci');
  assert.equal(info.vermagic, '6.1.0 SMP ');
  assert.deepEqual(parseModinfo(enc('depends=')).depends, []);
  assert.deepEqual(parseModinfo(new Uint8Array(0)).entries, []);

  const bad: Array<[Uint8Array, RegExp]> = [
    [enc('no equals sign'), /not key=value/],
    [enc('=value'), /not key=value/],
    [enc('bad key=1'), /malformed/],
    [enc('depends=a', 'depends=b'), /more than one depends/],
    [enc('name=a', 'name=b'), /more than one name/],
    [enc('depends=ok,../../etc'), /malformed module name/],
    [enc('name=x y'), /malformed/],
    [Buffer.from([0x6e, 0x61, 0x6d, 0x65, 0x3d, 0xff, 0xfe, 0]), /UTF-8/],
  ];
  for (const [bytes, message] of bad) assert.throws(() => parseModinfo(bytes), (err: unknown) => err instanceof ModinfoError && message.test(err.message));
});
