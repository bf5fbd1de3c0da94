/**
 * A parsed BTF type graph and the queries callers need: strip qualifiers/typedefs, compute sizes, find
 * named types. The graph comes from hostile input and may contain cycles (typedef loops, an array of
 * itself); every walk here is bounded and reports such a graph as a BtfError instead of hanging.
 */
import { BtfError, type BtfKind, type BtfType, type BtfTypeOf } from './btf-types.ts';

/** Longest typedef/qualifier chain or array nesting accepted; real kernels stay far below. */
const MAX_CHAIN = 256;

const TRANSPARENT = new Set<BtfKind>(['TYPEDEF', 'CONST', 'VOLATILE', 'RESTRICT', 'TYPE_TAG']);

export class Btf {
  private byName: Map<string, number[]> | undefined;
  private pointerBytes: number | undefined;

  constructor(
    /** Index = type id; `types[0]` is void. */
    readonly types: readonly BtfType[],
    readonly endian: 'little' | 'big',
  ) {}

  /** Size of a pointer: BTF does not record it, so it is taken from `long` (LP64 and ILP32 alike). */
  get pointerSize(): number {
    if (this.pointerBytes === undefined) {
      const long = this.findByName('INT', 'long unsigned int') ?? this.findByName('INT', 'long int');
      this.pointerBytes = long?.size ?? 8;
    }
    return this.pointerBytes;
  }

  get(id: number): BtfType {
    const t = this.types[id];
    if (!t) throw new BtfError(`type id ${id} does not exist (${this.types.length} types)`);
    return t;
  }

  /** Follows typedefs and qualifiers (const, volatile, restrict, type tags) to the underlying type. */
  resolve(id: number): BtfType {
    let t = this.get(id);
    for (let hops = 0; TRANSPARENT.has(t.kind); hops++) {
      if (hops >= MAX_CHAIN) throw new BtfError(`type [${id}]: typedef/qualifier chain is cyclic or longer than ${MAX_CHAIN}`);
      t = this.get((t as BtfTypeOf<'TYPEDEF'>).type);
    }
    return t;
  }

  /** Size in bytes of an object of type `id`. */
  sizeOf(id: number): number {
    let count = 1;
    let t = this.resolve(id);
    for (let depth = 0; t.kind === 'ARRAY'; depth++) {
      if (depth >= MAX_CHAIN) throw new BtfError(`type [${id}]: array nesting is cyclic or deeper than ${MAX_CHAIN}`);
      count *= t.nelems;
      t = this.resolve(t.type);
    }
    let size: number;
    switch (t.kind) {
      case 'INT':
      case 'ENUM':
      case 'ENUM64':
      case 'STRUCT':
      case 'UNION':
      case 'FLOAT':
      case 'DATASEC':
        size = t.size;
        break;
      case 'PTR':
        size = this.pointerSize;
        break;
      case 'VAR':
        return count * this.sizeOf(t.type);
      default:
        throw new BtfError(`type [${t.id}] ${t.kind} '${t.name}' has no size`);
    }
    const total = count * size;
    if (!Number.isSafeInteger(total)) throw new BtfError(`type [${id}]: size overflows`);
    return total;
  }

  /** The first (lowest id) type of `kind` named `name`. */
  findByName<K extends BtfKind>(kind: K, name: string): BtfTypeOf<K> | undefined {
    const id = this.findAllByName(kind, name)[0];
    return id === undefined ? undefined : (this.types[id] as BtfTypeOf<K>);
  }

  /** Ids of every type of `kind` named `name` (kernel BTF may hold same-named variants), lowest first. */
  findAllByName(kind: BtfKind, name: string): number[] {
    if (!this.byName) {
      this.byName = new Map();
      for (const t of this.types) {
        if (!t.name) continue;
        const ids = this.byName.get(t.name);
        if (ids) ids.push(t.id);
        else this.byName.set(t.name, [t.id]);
      }
    }
    return (this.byName.get(name) ?? []).filter((id) => this.types[id]!.kind === kind);
  }
}
