/**
 * Typed snapshots of kernel objects (the seed's LLView): a struct is read whole in one op, then its
 * fields decode synchronously from that snapshot, so IDS code reads like kernel code —
 * `task.comm`, `task.cred` (a pointer), `task.tasks` (an embedded list_head). What a field decodes
 * to depends only on its BTF type:
 *   ints of up to 4 bytes, enums, bitfields, chars → number; 8-byte ints → bigint; bool → boolean;
 *   char arrays → string (up to the first NUL); other arrays → KArr; pointers → KPtr;
 *   embedded structs and unions → KObj over the same snapshot.
 */
import { ProfileError, type KType, type TypeModel } from './type-model.ts';

export type KValue = number | bigint | boolean | string | KPtr<unknown> | KArr<unknown> | KObj<object>;

/** What a pointer needs to follow itself: the view that made it. */
export interface Dereferencer {
  at<T extends object>(typeName: string, addr: bigint): Promise<KObj<T>>;
}

export class KPtr<T = unknown> {
  constructor(
    private readonly deref0: Dereferencer,
    readonly addr: bigint,
    /** The pointed-to type; a struct whose layout the profile lacks has size 0. */
    readonly target: KType,
  ) {}

  get isNull(): boolean {
    return this.addr === 0n;
  }

  /** Name of the pointed-to struct, or null when the target is not a struct. */
  get targetStruct(): string | null {
    return this.target.kind === 'struct' ? this.target.name : null;
  }

  /** Reads the pointed-to struct (one op). Throws on NULL or a non-struct target. */
  deref(): Promise<KObj<T & object>> {
    if (this.isNull) return Promise.reject(new Error('deref of NULL pointer'));
    const name = this.targetStruct;
    if (!name) return Promise.reject(new Error('deref of a pointer to a non-struct type'));
    return this.deref0.at<T & object>(name, this.addr);
  }

  toString(): string {
    return `0x${this.addr.toString(16)}`;
  }
}

export class KArr<E> implements Iterable<E> {
  constructor(
    private readonly decode: (i: number) => E,
    readonly length: number,
    readonly addr: bigint,
    readonly elem: KType,
  ) {}

  at(i: number): E {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) throw new RangeError(`index ${i} out of bounds ${this.length}`);
    return this.decode(i);
  }

  *[Symbol.iterator](): Iterator<E> {
    for (let i = 0; i < this.length; i++) yield this.decode(i);
  }
}

/** Methods every object has; `$`-prefixed so they never clash with kernel field names. */
export interface KObjBase {
  /** Guest kernel virtual address of the object. */
  readonly $addr: bigint;
  /** Struct name from the profile. */
  readonly $type: string;
  readonly $size: number;
  $get(name: string): KValue;
  $has(name: string): boolean;
  /** Address of a member (`&obj->member`), member may be a path like `pid_links[0]`. */
  $addrOf(path: string): bigint;
  /** Raw bytes of the object, or of one member. */
  $bytes(name?: string): Buffer;
  /** A byte array member read as a C string (`unsigned char d_iname[]` decodes as an array otherwise). */
  $str(name: string): string;
}

/** A struct snapshot; `T` declares the fields the caller uses (names and decoded JS types, no offsets). */
export type KObj<T extends object = Record<string, KValue>> = KObjBase & Readonly<T>;

/** Names a Proxy must not treat as fields: promise resolution and inspection probe them. */
const NOT_FIELDS = new Set(['then', 'toJSON', 'constructor', 'inspect', 'asymmetricMatch', '$$typeof']);

class KObjCore implements KObjBase {
  constructor(
    readonly model: TypeModel,
    readonly deref: Dereferencer,
    readonly $type: string,
    readonly $addr: bigint,
    /** The snapshot; the object starts at `start`. */
    readonly buf: Buffer,
    readonly start: number,
    /** Byte ranges [from, to) of the object that were read; undefined: all of the snapshot. */
    readonly readable?: ReadonlyArray<readonly [number, number]>,
  ) {}


  get $size(): number {
    return this.model.sizeOf(this.$type);
  }

  $has(name: string): boolean {
    return this.model.hasField(this.$type, name);
  }

  $get(name: string): KValue {
    const f = this.model.field(this.$type, name);
    checkRead(this, name, f.offset, f.type.size);
    return decodeValue(this.model, this.deref, f.type, this.buf, this.start + f.offset, this.$addr + BigInt(f.offset));
  }

  $addrOf(path: string): bigint {
    return this.$addr + BigInt(this.model.offsetOf(this.$type, path).offset);
  }

  $str(name: string): string {
    const f = this.model.field(this.$type, name);
    if (f.type.kind !== 'array' || f.type.elem.size !== 1) throw new ProfileError(`${this.$type}.${name} is not a byte array`);
    return cString(this.$bytes(name));
  }

  $bytes(name?: string): Buffer {
    if (name === undefined) {
      if (this.readable) throw new ProfileError(`${this.$type} was read in windows: ask for its members`);
      return this.buf.subarray(this.start, this.start + this.$size);
    }
    const f = this.model.field(this.$type, name);
    checkRead(this, name, f.offset, f.type.size);
    return this.buf.subarray(this.start + f.offset, this.start + f.offset + f.type.size);
  }
}

/**
 * A windowed snapshot holds zeros between its windows: reading there must fail, not give 0. (A
 * function, not a private method: methods run with the Proxy as `this`.)
 */
function checkRead(o: KObjCore, name: string, offset: number, size: number): void {
  if (o.readable && !o.readable.some(([from, to]) => offset >= from && offset + size <= to)) {
    throw new ProfileError(`${o.$type}.${name} was not read (not among the fields of this snapshot)`);
  }
}

/**
 * Wraps a snapshot in a KObj. `buf` holds the struct from `start`, whole unless `partial` (a prefix
 * read to save bytes: fields past its end throw when read). `readable` names the byte ranges of a
 * snapshot read in windows; fields outside them throw when read.
 */
export function makeKObj<T extends object>(
  model: TypeModel,
  deref: Dereferencer,
  typeName: string,
  addr: bigint,
  buf: Buffer,
  start = 0,
  partial = false,
  readable?: ReadonlyArray<readonly [number, number]>,
): KObj<T> {
  const core = new KObjCore(model, deref, typeName, addr, buf, start, readable);
  if (!partial && start + core.$size > buf.length) throw new ProfileError(`snapshot of ${typeName} is short: ${buf.length - start} < ${core.$size}`);
  return new Proxy(core, {
    get(target, prop, receiver) {
      if (typeof prop !== 'string' || prop in target || NOT_FIELDS.has(prop)) return Reflect.get(target, prop, receiver);
      return target.$get(prop);
    },
    has(target, prop) {
      return typeof prop === 'string' ? prop in target || target.$has(prop) : prop in target;
    },
  }) as unknown as KObj<T>;
}

export function decodeValue(model: TypeModel, deref: Dereferencer, t: KType, buf: Buffer, off: number, addr: bigint): KValue {
  if (off + t.size > buf.length) throw new RangeError(`field at ${off}+${t.size} past snapshot end ${buf.length}`);
  switch (t.kind) {
    case 'int':
    case 'char':
      return readInt(buf, off, t.size, t.signed);
    case 'enum':
      return Number(readInt(buf, off, t.size, t.signed));
    case 'bool':
      return buf[off] !== 0;
    case 'float':
      return t.size === 8 ? buf.readDoubleLE(off) : buf.readFloatLE(off);
    case 'pointer':
      return new KPtr(deref, buf.readBigUInt64LE(off), t.target);
    case 'array':
      if (t.elem.kind === 'char' && t.elem.size === 1 && t.elem.name === 'char') return cString(buf.subarray(off, off + t.count));
      return new KArr((i) => decodeValue(model, deref, t.elem, buf, off + i * t.elem.size, addr + BigInt(i * t.elem.size)), t.count, addr, t.elem);
    case 'struct':
      return makeKObj(model, deref, t.name, addr, buf, off);
    case 'bitfield': {
      const raw = BigInt.asUintN(64, BigInt(readInt(buf, off, t.base.size, false)));
      const v = (raw >> BigInt(t.bitPosition)) & ((1n << BigInt(t.bitLength)) - 1n);
      const signed = (t.base.kind === 'int' || t.base.kind === 'enum') && t.base.signed && (v >> BigInt(t.bitLength - 1)) === 1n;
      return Number(signed ? v - (1n << BigInt(t.bitLength)) : v);
    }
    case 'void':
    case 'function':
      throw new ProfileError(`cannot read a value of kind ${t.kind}`);
  }
}

function readInt(buf: Buffer, off: number, size: number, signed: boolean): number | bigint {
  switch (size) {
    case 1:
      return signed ? buf.readInt8(off) : buf.readUInt8(off);
    case 2:
      return signed ? buf.readInt16LE(off) : buf.readUInt16LE(off);
    case 4:
      return signed ? buf.readInt32LE(off) : buf.readUInt32LE(off);
    case 8:
      return signed ? buf.readBigInt64LE(off) : buf.readBigUInt64LE(off);
    default:
      throw new ProfileError(`unsupported integer size ${size}`);
  }
}

/** Kernel strings are bytes up to the first NUL; the kernel does not promise UTF-8. */
export function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('latin1');
}
