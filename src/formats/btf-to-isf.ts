/**
 * Turns a kernel's BTF plus its symbol table into a Volatility ISF profile.
 *
 * ISF has no typedefs or qualifiers: those are stripped, and types are referenced by name. Naming rules
 * (deterministic for a given BTF, independent of which subset is requested):
 *  - a named struct/union/enum keeps its name; when BTF holds several different types of one name, the
 *    lowest id keeps it and the others become `<name>__<id>`;
 *  - an anonymous struct/union/enum that a typedef names (`typedef struct {...} atomic_t`) takes the
 *    first such typedef's name, when that name is free;
 *  - any other anonymous one is `unnamed_<h>`, h = first 16 hex digits of SHA-256 over its layout (kind,
 *    size, and each member's name, bit offset, bitfield width and resolved kind/name; or its constants),
 *    with `_<id>` appended when two different types share a layout;
 *  - an anonymous member is the field `unnamed_field_<index>` with `anonymous: true` (ISF >= 6.1).
 * Pointers keep the pointed-to struct's name even when that struct is not emitted (dereferencing it then
 * needs it added to the requested set); everything a requested type holds by value is emitted.
 */
import { createHash } from 'node:crypto';
import type { Btf } from './btf/btf.ts';
import { BtfError, type BtfComposite, type BtfEnum, type BtfMember, type BtfType } from './btf/btf-types.ts';
import { ISF_FORMAT_VERSION, type IsfBaseRef, type IsfBaseType, type IsfEnum, type IsfEnumRef, type IsfField, type IsfProfile, type IsfSymbol, type IsfTypeDescriptor, type IsfUserType } from './isf.ts';

export interface IsfSymbolInput {
  name: string;
  address: bigint;
  /** The symbol-table type letter (kallsyms/System.map: T, t, D, b...). */
  type?: string | undefined;
  /** Bytes the symbol holds at run time (the banner for linux_banner), stored as `constant_data`. */
  constantData?: Uint8Array | undefined;
}

export interface IsfBuildOptions {
  /** What to emit; undefined emits every type and every symbol. */
  only?: { types: readonly string[]; symbols: readonly string[] } | undefined;
  /**
   * Types of symbols BTF does not describe (BTF has variables only for per-CPU data): symbol name to
   * a C type written `name`, `name *` or `name[N]`, where name is a struct, union, enum, typedef or
   * base type (`init_task: 'task_struct'`, `module_kset: 'kset *'`).
   */
  symbolTypes?: Readonly<Record<string, string>> | undefined;
  metadata: {
    producer: { name: string; version: string; datetime?: string | undefined };
    /** The file the profile describes (types and symbols both come from it) and its SHA-256, hex. */
    source?: { name: string; sha256: string } | undefined;
  };
}

export interface IsfBuildResult {
  profile: IsfProfile;
  /** Requested names the kernel does not have (kernel configurations differ). */
  missing: { types: string[]; symbols: string[] };
}

/** Deepest pointer/array nesting followed inside one descriptor. */
const MAX_DESCRIPTOR_DEPTH = 64;

const STD_INT_NAMES: Record<number, [signed: string, unsigned: string]> = {
  1: ['signed char', 'unsigned char'],
  2: ['short int', 'short unsigned int'],
  4: ['int', 'unsigned int'],
  8: ['long int', 'long unsigned int'],
};

export function btfToIsf(btf: Btf, symbols: Iterable<IsfSymbolInput>, opts: IsfBuildOptions): IsfProfile {
  return convertBtfToIsf(btf, symbols, opts).profile;
}

export function convertBtfToIsf(btf: Btf, symbols: Iterable<IsfSymbolInput>, opts: IsfBuildOptions): IsfBuildResult {
  const names = nameTypes(btf);
  const endian = btf.endian;
  const baseTypes = new Map<string, IsfBaseType>([
    ['void', { kind: 'void', size: 0, signed: false, endian }],
    ['pointer', { kind: 'int', size: btf.pointerSize, signed: false, endian }],
  ]);
  const userTypes = new Map<string, IsfUserType>();
  const enums = new Map<string, IsfEnum>();
  const queued = new Set<number>();
  const queue: number[] = [];
  const enqueue = (id: number) => {
    if (!queued.has(id)) {
      queued.add(id);
      queue.push(id);
    }
  };
  const all = opts.only === undefined;

  const baseRef = (t: BtfType & { kind: 'INT' | 'FLOAT' }): IsfBaseRef => {
    const name = t.name || `${t.kind.toLowerCase()}${t.size * 8}`;
    if (!baseTypes.has(name)) {
      const kind = t.kind === 'FLOAT' ? 'float' : t.bool ? 'bool' : t.char || /char/.test(name) ? 'char' : 'int';
      baseTypes.set(name, { kind, size: t.size, signed: t.kind === 'FLOAT' || t.signed, endian });
    }
    return { kind: 'base', name };
  };
  const intBaseName = (size: number, signed: boolean): string => {
    const std = STD_INT_NAMES[size];
    const name = std ? std[signed ? 0 : 1] : `${signed ? '' : 'u'}int${size * 8}`;
    if (!baseTypes.has(name)) baseTypes.set(name, { kind: 'int', size, signed, endian });
    return name;
  };

  /** The ISF descriptor of BTF type `id`; `byValue` composites are queued for emission. */
  const describe = (id: number, byValue: boolean, depth = 0): IsfTypeDescriptor => {
    if (depth > MAX_DESCRIPTOR_DEPTH) throw new BtfError(`type [${id}]: pointer/array nesting is cyclic or deeper than ${MAX_DESCRIPTOR_DEPTH}`);
    let t = btf.resolve(id);
    if (t.kind === 'FWD') {
      const full = btf.findByName(t.union ? 'UNION' : 'STRUCT', t.name);
      if (!full) return { kind: t.union ? 'union' : 'struct', name: t.name };
      t = full;
    }
    switch (t.kind) {
      case 'VOID':
        return { kind: 'base', name: 'void' };
      case 'INT':
      case 'FLOAT':
        return baseRef(t);
      case 'PTR':
        return { kind: 'pointer', subtype: describe(t.type, all, depth + 1) };
      case 'ARRAY':
        return { kind: 'array', count: t.nelems, subtype: describe(t.type, byValue, depth + 1) };
      case 'STRUCT':
      case 'UNION':
        if (byValue || all) enqueue(t.id);
        return { kind: t.kind === 'STRUCT' ? 'struct' : 'union', name: names.get(t.id)! };
      case 'ENUM':
      case 'ENUM64':
        enqueue(t.id);
        return { kind: 'enum', name: names.get(t.id)! };
      case 'FUNC':
      case 'FUNC_PROTO':
        return { kind: 'function' };
      default:
        throw new BtfError(`type [${t.id}] ${t.kind} '${t.name}' is not a data type`);
    }
  };

  const field = (owner: BtfComposite, m: BtfMember): IsfField => {
    const t = btf.resolve(m.type);
    const oldStyleBits = t.kind === 'INT' && (t.bitOffset !== 0 || t.bits !== t.size * 8) ? t : undefined;
    if (m.bitfieldSize === 0 && !oldStyleBits && m.bitOffset % 8 === 0) {
      return { type: describe(m.type, true), offset: m.bitOffset / 8 };
    }
    if (t.kind !== 'INT' && t.kind !== 'ENUM' && t.kind !== 'ENUM64') {
      throw new BtfError(`type [${owner.id}] member '${m.name}': a bitfield of ${t.kind} is not representable`);
    }
    const bits = m.bitfieldSize || (oldStyleBits ? oldStyleBits.bits : t.size * 8);
    const absolute = m.bitOffset + (oldStyleBits ? oldStyleBits.bitOffset : 0);
    const unit = Math.max(t.size, 1);
    // Volatility reads the whole storage unit at `offset` and shifts: use the naturally aligned unit
    // holding the field, or the byte holding its first bit when a packed field straddles units.
    let offset = Math.floor(absolute / (unit * 8)) * unit;
    if (absolute - offset * 8 + bits > unit * 8) offset = Math.floor(absolute / 8);
    const type = describe(m.type, true) as IsfBaseRef | IsfEnumRef;
    return { type: { kind: 'bitfield', bit_position: absolute - offset * 8, bit_length: bits, type }, offset };
  };

  const emit = (id: number) => {
    const t = btf.get(id);
    const name = names.get(id)!;
    if (t.kind === 'STRUCT' || t.kind === 'UNION') {
      const fields = new Map<string, IsfField>();
      t.members.forEach((m, i) => {
        const f = field(t, m);
        if (m.name) fields.set(m.name, f);
        else fields.set(`unnamed_field_${i}`, { ...f, anonymous: true });
      });
      userTypes.set(name, { kind: t.kind === 'STRUCT' ? 'struct' : 'union', size: t.size, fields: Object.fromEntries(fields) });
    } else if (t.kind === 'ENUM' || t.kind === 'ENUM64') {
      const constants = new Map<string, bigint>();
      for (const v of t.values) if (!constants.has(v.name)) constants.set(v.name, v.value);
      enums.set(name, { size: t.size, base: intBaseName(t.size, t.signed), constants: Object.fromEntries(constants) });
    }
  };

  const missing: IsfBuildResult['missing'] = { types: [], symbols: [] };
  if (all) {
    for (const t of btf.types) if (names.has(t.id)) enqueue(t.id);
  } else {
    for (const wanted of opts.only!.types) {
      const id = findNamedType(btf, wanted);
      if (id === undefined) missing.types.push(wanted);
      else enqueue(id);
    }
  }

  const symbolMap = new Map<string, IsfSymbol>();
  const wantedSymbols = all ? undefined : new Set(opts.only!.symbols);
  for (const s of symbols) {
    if (wantedSymbols && !wantedSymbols.has(s.name)) continue;
    if (symbolMap.has(s.name)) continue;
    const sym: IsfSymbol = { address: s.address };
    const v = btf.findByName('VAR', s.name);
    const spec = opts.symbolTypes && Object.hasOwn(opts.symbolTypes, s.name) ? opts.symbolTypes[s.name] : undefined;
    if (v) sym.type = describe(v.type, true);
    else if (spec !== undefined) {
      const described = describeSpec(btf, spec, describe);
      if (described) sym.type = described;
      else missing.types.push(`${spec} (type of ${s.name})`);
    }
    else if (btf.findByName('FUNC', s.name) || (s.type !== undefined && /^[tTwW]$/.test(s.type))) sym.type = { kind: 'function' };
    if (s.constantData) sym.constant_data = Buffer.from(s.constantData).toString('base64');
    symbolMap.set(s.name, sym);
  }
  if (wantedSymbols) for (const w of wantedSymbols) if (!symbolMap.has(w)) missing.symbols.push(w);

  for (let i = 0; i < queue.length; i++) emit(queue[i]!);

  const source = opts.metadata.source;
  const item = source && { kind: 'symtab' as const, name: source.name, hash_type: 'sha256' as const, hash_value: source.sha256 };
  const profile: IsfProfile = {
    metadata: {
      format: ISF_FORMAT_VERSION,
      producer: { ...opts.metadata.producer },
      linux: item ? { symbols: [item], types: [{ ...item }] } : {},
    },
    base_types: sortedObject(baseTypes),
    user_types: sortedObject(userTypes),
    enums: sortedObject(enums),
    symbols: sortedObject(symbolMap),
  };
  return { profile, missing };
}

/** The descriptor of a `name`, `name *` or `name[N]` type spec, or undefined when name is unknown. */
function describeSpec(btf: Btf, spec: string, describe: (id: number, byValue: boolean) => IsfTypeDescriptor): IsfTypeDescriptor | undefined {
  const m = /^\s*(.+?)\s*(\*?)\s*(?:\[(\d+)\])?\s*$/.exec(spec);
  if (!m) return undefined;
  const name = m[1]!;
  const id = findNamedType(btf, name) ?? btf.findByName('TYPEDEF', name)?.id ?? btf.findByName('INT', name)?.id;
  if (id === undefined) return undefined;
  let d = describe(id, m[2] !== '*');
  if (m[2] === '*') d = { kind: 'pointer', subtype: d };
  if (m[3] !== undefined) d = { kind: 'array', count: Number(m[3]), subtype: d };
  return d;
}

/** A struct, union, typedef (to one of those) or enum named `name`: the type id to emit. */
function findNamedType(btf: Btf, name: string): number | undefined {
  for (const kind of ['STRUCT', 'UNION'] as const) {
    const t = btf.findByName(kind, name);
    if (t) return t.id;
  }
  const td = btf.findByName('TYPEDEF', name);
  if (td) {
    const t = btf.resolve(td.id);
    if (t.kind === 'STRUCT' || t.kind === 'UNION' || t.kind === 'ENUM' || t.kind === 'ENUM64') return t.id;
  }
  return btf.findByName('ENUM', name)?.id ?? btf.findByName('ENUM64', name)?.id;
}

/** ISF names of every struct, union and enum, per the rules in the header comment. */
function nameTypes(btf: Btf): Map<number, string> {
  const names = new Map<number, string>();
  // Struct and union names share ISF's user_types; enums have their own table.
  const taken = { user: new Set<string>(), enum: new Set<string>() };
  const space = (t: BtfType) => (t.kind === 'ENUM' || t.kind === 'ENUM64' ? taken.enum : taken.user);
  const isNamable = (t: BtfType): t is BtfComposite | BtfEnum =>
    t.kind === 'STRUCT' || t.kind === 'UNION' || t.kind === 'ENUM' || t.kind === 'ENUM64';

  for (const t of btf.types) {
    if (!isNamable(t) || !t.name) continue;
    const s = space(t);
    const name = s.has(t.name) ? `${t.name}__${t.id}` : t.name;
    s.add(name);
    names.set(t.id, name);
  }
  for (const t of btf.types) {
    if (t.kind !== 'TYPEDEF') continue;
    let target: BtfType;
    try {
      target = btf.resolve(t.id);
    } catch {
      continue; // a cyclic typedef names nothing; describing a member of that type reports the cycle
    }
    if (!isNamable(target) || names.has(target.id) || space(target).has(t.name)) continue;
    space(target).add(t.name);
    names.set(target.id, t.name);
  }
  for (const t of btf.types) {
    if (!isNamable(t) || names.has(t.id)) continue;
    const base = `unnamed_${layoutHash(btf, t)}`;
    const s = space(t);
    const name = s.has(base) ? `${base}_${t.id}` : base;
    s.add(name);
    names.set(t.id, name);
  }
  return names;
}

function layoutHash(btf: Btf, t: BtfComposite | BtfEnum): string {
  const h = createHash('sha256').update(`${t.kind}\0${t.size}\0`);
  if ('values' in t) {
    for (const v of t.values) h.update(`${v.name}=${v.value}\0`);
  } else {
    for (const m of t.members) {
      let inner: string;
      try {
        const r = btf.resolve(m.type);
        inner = `${r.kind}:${r.name}`;
      } catch {
        inner = 'cycle';
      }
      h.update(`${m.name}@${m.bitOffset}:${m.bitfieldSize}:${inner}\0`);
    }
  }
  return h.digest('hex').slice(0, 16);
}

function sortedObject<V>(map: Map<string, V>): Record<string, V> {
  return Object.fromEntries([...map].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
