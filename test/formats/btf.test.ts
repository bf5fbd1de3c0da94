import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseBtf } from '../../src/formats/btf/parse-btf.ts';
import { BtfError, type BtfType } from '../../src/formats/btf/btf-types.ts';
import type { Btf } from '../../src/formats/btf/btf.ts';
import { unpackBzImage } from '../../src/formats/bzimage.ts';
import { findSection, parseElf, sectionData } from '../../src/formats/elf.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { everyKind, info, strOff, synthBtf, type Synth } from './btf-synth.ts';

// ---- bpftool as the oracle: every type of a real blob, field by field ----

/** Our record in the shape of `bpftool -j btf dump`. */
function asBpftool(t: BtfType): Record<string, unknown> {
  const name = t.name || '(anon)';
  const head = { id: t.id, kind: t.kind, name };
  switch (t.kind) {
    case 'VOID':
      throw new Error('void is not dumped');
    case 'INT': {
      const encoding = t.signed ? 'SIGNED' : t.char ? 'CHAR' : t.bool ? 'BOOL' : '(none)';
      return { ...head, size: t.size, bits_offset: t.bitOffset, nr_bits: t.bits, encoding };
    }
    case 'PTR':
    case 'TYPEDEF':
    case 'VOLATILE':
    case 'CONST':
    case 'RESTRICT':
    case 'TYPE_TAG':
      return { ...head, type_id: t.type };
    case 'ARRAY':
      return { ...head, type_id: t.type, index_type_id: t.indexType, nr_elems: t.nelems };
    case 'STRUCT':
    case 'UNION':
      return {
        ...head,
        size: t.size,
        vlen: t.members.length,
        members: t.members.map((m) => ({
          name: m.name || '(anon)',
          type_id: m.type,
          bits_offset: m.bitOffset,
          ...(m.bitfieldSize ? { bitfield_size: m.bitfieldSize } : {}),
        })),
      };
    case 'ENUM':
    case 'ENUM64':
      return {
        ...head,
        encoding: t.signed ? 'SIGNED' : 'UNSIGNED',
        size: t.size,
        vlen: t.values.length,
        // bpftool 7.1's JSON prints an unsigned 32-bit ENUM value sign-extended to 64 bits (its raw
        // format prints it right; see the e820_type check below). JSON.parse rounds beyond 2^53
        // exactly as Number() does.
        values: t.values.map((v) => ({
          name: v.name,
          val: Number(t.kind === 'ENUM' && !t.signed ? BigInt.asUintN(64, BigInt.asIntN(32, v.value)) : v.value),
        })),
      };
    case 'FWD':
      return { ...head, fwd_kind: t.union ? 'union' : 'struct' };
    case 'FUNC':
      return { ...head, type_id: t.type, linkage: t.linkage };
    case 'FUNC_PROTO':
      return { ...head, ret_type_id: t.returnType, vlen: t.params.length, params: t.params.map((p) => ({ name: p.name || '(anon)', type_id: p.type })) };
    case 'VAR':
      return { ...head, type_id: t.type, linkage: t.linkage };
    case 'DATASEC':
      return { ...head, size: t.size, vlen: t.vars.length, vars: t.vars.map((v) => ({ type_id: v.type, offset: v.offset, size: v.size })) };
    case 'FLOAT':
      return { ...head, size: t.size };
    case 'DECL_TAG':
      return { ...head, type_id: t.type, component_idx: t.componentIdx };
  }
}

function compareWithBpftool(btf: Btf, fileForBpftool: string): Set<string> {
  const dump = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', fileForBpftool], { maxBuffer: 1 << 30 }).toString()) as {
    types: Array<Record<string, unknown> & { id: number }>;
  };
  assert.equal(btf.types.length, dump.types.length + 1, 'type count (ours includes void)');
  const kinds = new Set<string>();
  for (const theirs of dump.types) {
    const ours = btf.types[theirs.id]!;
    kinds.add(ours.kind);
    assert.deepEqual(asBpftool(ours), theirs, `type ${theirs.id}`);
  }
  return kinds;
}

test('BTF: every type of a raw BTF blob (the host kernel\'s, else the guest kernel\'s .BTF) matches bpftool', async () => {
  // A raw blob as the kernel exports it in sysfs; a host without one gets the guest kernel's section as a raw file.
  let file = '/sys/kernel/btf/vmlinux';
  let dir: string | undefined;
  if (!existsSync(file)) {
    const { vmlinux } = unpackBzImage(readFileSync((await buildGuest()).kernel));
    const elf = parseElf(vmlinux);
    dir = mkdtempSync(join(tmpdir(), 'vmseal-btf-raw-'));
    file = join(dir, 'vmlinux.btf');
    writeFileSync(file, sectionData(elf, findSection(elf, '.BTF')!));
  }
  try {
    const kinds = compareWithBpftool(parseBtf(readFileSync(file)), file);
    for (const k of ['INT', 'PTR', 'ARRAY', 'STRUCT', 'UNION', 'ENUM', 'FWD', 'TYPEDEF', 'CONST', 'FUNC', 'FUNC_PROTO', 'VAR', 'DATASEC']) {
      assert.ok(kinds.has(k), `the BTF has ${k}`);
    }
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});

test('BTF: every type of the guest kernel (.BTF of the Debian vmlinux) matches bpftool on the ELF', async () => {
  const guest = await buildGuest();
  const { vmlinux } = unpackBzImage(readFileSync(guest.kernel));
  const elf = parseElf(vmlinux);
  const btf = parseBtf(sectionData(elf, findSection(elf, '.BTF')!));
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-btf-'));
  try {
    writeFileSync(join(dir, 'vmlinux'), vmlinux);
    const kinds = compareWithBpftool(btf, join(dir, 'vmlinux'));
    assert.ok(kinds.has('ENUM64') && kinds.has('FLOAT') && kinds.has('RESTRICT') && kinds.has('VOLATILE'));
    // A kind_flag struct with bitfields, and the helpers on real data.
    const desc = btf.findByName('STRUCT', 'desc_struct')!;
    assert.deepEqual(desc.members.find((m) => m.name === 'type'), { name: 'type', type: desc.members[2]!.type, bitOffset: 40, bitfieldSize: 4 });
    const raw = execFileSync('bpftool', ['btf', 'dump', 'file', join(dir, 'vmlinux'), 'format', 'raw'], { maxBuffer: 1 << 30 }).toString();
    const e820 = btf.findByName('ENUM', 'e820_type')!;
    const soft = e820.values.find((v) => v.name === 'E820_TYPE_SOFT_RESERVED')!;
    assert.ok(raw.includes(`'E820_TYPE_SOFT_RESERVED' val=${soft.value}\n`), `raw dump shows ${soft.value}`);
    assert.equal(soft.value, 0xefffffffn);
    const task = btf.findByName('STRUCT', 'task_struct')!;
    assert.equal(btf.sizeOf(task.id), task.size);
    const comm = task.members.find((m) => m.name === 'comm')!;
    assert.equal(btf.sizeOf(comm.type), 16);
    assert.equal(btf.resolve(btf.findByName('TYPEDEF', 'pid_t')!.id).name, 'int');
    assert.equal(btf.pointerSize, 8);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('BTF: a synthetic blob with every kind parses the same in both byte orders', () => {
  const s = everyKind();
  for (const bigEndian of [false, true]) {
    const btf = parseBtf(synthBtf(s, { bigEndian }));
    assert.equal(btf.endian, bigEndian ? 'big' : 'little');
    const t = btf.types;
    assert.equal(t.length, 22);
    assert.deepEqual(t[1], { kind: 'INT', id: 1, name: 'int', size: 4, signed: true, char: false, bool: false, bitOffset: 0, bits: 32 });
    assert.deepEqual(t[4], { kind: 'ARRAY', id: 4, name: '', type: 1, indexType: 1, nelems: 4 });
    assert.deepEqual(t[5], {
      kind: 'STRUCT',
      id: 5,
      name: 'flags',
      size: 8,
      members: [
        { name: 'a', type: 1, bitOffset: 0, bitfieldSize: 3 },
        { name: 'b', type: 1, bitOffset: 3, bitfieldSize: 5 },
        { name: 'c', type: 2, bitOffset: 0, bitfieldSize: 0 },
      ],
    });
    assert.equal(t[6]!.kind, 'UNION');
    assert.deepEqual(t[8], { kind: 'ENUM', id: 8, name: 'color', size: 4, signed: true, values: [{ name: 'RED', value: -1n }, { name: 'BIG', value: 7n }] });
    assert.deepEqual(t[9], { kind: 'ENUM64', id: 9, name: 'ev', size: 8, signed: false, values: [{ name: 'BIG', value: (1n << 63n) + 1n }] });
    assert.deepEqual(t[10], { kind: 'FWD', id: 10, name: 'f', union: true });
    assert.deepEqual(t[16], { kind: 'FUNC_PROTO', id: 16, name: '', returnType: 1, params: [{ name: 'a', type: 1 }, { name: '', type: 3 }] });
    assert.deepEqual(t[17], { kind: 'FUNC', id: 17, name: 'f', type: 16, linkage: 'global' });
    assert.deepEqual(t[18], { kind: 'VAR', id: 18, name: 'myvar', type: 7, linkage: 'global' });
    assert.deepEqual(t[19], { kind: 'DATASEC', id: 19, name: '.data', size: 16, vars: [{ type: 18, offset: 0, size: 16 }] });
    assert.deepEqual(t[20], { kind: 'FLOAT', id: 20, name: 'double', size: 8 });
    assert.deepEqual(t[21], { kind: 'DECL_TAG', id: 21, name: 'tag', type: 7, componentIdx: -1 });
    // typedef -> volatile -> const -> restrict -> type_tag -> int
    assert.equal(btf.resolve(11).id, 1);
    assert.equal(btf.sizeOf(11), 4);
    assert.equal(btf.sizeOf(4), 16);
    assert.equal(btf.sizeOf(3), 8);
    assert.equal(btf.sizeOf(18), 16);
    assert.equal(btf.findByName('STRUCT', 'node')?.id, 7);
    assert.equal(btf.findByName('FUNC', 'f')?.id, 17);
    assert.equal(btf.findByName('FWD', 'f')?.id, 10);
    assert.equal(btf.findByName('STRUCT', 'nope'), undefined);
    assert.throws(() => btf.sizeOf(16), BtfError);
  }
});

test('BTF: the synthetic blob matches bpftool too (an independent reader of what our writer made)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-btf-'));
  try {
    const path = join(dir, 'synth.btf');
    const bytes = synthBtf(everyKind());
    writeFileSync(path, bytes);
    compareWithBpftool(parseBtf(bytes), path);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('BTF: hostile blobs fail fast with BtfError', () => {
  const s = everyKind();
  const good = synthBtf(s);
  const bad: Array<[string, Uint8Array]> = [
    ['empty', new Uint8Array(0)],
    ['bad magic', synthBtf(s, { patch: (v) => v.setUint16(0, 0x1234, true) })],
    ['version 2', synthBtf(s, { patch: (v) => v.setUint8(2, 2) })],
    ['truncated', good.subarray(0, good.length - 10)],
    ['truncated mid-record', synthBtf({ ...s, records: [...s.records, [1, info(1, 0)]] })],
    ['header length past end', synthBtf(s, { patch: (v, l) => v.setUint32(4, 0xffffff00, l) })],
    ['type section past end', synthBtf(s, { patch: (v, l) => v.setUint32(12, 0x7ffffff0, l) })],
    ['string section past end', synthBtf(s, { patch: (v, l) => v.setUint32(20, 0x7ffffff0, l) })],
    ['string offset out of range', synthBtf({ ...s, records: [...s.records, [0xfffff, info(2, 0), 0]] })],
    ['unterminated strings', synthBtf(s, { patch: (v, l) => v.setUint8(v.byteLength - 1, 0x41) })],
    ['unknown kind', synthBtf({ ...s, records: [...s.records, [0, info(25, 0), 0]] })],
    ['huge vlen', synthBtf({ ...s, records: [...s.records, [0, info(4, 0xffff), 8]] })],
    ['reference past the last type', synthBtf({ ...s, records: [...s.records, [0, info(2, 0), 999999]] })],
    ['INT wider than its size', synthBtf({ ...s, records: [...s.records, [0, info(1, 0), 1, 64]] })],
    ['bad FUNC linkage', synthBtf({ ...s, records: [...s.records, [0, info(12, 9), 16]] })],
  ];
  for (const [what, bytes] of bad) {
    assert.throws(() => parseBtf(bytes), BtfError, what);
  }
});

test('BTF: typedef loops and self-nested arrays are reported, not followed forever', () => {
  const s: Synth = { records: [], strings: ['a', 'b'] };
  s.records.push(
    [strOff(s, 'a'), info(8, 0), 2], // 1 typedef a -> b
    [strOff(s, 'b'), info(8, 0), 1], // 2 typedef b -> a
    [0, info(3, 0), 0, 3, 2, 2], // 3 array of itself
    [0, info(2, 0), 4], // 4 pointer to itself: fine, a pointer has a size
  );
  const btf = parseBtf(synthBtf(s));
  assert.throws(() => btf.resolve(1), /cyclic/);
  assert.throws(() => btf.sizeOf(2), /cyclic/);
  assert.throws(() => btf.sizeOf(3), /cyclic/);
  assert.equal(btf.sizeOf(4), 8);
});

test('BTF: a maximal hostile type count is refused without a huge allocation', () => {
  // 0xfffff + 1 records of 12 bytes: just over BTF_MAX_TYPE.
  const count = 0x100000;
  const typeLen = count * 12;
  const out = new Uint8Array(24 + typeLen + 1);
  const v = new DataView(out.buffer);
  v.setUint16(0, 0xeb9f, true);
  v.setUint8(2, 1);
  v.setUint32(4, 24, true);
  v.setUint32(12, typeLen, true);
  v.setUint32(16, typeLen, true);
  v.setUint32(20, 1, true);
  for (let i = 0; i < count; i++) v.setUint32(24 + i * 12 + 4, info(2, 0), true);
  assert.throws(() => parseBtf(out), /more than/);
});
