/**
 * Runs the sealed disk's sector crypto (XTS + the integrity tree's keyed-BLAKE3 leaves) on worker threads, one per core, so large requests
 * use both cores and leave the main thread free for the NBD protocol. Other requests ("inline") run as one
 * native job each on libuv's thread pool, on the caller's buffers: no copy and no worker round trip, and still
 * off the main thread.
 *
 * One pool serves every sealed disk of the process (CryptoPool.acquire); each disk registers its keys as a
 * CryptoContext. Workers start on the first large request. A job carries at most SLAB_SECTORS sectors through
 * the worker's shared slab; a large request is cut into parts spread over the workers. If a worker dies (or
 * cannot start) the pool stops using workers: its unfinished parts and everything after run inline (slower,
 * still correct).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { SpareBuffers } from './buffer-pool.ts';
import { readFully } from './fd-io.ts';
import { SLAB_BYTES, SLAB_EXPECTED_AT, SLAB_LEAVES_AT, SLAB_SECTORS, type WorkerReply, type WorkerRequest } from './crypto-protocol.ts';
import { SectorCrypto, type SectorKeys } from './sector-crypto.ts';

const SECTOR = 4096;
const LEAF = 32;
/**
 * Requests up to this size run inline by default. Measured on a 2-core host with qemu-img bench as the client
 * (64 KiB and 1 MiB sequential reads, A/B interleaved): the workers' extra copies and wake-ups cost more than
 * the second core gives once the client and the main thread occupy both cores, so there everything runs inline
 * (on libuv's pool, which uses both cores without copies); with more cores, requests above 32 KiB (8 sectors,
 * well above a worker round trip) go to the workers.
 */
export const DEFAULT_INLINE_MAX_BYTES = availableParallelism() > 2 ? 32 * 1024 : Number.POSITIVE_INFINITY;
/** Inline seal output buffers kept for reuse: enough for a client's queue of requests up to 1 MiB. */
const SPARE_BUFFERS = 32;
const SPARE_MAX_BYTES = 1024 * (SECTOR + LEAF);
const SPARE_MIN_BYTES = 16 * (SECTOR + LEAF);
/** Parts smaller than this are not worth a separate job. */
const MIN_PART_SECTORS = 16;

/** Receives sealed sectors: views valid only during the call (copy what must outlive it). */
export type SealSink = (firstSector: number, ciphertext: Buffer, leaves: Buffer) => void;

interface Job {
  request: Extract<WorkerRequest, { type: 'seal' | 'open' }>;
  input: Buffer;
  /** open: the expected leaves in; the plaintext out (only when all verified). */
  expected?: Buffer;
  output?: Buffer;
  /** seal: takes the ciphertext and leaves straight from the slab. */
  sink?: SealSink;
  resolve(bad: number[]): void;
  reject(err: Error): void;
}

interface Slot {
  worker: Worker;
  slab: Buffer;
  job: Job | null;
}

/** The workers could not do a job (none running, one died, or it failed): the caller runs it inline. */
class WorkersUnavailable extends Error {
  override readonly name = 'WorkersUnavailable';
}

let shared: CryptoPool | undefined;
let sharedRefs = 0;

export class CryptoPool {
  readonly threads: number;
  readonly #keys = new Map<number, SectorKeys>();
  readonly #queue: Job[] = [];
  #slots: Slot[] | null = null;
  #broken = false;
  #closed = false;
  #nextKey = 1;

  constructor(threads = availableParallelism()) {
    if (!Number.isInteger(threads) || threads < 0 || threads > 64) throw new RangeError(`crypto pool: bad thread count ${threads}`);
    this.threads = threads;
  }

  /** The process-wide pool; pair every acquire() with a release(). */
  static acquire(): CryptoPool {
    shared ??= new CryptoPool();
    sharedRefs++;
    return shared;
  }

  async release(): Promise<void> {
    if (this !== shared) return this.close();
    if (--sharedRefs > 0) return;
    shared = undefined;
    await this.close();
  }

  /** Whether large requests go to workers. */
  get parallel(): boolean {
    return this.threads > 0 && !this.#broken && !this.#closed;
  }

  context(keys: SectorKeys, inlineMaxBytes = DEFAULT_INLINE_MAX_BYTES): CryptoContext {
    const id = this.#nextKey++;
    const copy: SectorKeys = { volumeKey: Buffer.from(keys.volumeKey), integrityKey: Buffer.from(keys.integrityKey), encryptionSectorSize: keys.encryptionSectorSize };
    const inline = new SectorCrypto(copy);
    this.#keys.set(id, copy);
    for (const s of this.#slots ?? []) s.worker.postMessage(keyMessage(id, copy));
    return new CryptoContext(this, id, inline, inlineMaxBytes);
  }

  /** Forgets a context's keys, here and in the workers. */
  dropKey(id: number): void {
    const keys = this.#keys.get(id);
    if (!keys) return;
    this.#keys.delete(id);
    keys.volumeKey.fill(0);
    keys.integrityKey.fill(0);
    for (const s of this.#slots ?? []) s.worker.postMessage({ type: 'drop', key: id } satisfies WorkerRequest);
  }

  /** Runs one job (at most SLAB_SECTORS sectors) on a worker; resolves with the failed sectors of an open. */
  run(job: Omit<Job, 'resolve' | 'reject'>): Promise<number[]> {
    return new Promise((resolve, reject) => {
      if (!this.parallel) return reject(new WorkersUnavailable('crypto pool is not running workers'));
      this.#queue.push({ ...job, resolve, reject });
      this.#pump();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const slots = this.#slots ?? [];
    this.#slots = null;
    this.#failAll(slots, new WorkersUnavailable('crypto pool closed'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  #start(): Slot[] {
    // Workers do not inherit tsx's loader, so each registers it before loading the TypeScript worker module.
    const api = import.meta.resolve('tsx/esm/api');
    const entry = new URL('./crypto-worker.ts', import.meta.url).href;
    const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); })`;
    const slots = Array.from({ length: this.threads }, () => {
      const sab = new SharedArrayBuffer(SLAB_BYTES);
      const worker = new Worker(code, { eval: true, workerData: { slab: sab } });
      const slot: Slot = { worker, slab: Buffer.from(sab), job: null };
      worker.on('message', (reply: WorkerReply) => this.#done(slot, reply));
      worker.on('error', (err) => this.#lost(err));
      worker.on('exit', (code) => this.#lost(new Error(`crypto worker exited with code ${code}`)));
      // Only a worker with a job keeps the process alive (unref after the listeners: adding one refs it again).
      worker.unref();
      for (const [id, keys] of this.#keys) worker.postMessage(keyMessage(id, keys));
      return slot;
    });
    return slots;
  }

  #pump(): void {
    if (!this.#slots) {
      try {
        this.#slots = this.#start();
      } catch (err) {
        this.#lost(err instanceof Error ? err : new Error(String(err)));
        return;
      }
    }
    for (const slot of this.#slots) {
      if (slot.job) continue;
      const job = this.#queue.shift();
      if (!job) return;
      slot.job = job;
      slot.worker.ref();
      job.input.copy(slot.slab, 0);
      if (job.expected) job.expected.copy(slot.slab, SLAB_EXPECTED_AT);
      slot.worker.postMessage(job.request);
    }
  }

  #done(slot: Slot, reply: WorkerReply): void {
    const job = slot.job;
    slot.job = null;
    slot.worker.unref();
    if (job) {
      if ('error' in reply) job.reject(new WorkersUnavailable(`crypto worker: ${reply.error}`));
      else {
        const { sectors, firstSector } = job.request;
        try {
          if (job.sink) job.sink(firstSector, slot.slab.subarray(0, sectors * SECTOR), slot.slab.subarray(SLAB_LEAVES_AT, SLAB_LEAVES_AT + sectors * LEAF));
          else if (reply.bad.length === 0) slot.slab.copy(job.output!, 0, 0, sectors * SECTOR);
          job.resolve(reply.bad);
        } catch (err) {
          job.reject(err instanceof Error ? err : new Error(String(err)));
        }
      }
    }
    if (!this.#closed) this.#pump();
  }

  #lost(err: Error): void {
    if (this.#closed || this.#broken) return;
    this.#broken = true;
    const slots = this.#slots ?? [];
    this.#slots = null;
    this.#failAll(slots, new WorkersUnavailable(`crypto worker failed: ${err.message}`));
    for (const s of slots) void s.worker.terminate();
  }

  #failAll(slots: Slot[], err: Error): void {
    for (const s of slots) {
      s.job?.reject(err);
      s.job = null;
    }
    for (const job of this.#queue.splice(0)) job.reject(err);
  }
}

function keyMessage(key: number, k: SectorKeys): WorkerRequest {
  return { type: 'key', key, volumeKey: new Uint8Array(k.volumeKey), integrityKey: new Uint8Array(k.integrityKey), encryptionSectorSize: k.encryptionSectorSize };
}

/** One disk's keys, on the main thread and in the pool's workers. */
export class CryptoContext {
  #closed = false;
  /** Reusable output buffers of inline seals (ciphertext, then leaves). */
  readonly #spare = new SpareBuffers(SPARE_BUFFERS, SPARE_MAX_BYTES, SPARE_MIN_BYTES);

  constructor(
    private readonly pool: CryptoPool,
    private readonly key: number,
    private readonly inline: SectorCrypto,
    private readonly inlineMaxBytes: number,
  ) {}

  /**
   * Encrypts `plain` and hashes the ciphertext; `sink` receives the results, in parts (in any order), as views
   * into the pool's or this context's buffers: no allocation and no copy beyond what the sink makes.
   */
  async seal(firstSector: number, plain: Buffer, sink: SealSink): Promise<void> {
    const sectors = plain.length / SECTOR;
    if (!this.#offload(plain.length)) return this.#sealInline(firstSector, plain, sink);
    await Promise.all(
      this.#parts(sectors).map(([from, count]) => {
        const part = plain.subarray(from * SECTOR, (from + count) * SECTOR);
        return this.pool
          .run({ request: { type: 'seal', key: this.key, firstSector: firstSector + from, sectors: count }, input: part, sink })
          .catch((err: unknown) => {
            if (!(err instanceof WorkersUnavailable)) throw err;
            return this.#sealInline(firstSector + from, part, sink);
          });
      }),
    );
  }

  /** Whether a request of this many bytes runs inline, i.e. whether sealInto() may be used for it. */
  runsInline(bytes: number): boolean {
    return !this.#offload(bytes);
  }

  /**
   * An inline seal (see runsInline) into the caller's buffers: one job on libuv's thread pool, which must leave
   * all three untouched until it settles. `ciphertext` must not overlap `plain`.
   */
  sealInto(firstSector: number, plain: Buffer, ciphertext: Buffer, leaves: Buffer): Promise<void> {
    return this.inline.sealAsync(firstSector, plain, ciphertext, leaves);
  }

  /**
   * Not on a worker: one job on libuv's thread pool, into a buffer of this call's own (jobs run concurrently),
   * taken from the spares: a fresh ArrayBuffer per write made V8 run full GCs at write speed.
   */
  async #sealInline(firstSector: number, plain: Buffer, sink: SealSink): Promise<void> {
    const sectors = plain.length / SECTOR;
    const out = this.#spare.take(sectors * (SECTOR + LEAF));
    try {
      const ciphertext = out.subarray(0, plain.length);
      const leaves = out.subarray(plain.length, plain.length + sectors * LEAF);
      await this.inline.sealAsync(firstSector, plain, ciphertext, leaves);
      sink(firstSector, ciphertext, leaves);
    } finally {
      this.#spare.give(out);
    }
  }

  /**
   * Verifies each sector of `ciphertext` against `expected` (32 bytes per sector) and, where a whole part
   * verified, decrypts it into `plain`. Returns the indexes (from 0) of the sectors that failed; the caller must
   * not use `plain` unless that list is empty.
   */
  async open(firstSector: number, ciphertext: Buffer, expected: Buffer, plain: Buffer): Promise<number[]> {
    if (!this.#offload(ciphertext.length)) {
      if (plain === ciphertext) return this.inline.openInPlaceAsync(firstSector, ciphertext, expected);
      return this.inline.open(firstSector, ciphertext, expected, plain);
    }
    const results = await Promise.all(
      this.#parts(ciphertext.length / SECTOR).map(async ([from, count]) => {
        const input = ciphertext.subarray(from * SECTOR, (from + count) * SECTOR);
        const want = expected.subarray(from * LEAF, (from + count) * LEAF);
        const output = plain.subarray(from * SECTOR, (from + count) * SECTOR);
        const bad = await this.pool
          .run({ request: { type: 'open', key: this.key, firstSector: firstSector + from, sectors: count }, input, expected: want, output })
          .catch((err: unknown) => {
            if (!(err instanceof WorkersUnavailable)) throw err;
            return this.inline.open(firstSector + from, input, want, output);
          });
        return bad.map((i) => i + from);
      }),
    );
    return results.flat();
  }

  /**
   * pread + open() in place as one job on libuv's thread pool, when the request is not one for the workers;
   * otherwise the pread, then open() as usual. Returns the indexes of the sectors that failed.
   */
  async readOpen(fd: number, position: number, firstSector: number, data: Buffer, expected: Buffer): Promise<number[]> {
    if (this.#offload(data.length)) {
      await readFully(fd, data, position);
      return this.open(firstSector, data, expected, data);
    }
    return this.inline.readOpenAsync(fd, position, firstSector, data, expected);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.inline.dispose();
    this.pool.dropKey(this.key);
  }

  #offload(bytes: number): boolean {
    return bytes > this.inlineMaxBytes && this.pool.parallel;
  }

  /** [first, count] parts: spread over the workers, at least MIN_PART_SECTORS each, at most a slab. */
  #parts(sectors: number): [number, number][] {
    const size = Math.min(SLAB_SECTORS, Math.max(MIN_PART_SECTORS, Math.ceil(sectors / this.pool.threads)));
    const parts: [number, number][] = [];
    for (let from = 0; from < sectors; from += size) parts.push([from, Math.min(size, sectors - from)]);
    return parts;
  }
}
