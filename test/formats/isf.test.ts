import { test } from 'node:test';
import assert from 'node:assert/strict';
import { btfToIsf, convertBtfToIsf } from '../../src/formats/btf-to-isf.ts';
import { parseBtf } from '../../src/formats/btf/parse-btf.ts';
import { fieldOffset, IsfError, parseIsf, parseIsfText, serializeIsf } from '../../src/formats/isf.ts';
import { everyKind, info, strOff, synthBtf, type Synth } from './btf-synth.ts';

/**
 * A Linux ISF written by hand from Volatility 3's schema (schema-6.x.json) in the shape dwarf2json
 * emits: a kernel address above 2^53 written as a bare JSON integer, a bitfield, an anonymous union
 * member, nested pointer/array descriptors, a 64-bit enum constant and linux_banner's constant_data.
 */
const VOLATILITY_ISF = `{
  "metadata": {
    "format": "6.2.0",
    "producer": { "name": "dwarf2json", "version": "0.8.0", "datetime": "2024-01-02T03:04:05.678901234Z" },
    "linux": {
      "symbols": [{ "kind": "system-map", "name": "System.map-6.1.0", "hash_type": "sha256", "hash_value": "00ff" }],
      "types": [{ "kind": "dwarf", "name": "vmlinux-6.1.0", "hash_type": "sha256", "hash_value": "abcdef" }]
    }
  },
  "base_types": {
    "char": { "size": 1, "signed": true, "kind": "char", "endian": "little" },
    "int": { "size": 4, "signed": true, "kind": "int", "endian": "little" },
    "unsigned int": { "size": 4, "signed": false, "kind": "int", "endian": "little" },
    "long unsigned int": { "size": 8, "signed": false, "kind": "int", "endian": "little" },
    "pointer": { "size": 8, "signed": false, "kind": "int", "endian": "little" },
    "void": { "size": 0, "signed": false, "kind": "void", "endian": "little" }
  },
  "user_types": {
    "list_head": {
      "kind": "struct", "size": 16,
      "fields": {
        "next": { "type": { "kind": "pointer", "subtype": { "kind": "struct", "name": "list_head" } }, "offset": 0 },
        "prev": { "type": { "kind": "pointer", "subtype": { "kind": "struct", "name": "list_head" } }, "offset": 8 }
      }
    },
    "unnamed_1f2e3d": {
      "kind": "union", "size": 8,
      "fields": { "a": { "type": { "kind": "base", "name": "long unsigned int" }, "offset": 0 } }
    },
    "task_struct": {
      "kind": "struct", "size": 64,
      "fields": {
        "flags": { "type": { "kind": "bitfield", "bit_position": 3, "bit_length": 5, "type": { "kind": "base", "name": "unsigned int" } }, "offset": 4 },
        "unnamed_field_1": { "type": { "kind": "union", "name": "unnamed_1f2e3d" }, "offset": 8, "anonymous": true },
        "tasks": { "type": { "kind": "struct", "name": "list_head" }, "offset": 16 },
        "comm": { "type": { "kind": "array", "count": 16, "subtype": { "kind": "base", "name": "char" } }, "offset": 32 },
        "fn": { "type": { "kind": "pointer", "subtype": { "kind": "function" } }, "offset": 48 },
        "argv": { "type": { "kind": "pointer", "subtype": { "kind": "pointer", "subtype": { "kind": "base", "name": "char" } } }, "offset": 56 }
      }
    }
  },
  "enums": {
    "hmm_pfn_flags": { "size": 8, "base": "long unsigned int", "constants": { "HMM_PFN_VALID": 9223372036854775808, "HMM_PFN_ORDER_SHIFT": 56 } }
  },
  "symbols": {
    "init_task": { "address": 18446744071606217280, "type": { "kind": "struct", "name": "task_struct" } },
    "linux_banner": { "address": 18446744071596802016, "constant_data": "TGludXggdmVyc2lvbiA2LjEuMAoA" },
    "_text": { "address": 18446744071578845184 }
  }
}`;

test('ISF: a Volatility-schema profile parses with exact 64-bit integers and round-trips', () => {
  const p = parseIsfText(VOLATILITY_ISF);
  assert.equal(p.symbols.init_task!.address, 0xffffffff82a1aa40n);
  assert.equal(p.symbols._text!.address, 0xffffffff81000000n);
  assert.equal(p.enums.hmm_pfn_flags!.constants.HMM_PFN_VALID, 1n << 63n);
  assert.equal(Buffer.from(p.symbols.linux_banner!.constant_data!, 'base64').toString('latin1'), 'Linux version 6.1.0\n\0');
  assert.deepEqual(p.user_types.task_struct!.fields.flags!.type, { kind: 'bitfield', bit_position: 3, bit_length: 5, type: { kind: 'base', name: 'unsigned int' } });
  // Anonymous members are searched as C does.
  assert.equal(fieldOffset(p, 'task_struct', 'a'), 8);
  assert.equal(fieldOffset(p, 'task_struct', 'tasks.prev'), 24);
  assert.throws(() => fieldOffset(p, 'task_struct', 'nope'), IsfError);

  const text = serializeIsf(p);
  assert.match(text, /"address":18446744071606217280[,}]/);
  assert.match(text, /"HMM_PFN_VALID":9223372036854775808[,}]/);
  assert.deepEqual(parseIsfText(text), p);
  // Through plain JSON.parse, integers beyond 2^53 were already rounded: refused, not silently wrong.
  assert.throws(() => parseIsf(JSON.parse(text)), IsfError);
  const small = JSON.parse(text.replace(/18446744071\d+/g, '4096').replace('9223372036854775808', '1'));
  assert.equal(parseIsf(small).symbols.init_task!.address, 4096n);
});

test('ISF: documents outside the schema are refused with IsfError', () => {
  const base = JSON.parse(VOLATILITY_ISF) as Record<string, any>;
  const variants: Array<[string, (d: Record<string, any>) => void]> = [
    ['extra top-level key', (d) => (d.extra = 1)],
    ['no metadata', (d) => delete d.metadata],
    ['bad format version', (d) => (d.metadata.format = 'six')],
    ['two operating systems', (d) => (d.metadata.windows = {})],
    ['unknown descriptor kind', (d) => (d.user_types.list_head.fields.next.type = { kind: 'nope' })],
    ['extra field property', (d) => (d.user_types.list_head.fields.next.color = 'red')],
    ['fractional offset', (d) => (d.user_types.list_head.fields.next.offset = 1.5)],
    ['negative size', (d) => (d.user_types.list_head.size = -1)],
    ['base type of unknown kind', (d) => (d.base_types.int.kind = 'integer')],
    ['bitfield of a struct', (d) => (d.user_types.task_struct.fields.flags.type.type = { kind: 'struct', name: 'list_head' })],
    ['symbol without address', (d) => delete d.symbols._text.address],
    ['constant_data not base64', (d) => (d.symbols.linux_banner.constant_data = '!!')],
    ['prototype key', (d) => Object.defineProperty(d.user_types, '__proto__', { value: d.user_types.list_head, enumerable: true })],
  ];
  for (const [what, mutate] of variants) {
    const d = structuredClone(base);
    mutate(d);
    assert.throws(() => parseIsf(d), IsfError, what);
  }
  assert.throws(() => parseIsfText('{"metadata": '), IsfError);
  assert.throws(() => parseIsfText('['.repeat(100_000)), IsfError);
});

/** Synthetic BTF for the converter: anonymous members, a typedef'd anonymous struct, bitfields. */
function converterBtf(): Synth {
  const s: Synth = {
    records: [],
    strings: ['int', 'unsigned int', 'char', 'task', 'pid', 'comm', 'state', 'lo', 'hi', 'u', 'v', 'atomic_t', 'counter', 'next', 'mm', 'mm_struct', 'usage', 'kind', 'k', 'K1', 'K2', 'init_task', 'arr', 'long unsigned int', 'cb', 'big'],
  };
  const o = (n: string) => strOff(s, n);
  s.records.push(
    [o('int'), info(1, 0), 4, (1 << 24) | 32], // 1 int
    [o('unsigned int'), info(1, 0), 4, 32], // 2 unsigned int
    [o('char'), info(1, 0), 1, (1 << 24) | 8], // 3 char (signed)
    [0, info(3, 0), 0, 3, 1, 16], // 4 char[16]
    [0, info(4, 1), 4, o('counter'), 1, 0], // 5 anonymous struct { int counter; }
    [o('atomic_t'), info(8, 0), 5], // 6 typedef atomic_t
    [0, info(5, 2), 8, o('u'), 2, 0, o('v'), 12, 0], // 7 anonymous union { unsigned u; long unsigned v; }
    [o('task'), info(4, 9, true), 64,
      o('pid'), 1, 0,
      o('state'), 2, (3 << 24) | 32, // bitfield: 3 bits at bit 32
      o('lo'), 2, (5 << 24) | 35, // bitfield: 5 bits at bit 35
      0, 7, 64, // anonymous union at byte 8
      o('comm'), 4, 128, // char comm[16] at byte 16
      o('usage'), 6, 256, // atomic_t at byte 32
      o('mm'), 9, 320, // struct mm_struct * at byte 40
      o('k'), 11, (4 << 24) | 384, // enum bitfield at byte 48
      o('cb'), 14, 448, // function pointer at byte 56
    ], // 8 struct task (kind_flag)
    [0, info(2, 0), 10], // 9 PTR -> 10
    [o('mm_struct'), info(4, 1), 8, o('next'), 9, 0], // 10 struct mm_struct { struct mm_struct *next; }
    [o('kind'), info(6, 2), 4, o('K1'), 1, o('K2'), 2], // 11 enum kind
    [o('long unsigned int'), info(1, 0), 8, 64], // 12 long unsigned int
    [0, info(13, 0), 1], // 13 FUNC_PROTO int (void)
    [0, info(2, 0), 13], // 14 PTR -> FUNC_PROTO
    [o('big'), info(19, 1), 8, o('hi'), 0, 0x80000000], // 15 ENUM64 big { hi = 2^63 }
  );
  return s;
}

test('ISF: btfToIsf describes layouts, bitfields, anonymous members and typedef-named structs', () => {
  const btf = parseBtf(synthBtf(converterBtf()));
  const symbols = [
    { name: 'init_task', address: 0xffffffff82a1aa40n, type: 'D' },
    { name: 'do_fork', address: 0xffffffff81000010n, type: 'T' },
    { name: 'linux_banner', address: 0xffffffff8211ffe0n, type: 'D', constantData: Buffer.from('Linux version x\n\0') },
  ];
  const { profile, missing } = convertBtfToIsf(btf, symbols, {
    only: { types: ['task', 'nonexistent'], symbols: ['init_task', 'do_fork', 'linux_banner', 'absent_symbol'] },
    symbolTypes: { init_task: 'task', linux_banner: 'char[17]' },
    metadata: { producer: { name: 'vmseal', version: '0.1.0' }, source: { name: 'vmlinuz', sha256: 'ab'.repeat(32) } },
  });
  assert.deepEqual(missing, { types: ['nonexistent'], symbols: ['absent_symbol'] });
  const task = profile.user_types.task!;
  assert.equal(task.kind, 'struct');
  assert.equal(task.size, 64);
  assert.deepEqual(task.fields.pid, { type: { kind: 'base', name: 'int' }, offset: 0 });
  assert.deepEqual(task.fields.state, { type: { kind: 'bitfield', bit_position: 0, bit_length: 3, type: { kind: 'base', name: 'unsigned int' } }, offset: 4 });
  assert.deepEqual(task.fields.lo, { type: { kind: 'bitfield', bit_position: 3, bit_length: 5, type: { kind: 'base', name: 'unsigned int' } }, offset: 4 });
  assert.deepEqual(task.fields.k, { type: { kind: 'bitfield', bit_position: 0, bit_length: 4, type: { kind: 'enum', name: 'kind' } }, offset: 48 });
  assert.deepEqual(task.fields.comm, { type: { kind: 'array', count: 16, subtype: { kind: 'base', name: 'char' } }, offset: 16 });
  assert.deepEqual(task.fields.usage, { type: { kind: 'struct', name: 'atomic_t' }, offset: 32 });
  assert.deepEqual(task.fields.mm, { type: { kind: 'pointer', subtype: { kind: 'struct', name: 'mm_struct' } }, offset: 40 });
  assert.deepEqual(task.fields.cb, { type: { kind: 'pointer', subtype: { kind: 'function' } }, offset: 56 });
  const anon = task.fields.unnamed_field_3!;
  assert.equal(anon.anonymous, true);
  assert.equal(anon.offset, 8);
  assert.ok(anon.type.kind === 'union' && /^unnamed_[0-9a-f]{16}$/.test(anon.type.name), JSON.stringify(anon.type));
  assert.equal(fieldOffset(profile, 'task', 'v'), 8);
  assert.equal(fieldOffset(profile, 'task', 'usage.counter'), 32);
  // By value: atomic_t and the anonymous union are in; mm_struct is only pointed to, so it is not.
  assert.deepEqual(Object.keys(profile.user_types).sort(), ['atomic_t', anon.type.name, 'task'].sort());
  assert.deepEqual(profile.enums.kind, { size: 4, base: 'unsigned int', constants: { K1: 1n, K2: 2n } });
  assert.deepEqual(profile.base_types.pointer, { kind: 'int', size: 8, signed: false, endian: 'little' });
  assert.equal(profile.base_types.char!.kind, 'char');
  assert.deepEqual(profile.symbols.init_task, { address: 0xffffffff82a1aa40n, type: { kind: 'struct', name: 'task' } });
  assert.deepEqual(profile.symbols.do_fork, { address: 0xffffffff81000010n, type: { kind: 'function' } });
  assert.equal(profile.symbols.linux_banner!.constant_data, Buffer.from('Linux version x\n\0').toString('base64'));
  assert.deepEqual(profile.symbols.linux_banner!.type, { kind: 'array', count: 17, subtype: { kind: 'base', name: 'char' } });
  assert.deepEqual(profile.metadata.linux?.symbols, [{ kind: 'symtab', name: 'vmlinuz', hash_type: 'sha256', hash_value: 'ab'.repeat(32) }]);

  // What we write is what the schema accepts, exactly.
  assert.deepEqual(parseIsfText(serializeIsf(profile)), profile);

  // Everything: names are the same as in the subset (they do not depend on what was requested).
  const full = btfToIsf(btf, symbols, { metadata: { producer: { name: 'vmseal', version: '0.1.0' } } });
  assert.ok(full.user_types[anon.type.name]);
  assert.ok(full.user_types.mm_struct);
  assert.equal(full.enums.big!.constants.hi, 1n << 63n);
  assert.equal(Object.keys(full.symbols).length, 3);
});

test('ISF: a typedef loop in a member type is a BtfError, not a hang', () => {
  const s: Synth = { records: [], strings: ['a', 'b', 's', 'm'] };
  s.records.push(
    [strOff(s, 'a'), info(8, 0), 2], // 1 typedef a -> b
    [strOff(s, 'b'), info(8, 0), 1], // 2 typedef b -> a
    [strOff(s, 's'), info(4, 1), 4, strOff(s, 'm'), 1, 0], // 3 struct s { a m; }
    [0, info(2, 0), 4], // 4 pointer to itself
    [strOff(s, 'm'), info(4, 1), 8, strOff(s, 'm'), 4, 0], // 5 struct m { void **...* m; }
  );
  const btf = parseBtf(synthBtf(s));
  const opts = (type: string) => ({ only: { types: [type], symbols: [] }, metadata: { producer: { name: 'x', version: '1' } } });
  assert.throws(() => btfToIsf(btf, [], opts('s')), /cyclic/);
  assert.throws(() => btfToIsf(btf, [], opts('m')), /cyclic|deeper/);
});

test('ISF: every kind of the synthetic BTF converts under --all', () => {
  const profile = btfToIsf(parseBtf(synthBtf(everyKind(), { bigEndian: true })), [], { metadata: { producer: { name: 'x', version: '1' } } });
  assert.equal(profile.base_types.int!.endian, 'big');
  assert.deepEqual(profile.user_types.flags!.fields.c, { type: { kind: 'base', name: 'u64' }, offset: 0 });
  assert.deepEqual(profile.enums.color!.constants, { RED: -1n, BIG: 7n });
  assert.equal(profile.enums.color!.base, 'int');
  assert.deepEqual(profile.user_types.node!.fields.next!.type, { kind: 'pointer', subtype: { kind: 'struct', name: 'node' } });
});
