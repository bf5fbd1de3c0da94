/**
 * The IDS's window on a running guest kernel: symbols (slid), typed struct snapshots, batched
 * pointer derefs and whole-list reads, over any MemorySource (the monitor directly, or the sealed
 * channel). Round trips are what cost: a struct is one op, a list ring is one op, N derefs are one
 * request.
 */
import { READ_LIMITS, type MemorySource, type ReadOp } from '../../formats/protocol/ids-read.ts';
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
   * Read only these members of each entry, in a few windows (a task_struct is ~10 KiB, the fields a
   * check needs take a tenth of it); reading any other member throws.
   */
  fields?: readonly string[];
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
   * returns all snapshots. `head` is the list_head object (its address is what counts) or an address.
   */
  async list<T extends object>(head: KObj<ListHead> | bigint, typeName: string, member: string, opts: ListOptions = {}): Promise<KObj<T>[]> {
    const headAddr = typeof head === 'bigint' ? head : head.$addr;
    const linkOffset = this.model.offsetOf(typeName, member).offset;
    const windows = opts.fields ? this.listWindows(typeName, linkOffset, [member, ...opts.fields]) : [[0, this.model.sizeOf(typeName)] as const];
    const windowed = opts.fields !== undefined && (windows.length > 1 || (windows[0] as readonly [number, number])[0] !== 0);
    const span = Math.max(...windows.map(([, to]) => to));
    const bytesPerEntry = windows.reduce((n, [from, to]) => n + to - from, 0);
    const perOp = Math.max(1, Math.min(READ_LIMITS.maxListEntries, Math.floor(READ_LIMITS.maxBatchBytes / bytesPerEntry)));
    const limit = opts.max ?? READ_LIMITS.maxListEntries;
    const out: KObj<T>[] = [];
    let from = headAddr;
    // A ring longer than one op allows continues from its last entry; the real head then shows up
    // as an entry and ends the walk.
    while (out.length < limit) {
      const max = Math.min(perOp, limit - out.length);
      // One walk per window, all in one request: `base = next - (linkOffset - window start)` points
      // the monitor's snapshot at the window, so no walk carries the bytes between windows.
      const ops: ReadOp[] = windows.map(([start, end]) => ({ kind: 'list', head: from, linkOffset: linkOffset - start, len: end - start, max }));
      const results = await readBatched(this.source, ops, this.stats);
      const walks = ops.map((op, w) => {
        const r = results[w] as NonNullable<(typeof results)[number]>;
        const start = (windows[w] as readonly [number, number])[0];
        const data = dataOf(op, r);
        const bases = ((r.ok && r.bases) || []).map((b) => b - BigInt(start));
        return { op, data, bases, at: new Map(bases.map((b, i) => [b, i])) };
      });
      const main = walks[0] as (typeof walks)[number];
      let reachedHead = false;
      const late = new Map<bigint, Buffer>();
      for (let i = 0; i < main.bases.length; i++) {
        const base = main.bases[i] as bigint;
        if (base + BigInt(linkOffset) === headAddr) {
          reachedHead = true;
          break;
        }
        if (!windowed) {
          out.push(makeKObj<T>(this.model, this, typeName, base, Buffer.from(main.data.subarray(i * main.op.len, (i + 1) * main.op.len)), 0, opts.fields !== undefined));
          continue;
        }
        const buf = Buffer.alloc(span);
        let whole = true;
        walks.forEach((walk, w) => {
          const j = walk.at.get(base);
          const len = (walk.op as { len: number }).len;
          if (j === undefined) whole = false;
          else walk.data.copy(buf, (windows[w] as readonly [number, number])[0], j * len, (j + 1) * len);
        });
        if (!whole) late.set(base, buf);
        out.push(makeKObj<T>(this.model, this, typeName, base, buf, 0, true, windows));
      }
      // An entry linked in between two walks of the same request: read its windows on their own.
      if (late.size > 0) await this.fillWindows(late, windows);
      if (reachedHead || main.bases.length < max) break;
      from = (main.bases[main.bases.length - 1] as bigint) + BigInt(linkOffset);
    }
    return out;
  }

  /**
   * The byte ranges holding `fields`, merged where the gap between them is small: a struct whose
   * wanted members sit in a few clusters (task_struct: its state and flags near the start, the rest
   * past 2 KiB) is read as those clusters alone.
   */
  fieldWindows(typeName: string, fields: readonly string[]): Array<readonly [number, number]> {
    const spans = fields.map((f) => {
      const x = this.model.offsetOf(typeName, f);
      return [x.offset, x.offset + x.type.size] as const;
    });
    spans.sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const [from, to] of spans) {
      const last = merged[merged.length - 1];
      if (last && from <= last[1] + WINDOW_GAP) last[1] = Math.max(last[1], to);
      else merged.push([from, to]);
    }
    return merged;
  }

  /**
   * Windows for a list walk, the one holding the link first (its walk follows the links itself).
   * A walk's snapshot cannot start past its link (the op's link offset is unsigned), so windows
   * after the link's are merged into it.
   */
  private listWindows(typeName: string, linkOffset: number, fields: readonly string[]): Array<readonly [number, number]> {
    const ws = this.fieldWindows(typeName, fields);
    const before = ws.filter(([, to]) => to <= linkOffset);
    const rest = ws.filter(([, to]) => to > linkOffset);
    return [[Math.min(...rest.map(([from]) => from)), Math.max(...rest.map(([, to]) => to))], ...before];
  }

  private async fillWindows(bufs: ReadonlyMap<bigint, Buffer>, windows: ReadonlyArray<readonly [number, number]>): Promise<void> {
    const ops: ReadOp[] = [...bufs.keys()].flatMap((a) => windows.map(([from, to]) => ({ kind: 'kv', addr: a + BigInt(from), len: to - from }) as ReadOp));
    const res = await readBatched(this.source, ops, this.stats);
    [...bufs.values()].forEach((buf, i) => {
      windows.forEach(([from], w) => {
        const k = i * windows.length + w;
        dataOf(ops[k] as ReadOp, res[k] as NonNullable<(typeof res)[number]>).copy(buf, from);
      });
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
