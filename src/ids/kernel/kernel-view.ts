/**
 * The IDS's window on a running guest kernel: symbols (slid), typed struct snapshots, batched
 * pointer derefs and whole-list reads, over any MemorySource (the monitor directly, or the sealed
 * channel). Round trips are what cost: a struct is one op, a list ring is one op, N derefs are one
 * request.
 */
import { FOLLOW_STATUS, READ_LIMITS, gatherRecordBytes, mergeSpans, type MemorySource, type ReadOp, type ReadRange } from '../../formats/protocol/ids-read.ts';
import { dataOf, readBatched, type BatchStats } from './batched-reads.ts';
import { cString, KPtr, makeKObj, type Dereferencer, type KObj } from './kobject.ts';
import type { ListHead } from './linux-types.ts';
import { locateKernel } from './locate-kernel.ts';
import { TypeModel, type IsfLike } from './type-model.ts';

const PAGE_SIZE = 4096n;
/** Members closer than this are read in one window: a request op costs more than a few hundred bytes. */
const WINDOW_GAP = 256;

/**
 * Types of the kernel globals the checks use, as their C declarations say (`extern struct
 * task_struct init_task;`). BTF describes only per-CPU variables, so the profile's symbols mostly
 * carry addresses alone; a type found in the profile wins over this table.
 */
const GLOBAL_TYPES: Readonly<Record<string, string>> = {
  init_task: 'task_struct',
  modules: 'list_head',
  init_pid_ns: 'pid_namespace',
};

export interface OpenOptions {
  /** Known KASLR slide; found with `locateKernel` when omitted. */
  slide?: bigint;
}

export interface ListOptions {
  /** Most entries to return. */
  max?: number;
  /**
   * Read only these members of each entry (a task_struct is ~10 KiB, the fields a check needs take
   * about 150 bytes); reading any other member throws.
   */
  fields?: readonly string[];
}

export interface GatherOptions {
  max?: number;
  /** Members of each entry to read (the list member and followed pointers are added). */
  fields: readonly string[];
  /** Pointer member of the entry → the members of its target struct to read. */
  follow?: Readonly<Record<string, readonly string[]>>;
}

export interface Gathered<T extends object> {
  entry: KObj<T>;
  /** By pointer member: its target's snapshot, or null when NULL or unreadable. */
  follow: Record<string, KObj<object> | null>;
}

export class KernelView implements Dereferencer {
  /** Requests and ops sent so far, for benchmarks and round-trip tests. */
  readonly stats: BatchStats = { requests: 0, ops: 0 };

  private constructor(
    readonly source: MemorySource,
    readonly model: TypeModel,
    readonly slide: bigint,
    readonly banner: string | null,
  ) {}

  static async open(source: MemorySource, profile: IsfLike, opts: OpenOptions = {}): Promise<KernelView> {
    const model = new TypeModel(profile);
    if (opts.slide !== undefined) return new KernelView(source, model, opts.slide, null);
    const loc = await locateKernel(source, model);
    return new KernelView(source, model, loc.slide, loc.banner);
  }

  /** Runtime (slid) address of a kernel symbol. */
  sym(name: string): bigint {
    return this.model.symbolAddress(name) + this.slide;
  }

  hasSym(name: string): boolean {
    return this.model.hasSymbol(name);
  }

  /** Reads a global struct variable, e.g. `await k.var<TaskStruct>('init_task')`. */
  async var<T extends object>(name: string, typeName?: string): Promise<KObj<T>> {
    const t = this.model.symbolType(name);
    const struct = typeName ?? (t?.kind === 'struct' ? t.name : GLOBAL_TYPES[name]);
    if (!struct) throw new Error(`type of ${name} unknown: pass it`);
    return this.at<T>(struct, this.sym(name));
  }

  /** Reads a pointer-sized global (e.g. `module_kset`, a `struct kset *`) as a pointer to `typeName`. */
  async ptrVar<T extends object>(name: string, typeName: string): Promise<KPtr<T>> {
    const b = await this.bytes(this.sym(name), this.model.pointerSize);
    return this.pointer<T>(b.readBigUInt64LE(0), typeName);
  }

  /** A typed pointer made from an address, e.g. a list link turned into its container. */
  pointer<T>(addr: bigint, typeName: string): KPtr<T> {
    return new KPtr<T>(this, addr, this.model.struct(typeName));
  }

  /** Snapshot of a `typeName` at a kernel virtual address: one op. */
  async at<T extends object>(typeName: string, addr: bigint): Promise<KObj<T>> {
    const [o] = await this.atAll<T>(typeName, [addr]);
    return o as KObj<T>;
  }

  /** Snapshots of many objects of one type in one request. */
  async atAll<T extends object>(typeName: string, addrs: readonly bigint[]): Promise<KObj<T>[]> {
    const len = this.model.sizeOf(typeName);
    const ops: ReadOp[] = addrs.map((addr) => ({ kind: 'kv', addr, len }));
    const res = await readBatched(this.source, ops, this.stats);
    return res.map((r, i) => makeKObj<T>(this.model, this, typeName, addrs[i] as bigint, dataOf(ops[i] as ReadOp, r)));
  }

  /**
   * Follows many pointers in one request. NULL pointers give null; so does an unreadable target
   * when `tolerant` (a guest that runs while we read may free objects under us). `fields` (by
   * struct name) reads only the window holding those members of such targets.
   */
  async derefAll<T extends object>(ptrs: readonly KPtr<T>[], opts: { tolerant?: boolean; fields?: Readonly<Record<string, readonly string[]>> } = {}): Promise<(KObj<T> | null)[]> {
    const wanted = ptrs.map((p, i) => ({ p, i })).filter(({ p }) => !p.isNull);
    const windowOf = new Map<string, readonly [number, number]>();
    for (const [name, fields] of Object.entries(opts.fields ?? {})) {
      const ws = this.fieldWindows(name, fields);
      windowOf.set(name, [Math.min(...ws.map(([from]) => from)), Math.max(...ws.map(([, to]) => to))]);
    }
    const ops: ReadOp[] = wanted.map(({ p }) => {
      const name = p.targetStruct;
      if (!name) throw new Error('derefAll: pointer to a non-struct type');
      const w = windowOf.get(name);
      return w ? { kind: 'kv', addr: p.addr + BigInt(w[0]), len: w[1] - w[0] } : { kind: 'kv', addr: p.addr, len: this.model.sizeOf(name) };
    });
    const res = await readBatched(this.source, ops, this.stats);
    const out: (KObj<T> | null)[] = ptrs.map(() => null);
    wanted.forEach(({ p, i }, j) => {
      const r = res[j];
      if (!r?.ok && opts.tolerant) return;
      const name = p.targetStruct as string;
      const data = dataOf(ops[j] as ReadOp, r as NonNullable<typeof r>);
      const w = windowOf.get(name);
      if (!w) {
        out[i] = makeKObj<T>(this.model, this, name, p.addr, data);
        return;
      }
      const buf = Buffer.alloc(w[1]);
      data.copy(buf, w[0]);
      out[i] = makeKObj<T>(this.model, this, name, p.addr, buf, 0, true, [w]);
    });
    return out;
  }

  /**
   * Every entry of a kernel list, like `list_for_each_entry(pos, head, member)`: one 'list' op
   * returns all snapshots (with `fields`, one 'gather' op returns only those members).
   * `head` is the list_head object (its address is what counts) or an address.
   */
  async list<T extends object>(head: KObj<ListHead> | bigint, typeName: string, member: string, opts: ListOptions = {}): Promise<KObj<T>[]> {
    if (opts.fields) return (await this.gather<T>(head, typeName, member, { ...opts, fields: opts.fields })).map((g) => g.entry);
    const headAddr = typeof head === 'bigint' ? head : head.$addr;
    const linkOffset = this.model.offsetOf(typeName, member).offset;
    const len = this.model.sizeOf(typeName);
    const out: KObj<T>[] = [];
    await this.walk(headAddr, linkOffset, len, opts.max, (max, from) => ({ kind: 'list', head: from, linkOffset, len, max }), (base, data) => {
      out.push(makeKObj<T>(this.model, this, typeName, base, Buffer.from(data)));
    });
    return out;
  }

  /**
   * The entries of a kernel list with only `fields` read, and for each member named in `follow` (a
   * pointer member), the named fields of the struct it points to: the monitor follows the pointers
   * during the walk, so a task list with its credentials is one op. A followed pointer that is NULL
   * or cannot be read gives null (a guest that runs while we read may free objects under us).
   */
  async gather<T extends object>(head: KObj<ListHead> | bigint, typeName: string, member: string, opts: GatherOptions): Promise<Gathered<T>[]> {
    const headAddr = typeof head === 'bigint' ? head : head.$addr;
    const linkOffset = this.model.offsetOf(typeName, member).offset;
    const follows = Object.entries(opts.follow ?? {}).map(([name, fields]) => {
      const ptr = this.model.offsetOf(typeName, name);
      const target = ptr.type.kind === 'pointer' && ptr.type.target.kind === 'struct' ? ptr.type.target.name : null;
      if (!target) throw new Error(`gather: ${typeName}.${name} is not a pointer to a struct`);
      return { name, target, ptrOffset: ptr.offset, spans: this.exactSpans(target, fields) };
    });
    const spans = this.exactSpans(typeName, [member, ...opts.fields, ...follows.map((f) => f.name)]);
    const toRanges = (ss: ReadonlyArray<readonly [number, number]>): ReadRange[] => ss.map(([from, to]) => ({ off: from, len: to - from }));
    const ranges = toRanges(spans);
    const follow = follows.map((f) => ({ ptrOffset: f.ptrOffset, ranges: toRanges(f.spans) }));
    const record = gatherRecordBytes({ ranges, follow });
    const out: Gathered<T>[] = [];
    const sparse = (sp: ReadonlyArray<readonly [number, number]>, data: Buffer, at: number): [Buffer, number] => {
      const buf = Buffer.alloc(Math.max(0, ...sp.map(([, to]) => to)));
      for (const [from, to] of sp) at += data.copy(buf, from, at, at + to - from);
      return [buf, at];
    };
    await this.walk(headAddr, linkOffset, record, opts.max, (max, from) => ({ kind: 'gather', head: from, linkOffset, max, ranges, follow }), (base, data) => {
      const [buf, afterEntry] = sparse(spans, data, 0);
      const entry = makeKObj<T>(this.model, this, typeName, base, buf, 0, true, spans);
      let at = afterEntry;
      const followed: Record<string, KObj<object> | null> = {};
      for (const f of follows) {
        const status = data[at++];
        const [fbuf, next] = sparse(f.spans, data, at);
        at = next;
        const addr = (entry.$get(f.name) as KPtr<object>).addr;
        followed[f.name] = status === FOLLOW_STATUS.ok ? makeKObj<object>(this.model, this, f.target, addr, fbuf, 0, true, f.spans) : null;
      }
      out.push({ entry, follow: followed });
    });
    return out;
  }

  /**
   * Runs a ring walk op (made by `opFor(max, from)`) until it comes back to the head: a ring longer
   * than one op allows continues from its last entry, and the real head then shows up as an entry
   * and ends the walk. `each` gets every entry's base and its `entryBytes` of data.
   */
  private async walk(headAddr: bigint, linkOffset: number, entryBytes: number, limit: number | undefined, opFor: (max: number, from: bigint) => ReadOp, each: (base: bigint, data: Buffer) => void): Promise<void> {
    const perOp = Math.max(1, Math.min(READ_LIMITS.maxListEntries, Math.floor(READ_LIMITS.maxBatchBytes / Math.max(1, entryBytes))));
    const most = limit ?? READ_LIMITS.maxListEntries;
    let count = 0;
    let from = headAddr;
    while (count < most) {
      const max = Math.min(perOp, most - count);
      const op = opFor(max, from);
      const [r] = await readBatched(this.source, [op], this.stats);
      const data = dataOf(op, r as NonNullable<typeof r>);
      const bases = (r?.ok && r.bases) || [];
      for (let i = 0; i < bases.length; i++) {
        const base = bases[i] as bigint;
        if (base + BigInt(linkOffset) === headAddr) return;
        each(base, data.subarray(i * entryBytes, (i + 1) * entryBytes));
        count++;
      }
      if (bases.length < max) return;
      from = (bases[bases.length - 1] as bigint) + BigInt(linkOffset);
    }
  }

  /** The byte ranges of `fields`, merged only where they touch or overlap. */
  private exactSpans(typeName: string, fields: readonly string[]): Array<readonly [number, number]> {
    return mergeSpans(this.fieldSpans(typeName, fields), 0);
  }

  /**
   * The byte ranges holding `fields`, merged where the gap between them is small: a struct whose
   * wanted members sit in a few clusters (task_struct: its state and flags near the start, the rest
   * past 2 KiB) is read as those clusters alone.
   */
  fieldWindows(typeName: string, fields: readonly string[]): Array<readonly [number, number]> {
    return mergeSpans(this.fieldSpans(typeName, fields), WINDOW_GAP);
  }

  private fieldSpans(typeName: string, fields: readonly string[]): Array<readonly [number, number]> {
    return fields.map((f) => {
      const x = this.model.offsetOf(typeName, f);
      return [x.offset, x.offset + x.type.size] as const;
    });
  }

  /** `for await (const t of k.listEntries(init.tasks, 'task_struct', 'tasks'))`. */
  async *listEntries<T extends object>(head: KObj<ListHead> | bigint, typeName: string, member: string, opts: ListOptions = {}): AsyncGenerator<KObj<T>> {
    for (const e of await this.list<T>(head, typeName, member, opts)) yield e;
  }

  /** `container_of(ptr, type, member)` as an address. */
  containerOf(addr: bigint, typeName: string, member: string): bigint {
    return addr - BigInt(this.model.offsetOf(typeName, member).offset);
  }

  /** Raw kernel-virtual bytes (one op). */
  async bytes(addr: bigint, len: number): Promise<Buffer> {
    const op: ReadOp = { kind: 'kv', addr, len };
    const [r] = await readBatched(this.source, [op], this.stats);
    return dataOf(op, r as NonNullable<typeof r>);
  }

  /** Many raw reads in one request; failed reads give null. */
  async bytesAll(reads: readonly { addr: bigint; len: number }[]): Promise<(Buffer | null)[]> {
    const res = await readBatched(this.source, reads.map((r): ReadOp => ({ kind: 'kv', addr: r.addr, len: r.len })), this.stats);
    return res.map((r) => (r.ok ? r.data : null));
  }

  /**
   * A NUL-terminated kernel string of at most `max` bytes. The first read stops at the page end,
   * so a short string at the end of the last mapped page still reads.
   */
  async string(addr: bigint, max = 256): Promise<string> {
    const first = Math.min(max, Number(PAGE_SIZE - (addr % PAGE_SIZE)));
    const head = await this.bytes(addr, first);
    if (head.includes(0) || first === max) return cString(head);
    return cString(Buffer.concat([head, await this.bytes(addr + BigInt(first), max - first)]));
  }
}
