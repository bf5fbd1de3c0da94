/**
 * The kernel's types as the IDS sees them: everything comes from a Volatility-style ISF profile
 * (base_types, user_types, enums, symbols). Type descriptors are resolved once into a small closed
 * union, so the object layer never touches raw profile JSON and no offset is ever written by hand.
 */

/** An ISF type descriptor (Volatility 3 schema 6.x), as found in fields and symbols. */
export type IsfTypeRef =
  | { kind: 'base'; name: string }
  | { kind: 'pointer'; subtype: IsfTypeRef }
  | { kind: 'array'; count: number; subtype: IsfTypeRef }
  | { kind: 'struct' | 'union' | 'class'; name: string }
  | { kind: 'enum'; name: string }
  | { kind: 'bitfield'; bit_position: number; bit_length: number; type: IsfTypeRef }
  | { kind: 'function' };

/** The part of an ISF profile the kernel model reads; `IsfProfile` from `formats/isf.ts` fits it. */
export interface IsfLike {
  base_types: Record<string, { kind: string; size: number; signed: boolean; endian?: string }>;
  user_types: Record<string, { kind: string; size: number; fields: Record<string, { offset: number; type: IsfTypeRef; anonymous?: boolean }> }>;
  enums: Record<string, { size: number; base: string; constants: Record<string, number | bigint> }>;
  symbols: Record<string, { address: number | bigint | string; type?: IsfTypeRef }>;
}

/** A resolved type. `struct` covers unions and classes too (`union` tells which). */
export type KType =
  | { kind: 'int'; name: string; size: number; signed: boolean }
  | { kind: 'bool'; name: string; size: number }
  | { kind: 'char'; name: string; size: number; signed: boolean }
  | { kind: 'float'; name: string; size: number }
  | { kind: 'void'; size: 0 }
  | { kind: 'enum'; name: string; size: number; signed: boolean }
  | { kind: 'pointer'; size: number; target: KType }
  | { kind: 'array'; count: number; elem: KType; size: number }
  | { kind: 'struct'; name: string; union: boolean; size: number }
  | { kind: 'bitfield'; bitPosition: number; bitLength: number; base: KType; size: number }
  | { kind: 'function'; size: 0 };

export interface KField {
  name: string;
  /** Byte offset from the start of the outermost struct it was looked up in. */
  offset: number;
  type: KType;
}

export class ProfileError extends Error {}

/** Longest chain of anonymous members followed while looking up a field (guards a hostile profile). */
const MAX_ANON_DEPTH = 8;
/** Longest `a.b[3].c` path accepted by `offsetOf`. */
const MAX_PATH_PARTS = 16;

export class TypeModel {
  private readonly fieldCache = new Map<string, Map<string, KField | null>>();
  readonly pointerSize: number;

  constructor(private readonly isf: IsfLike) {
    this.pointerSize = isf.base_types.pointer?.size ?? 8;
  }

  hasStruct(name: string): boolean {
    return Object.hasOwn(this.isf.user_types, name);
  }

  struct(name: string): KType & { kind: 'struct' } {
    const ut = this.userType(name);
    return { kind: 'struct', name, union: ut.kind === 'union', size: ut.size };
  }

  sizeOf(name: string): number {
    return this.userType(name).size;
  }


  /** Value of an enum constant, looked up across every enum (kernel enum constants are global names). */
  constant(name: string): number {
    for (const e of Object.values(this.isf.enums)) if (Object.hasOwn(e.constants, name)) return Number(e.constants[name]);
    throw new ProfileError(`profile has no enum constant ${name}`);
  }

  /** Unslid address of a symbol. */
  symbolAddress(name: string): bigint {
    const s = this.isf.symbols[name];
    if (!s || !Object.hasOwn(this.isf.symbols, name)) throw new ProfileError(`profile has no symbol ${name}`);
    return BigInt(s.address);
  }

  hasSymbol(name: string): boolean {
    return Object.hasOwn(this.isf.symbols, name);
  }

  symbolType(name: string): KType | null {
    const t = this.isf.symbols[name]?.type;
    return t ? this.resolve(t) : null;
  }

  /** A field of a struct or union by name, looking through anonymous members as C does. */
  field(structName: string, name: string): KField {
    const f = this.findField(structName, name, 0);
    if (!f) throw new ProfileError(`${structName} has no field ${name}`);
    return f;
  }

  hasField(structName: string, name: string): boolean {
    return this.hasStruct(structName) && this.findField(structName, name, 0) !== null;
  }

  /** The names C code could use on this struct (anonymous members flattened). */
  fieldNames(structName: string): string[] {
    const out: string[] = [];
    const walk = (sn: string, depth: number): void => {
      for (const [n, f] of Object.entries(this.userType(sn).fields)) {
        if (isAnonymous(n, f) && depth < MAX_ANON_DEPTH && (f.type.kind === 'struct' || f.type.kind === 'union')) walk(f.type.name, depth + 1);
        else out.push(n);
      }
    };
    walk(structName, 0);
    return out;
  }

  /**
   * offsetof() with a C member path: `tasks`, `pid_links[0]`, `se.run_node`. Returns the offset and
   * the type at the end of the path.
   */
  offsetOf(structName: string, path: string): KField {
    const parts = path.split('.');
    if (parts.length > MAX_PATH_PARTS) throw new ProfileError(`member path too long: ${path}`);
    let offset = 0;
    let cur: KType = this.struct(structName);
    for (const part of parts) {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$/.exec(part);
      if (!m) throw new ProfileError(`bad member path ${path}`);
      if (cur.kind !== 'struct') throw new ProfileError(`${path}: ${part} is not inside a struct`);
      const f = this.field(cur.name, m[1] as string);
      offset += f.offset;
      cur = f.type;
      for (const idx of (m[2] ?? '').match(/\d+/g) ?? []) {
        if (cur.kind !== 'array') throw new ProfileError(`${path}: not an array`);
        const i = Number(idx);
        if (i >= cur.count) throw new ProfileError(`${path}: index ${i} out of bounds ${cur.count}`);
        offset += i * cur.elem.size;
        cur = cur.elem;
      }
    }
    return { name: path, offset, type: cur };
  }

  resolve(t: IsfTypeRef, depth = 0): KType {
    if (depth > 32) throw new ProfileError('type nesting too deep');
    switch (t.kind) {
      case 'base': {
        const b = this.isf.base_types[t.name];
        if (!b || !Object.hasOwn(this.isf.base_types, t.name)) throw new ProfileError(`profile has no base type ${t.name}`);
        if (b.kind === 'void') return { kind: 'void', size: 0 };
        if (b.kind === 'bool') return { kind: 'bool', name: t.name, size: b.size };
        if (b.kind === 'char') return { kind: 'char', name: t.name, size: b.size, signed: b.signed };
        if (b.kind === 'float') return { kind: 'float', name: t.name, size: b.size };
        return { kind: 'int', name: t.name, size: b.size, signed: b.signed };
      }
      case 'pointer':
        return { kind: 'pointer', size: this.pointerSize, target: this.resolveTarget(t.subtype, depth + 1) };
      case 'array': {
        const elem = this.resolve(t.subtype, depth + 1);
        if (!Number.isSafeInteger(t.count) || t.count < 0) throw new ProfileError(`bad array count ${t.count}`);
        return { kind: 'array', count: t.count, elem, size: t.count * elem.size };
      }
      case 'struct':
      case 'union':
      case 'class':
        return this.struct(t.name);
      case 'enum': {
        const e = this.isf.enums[t.name];
        if (!e || !Object.hasOwn(this.isf.enums, t.name)) throw new ProfileError(`profile has no enum ${t.name}`);
        const base = this.isf.base_types[e.base];
        return { kind: 'enum', name: t.name, size: e.size, signed: base?.signed ?? false };
      }
      case 'bitfield': {
        const base = this.resolve(t.type, depth + 1);
        if (t.bit_length < 1 || t.bit_length > 64 || t.bit_position < 0 || t.bit_position + t.bit_length > base.size * 8)
          throw new ProfileError(`bad bitfield ${t.bit_position}:${t.bit_length} in ${base.size} bytes`);
        return { kind: 'bitfield', bitPosition: t.bit_position, bitLength: t.bit_length, base, size: base.size };
      }
      case 'function':
        return { kind: 'function', size: 0 };
      default:
        throw new ProfileError(`unknown type kind ${(t as { kind: string }).kind}`);
    }
  }

  /** Pointer targets may be structs the profile left out (it holds what the IDS needs): keep the name. */
  private resolveTarget(t: IsfTypeRef, depth: number): KType {
    if ((t.kind === 'struct' || t.kind === 'union' || t.kind === 'class') && !this.hasStruct(t.name))
      return { kind: 'struct', name: t.name, union: t.kind === 'union', size: 0 };
    return this.resolve(t, depth);
  }

  private userType(name: string) {
    const ut = this.isf.user_types[name];
    if (!ut || !Object.hasOwn(this.isf.user_types, name)) throw new ProfileError(`profile has no struct ${name}`);
    return ut;
  }

  private findField(structName: string, name: string, depth: number): KField | null {
    let cache = this.fieldCache.get(structName);
    if (!cache) this.fieldCache.set(structName, (cache = new Map()));
    const hit = cache.get(name);
    if (hit !== undefined) return hit;
    const fields = this.userType(structName).fields;
    let found: KField | null = null;
    const direct = Object.hasOwn(fields, name) ? fields[name] : undefined;
    if (direct) found = { name, offset: direct.offset, type: this.resolve(direct.type) };
    else if (depth < MAX_ANON_DEPTH) {
      for (const [n, f] of Object.entries(fields)) {
        if (!isAnonymous(n, f) || (f.type.kind !== 'struct' && f.type.kind !== 'union')) continue;
        const inner = this.findField(f.type.name, name, depth + 1);
        if (inner) {
          found = { name, offset: f.offset + inner.offset, type: inner.type };
          break;
        }
      }
    }
    cache.set(name, found);
    return found;
  }
}

function isAnonymous(name: string, f: { anonymous?: boolean }): boolean {
  return f.anonymous === true || name.startsWith('unnamed_field');
}
