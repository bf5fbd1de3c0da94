/**
 * The sealed disk (docs/sealed-disk.md): a LUKS2 image's AES-XTS payload served to QEMU as a plain block
 * device, every sector checked against the integrity tree before it is decrypted, writes held in a bounded
 * write-back buffer. A full buffer is spilled into the image and sidecar (recorded first, never synced); only
 * FLUSH and FUA make data, tree and root durable.
 *
 * Consistency between reads and spills: a read takes the image lock shared for its pread and decides in the
 * same synchronous step, right after it, where each sector comes from (the write buffers, newest first, else
 * the bytes just read, checked against the tree's leaf). A read none of whose sectors is buffered decides
 * before instead (all from the image) and keeps the lock through one native pread + verify + decrypt job. A
 * spill takes the lock exclusively only while it writes sectors into the image, so a read never sees
 * half-written sectors nor compares old bytes with a leaf already updated; buffered sectors are served from
 * memory until the spill that wrote them is over.
 *
 * Failure: a spill or flush that fails midway leaves the files for crash recovery to sort out at the next
 * open; the disk refuses every later request (EIO) and raises DISK_FAILURE. A failed boot-sector check does
 * the same after its BAD_KEY_OR_DISK alert.
 */
import { open as openCb, close as closeCb, fstat as fstatCb } from 'node:fs';
import { promisify } from 'node:util';
import { IntegrityTree, TreeHasher, integrityImageId, TREE_HASH_BYTES, TREE_SECTOR_BYTES, type ChangedNodes } from '../../crypto/integrity-tree.ts';
import { deriveVmKey, VOLUME_KEY_BYTES } from '../../crypto/keys.ts';
import { SidecarFormatError, type SidecarGeometry } from '../../formats/integrity-sidecar.ts';
import type { MonitorDb } from '../state/monitor-db.ts';
import { ioError, type BlockBackend, type BlockSizes } from './backend.ts';
import { CryptoPool, type CryptoContext } from './crypto-pool.ts';
import { fdatasyncFd, readFully, writevFully } from './fd-io.ts';
import { RwLock } from './rw-lock.ts';
import { SealedDiskError, type AlertSink, type SealedDiskAlert } from './sealed-alerts.ts';
import { loadTree } from './sealed-tree-load.ts';
import type { EncryptionSectorSize } from './sector-crypto.ts';
import { SectorRanges } from './sector-ranges.ts';
import { readSidecar, writeSidecarNodes } from './sidecar-file.ts';
import { WriteBuffer } from './write-buffer.ts';

export { SealedDiskError, type SealedDiskAlert } from './sealed-alerts.ts';

const openAsync = promisify(openCb);
const closeAsync = promisify(closeCb);
const fstatAsync = promisify(fstatCb);

const SECTOR = TREE_SECTOR_BYTES;
const LEAF = TREE_HASH_BYTES;
export const SEALED_MAX_PAYLOAD = 32 * 1024 * 1024;
export const DEFAULT_WRITE_BUFFER_BYTES = 32 * 1024 * 1024;
/** Write-zeroes encrypts zero sectors this many bytes at a time. */
const ZERO_CHUNK = 1024 * 1024;
let zeroes: Buffer | undefined;

/**
 * Points where the crash tests stop the process (afterFlushStep); see docs/sealed-disk.md. Every spill passes
 * the first five; a FLUSH spills what is buffered and then passes the last two.
 */
export type FlushStep =
  | 'pending-recorded'
  | 'image-partly-written'
  | 'image-written'
  | 'sidecar-partly-written'
  | 'sidecar-written'
  | 'synced'
  | 'committed';

export interface SealedBackendOptions {
  /** The LUKS2 (or LUKS1) image in untrusted storage; its payload is the disk. */
  imagePath: string;
  sidecarPath: string;
  /** Byte offset of the payload in the image. */
  payloadOffset: number;
  /** The 64-byte volume key (from the launch bundle). */
  volumeKey: Buffer;
  /** The root sealed into the launch bundle; trusted only if monitor state has no root for this image yet. */
  bundleRoot?: Buffer;
  db: MonitorDb;
  onAlert: AlertSink;
  /** The image's encryption sector size: 4096 for our images and LUKS2 defaults, 512 for LUKS1. Default 4096. */
  encryptionSectorSize?: EncryptionSectorSize;
  /** Bound of the write-back buffer (two of these exist: one filling, one being spilled). Default 32 MiB. */
  writeBufferBytes?: number;
  /** Requests up to this size are encrypted and hashed on the main thread. Default: the pool's. */
  inlineCryptoMaxBytes?: number;
  /** Default: the process-wide pool. */
  cryptoPool?: CryptoPool;
  /** Test seam: called after each spill and flush step; the crash tests SIGKILL themselves here. */
  afterFlushStep?: (step: FlushStep) => void;
}

/** Images open in this process: two backends on one image would corrupt each other's tree. */
const openImages = new Set<string>();

export class SealedBackend implements BlockBackend {
  readonly blockSizes: BlockSizes = { min: SECTOR, preferred: SECTOR, max: SEALED_MAX_PAYLOAD };
  readonly readOnly = false;
  /** Trim is not offered: a trimmed sector would need a leaf for "unknown contents", which the tree has not. */
  readonly canTrim = false;
  readonly canWriteZeroes = true;
  readonly size: number;
  readonly imageId: string;

  readonly #imageFd: number;
  readonly #sidecarFd: number;
  readonly #payloadOffset: number;
  readonly #geometry: SidecarGeometry;
  readonly #tree: IntegrityTree;
  readonly #hasher: TreeHasher;
  readonly #condemned: SectorRanges;
  readonly #crypto: CryptoContext;
  readonly #pool: CryptoPool;
  readonly #ownsPool: boolean;
  readonly #db: MonitorDb;
  readonly #onAlert: AlertSink;
  readonly #afterStep: ((step: FlushStep) => void) | undefined;
  readonly #imageLock = new RwLock();

  /** The committed root: the files may hold spilled writes beyond it, listed in pending records. */
  #root: Buffer;
  /** Buffers were spilled since #root was committed (pending records exist). */
  #uncommitted = false;
  #dirty: WriteBuffer;
  #spilling: WriteBuffer | null = null;
  #spare: WriteBuffer;
  readonly #spaceWaiters: (() => void)[] = [];
  #flushTail: Promise<void> = Promise.resolve();
  #queued: { done: Promise<void>; durable: boolean } | null = null;
  #spillRunning = false;
  #bootChecked = false;
  #failed: Error | null = null;
  #running = 0;
  #idle: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  private constructor(init: {
    imageId: string;
    imageFd: number;
    sidecarFd: number;
    payloadOffset: number;
    geometry: SidecarGeometry;
    tree: IntegrityTree;
    hasher: TreeHasher;
    root: Buffer;
    condemned: SectorRanges;
    crypto: CryptoContext;
    pool: CryptoPool;
    ownsPool: boolean;
    bufferSectors: number;
    opts: SealedBackendOptions;
  }) {
    this.imageId = init.imageId;
    this.#imageFd = init.imageFd;
    this.#sidecarFd = init.sidecarFd;
    this.#payloadOffset = init.payloadOffset;
    this.#geometry = init.geometry;
    this.#tree = init.tree;
    this.#hasher = init.hasher;
    this.#root = init.root;
    this.#condemned = init.condemned;
    this.#crypto = init.crypto;
    this.#pool = init.pool;
    this.#ownsPool = init.ownsPool;
    this.#db = init.opts.db;
    this.#onAlert = init.opts.onAlert;
    this.#afterStep = init.opts.afterFlushStep;
    this.size = init.tree.sectors * SECTOR;
    this.#dirty = new WriteBuffer(init.bufferSectors);
    this.#spare = new WriteBuffer(init.bufferSectors);
  }

  /**
   * Opens a sealed disk: reads and verifies the sidecar against the trusted root (sorting out the writes spilled
   * before a crash), and records the bundle's root as this image's root on its first open on this host.
   * Throws SealedDiskError('TAMPER') if the files do not verify as a whole; parts that do not verify are
   * alerted and refused per request.
   */
  static async open(opts: SealedBackendOptions): Promise<SealedBackend> {
    const payloadOffset = opts.payloadOffset;
    if (!Number.isSafeInteger(payloadOffset) || payloadOffset < 0) throw new SealedDiskError(`bad payload offset ${payloadOffset}`, 'INVALID');
    if (!Buffer.isBuffer(opts.volumeKey) || opts.volumeKey.length !== VOLUME_KEY_BYTES) {
      throw new SealedDiskError(`the volume key must be ${VOLUME_KEY_BYTES} bytes`, 'INVALID');
    }
    if (opts.bundleRoot !== undefined && (!Buffer.isBuffer(opts.bundleRoot) || opts.bundleRoot.length !== TREE_HASH_BYTES)) {
      throw new SealedDiskError(`the bundle root must be ${TREE_HASH_BYTES} bytes`, 'INVALID');
    }
    const bufferBytes = opts.writeBufferBytes ?? DEFAULT_WRITE_BUFFER_BYTES;
    if (!Number.isInteger(bufferBytes) || bufferBytes < SECTOR || bufferBytes % SECTOR !== 0) {
      throw new SealedDiskError(`the write buffer must be a positive multiple of ${SECTOR} bytes`, 'INVALID');
    }
    const integrityKey = deriveVmKey(opts.volumeKey, 'integrity');
    const imageId = integrityImageId(integrityKey);
    if (openImages.has(imageId)) throw new SealedDiskError(`image ${imageId} is already open`, 'BUSY');
    openImages.add(imageId);
    const tamper = (sector: number, sectors: number, reason: string): void => opts.onAlert({ kind: 'TAMPER', image: imageId, sector, sectors, reason });

    const fds: number[] = [];
    let pool: CryptoPool | undefined;
    let crypto: CryptoContext | undefined;
    try {
      const imageFd = await openAsync(opts.imagePath, 'r+');
      fds.push(imageFd);
      const sidecarFd = await openAsync(opts.sidecarPath, 'r+');
      fds.push(sidecarFd);
      const [imageStat, sidecarStat] = await Promise.all([fstatAsync(imageFd), fstatAsync(sidecarFd)]);
      if (!imageStat.isFile()) throw new SealedDiskError(`${opts.imagePath} is not a regular file`, 'INVALID');
      if (!sidecarStat.isFile()) throw new SealedDiskError(`${opts.sidecarPath} is not a regular file`, 'INVALID');

      let sidecar;
      try {
        sidecar = await readSidecar(sidecarFd, sidecarStat.size);
      } catch (err) {
        if (!(err instanceof SidecarFormatError)) throw err;
        tamper(0, 0, `the integrity sidecar is malformed: ${err.message}`);
        throw new SealedDiskError(`${opts.sidecarPath}: ${err.message}`, 'TAMPER');
      }
      const { geometry, levels } = sidecar;
      const payloadEnd = payloadOffset + geometry.sectors * SECTOR;
      if (imageStat.size < payloadEnd) {
        tamper(0, geometry.sectors, `the image is ${imageStat.size} bytes, shorter than its ${geometry.sectors} sectors`);
        throw new SealedDiskError(`${opts.imagePath} is shorter than the disk its sidecar describes`, 'TAMPER');
      }

      const hasher = new TreeHasher(integrityKey);
      const tree = new IntegrityTree(geometry.sectors, levels);
      const stateRoot = opts.db.imageRoot(imageId);
      const trusted = stateRoot ?? opts.bundleRoot;
      if (!trusted) throw new SealedDiskError(`image ${imageId}: no trusted root (none in monitor state, none in the bundle)`, 'NO_ROOT');
      const loaded = await loadTree({
        imageId,
        hasher,
        tree,
        root: trusted,
        db: opts.db,
        tamper,
        readCiphertext: async (first, count) => {
          const buf = Buffer.alloc(count * SECTOR);
          await readFully(imageFd, buf, payloadOffset + first * SECTOR);
          return buf;
        },
        syncImage: () => fdatasyncFd(imageFd),
        writeNodes: async (changed) => {
          await writeSidecarNodes(sidecarFd, geometry, levels, changed);
          await fdatasyncFd(sidecarFd);
        },
      });
      if (!stateRoot) opts.db.adoptImageRoot(imageId, loaded.root);

      const ownsPool = opts.cryptoPool === undefined;
      pool = opts.cryptoPool ?? CryptoPool.acquire();
      crypto = pool.context({ volumeKey: opts.volumeKey, integrityKey, encryptionSectorSize: opts.encryptionSectorSize ?? 4096 }, opts.inlineCryptoMaxBytes);
      return new SealedBackend({
        imageId,
        imageFd,
        sidecarFd,
        payloadOffset,
        geometry,
        tree,
        hasher,
        root: loaded.root,
        condemned: new SectorRanges(loaded.bad.map((b) => ({ first: b.firstSector, end: b.firstSector + b.sectors }))),
        crypto,
        pool,
        ownsPool,
        bufferSectors: bufferBytes / SECTOR,
        opts,
      });
    } catch (err) {
      crypto?.close();
      if (pool && opts.cryptoPool === undefined) await pool.release();
      await Promise.all(fds.map((fd) => closeAsync(fd).catch(() => undefined)));
      openImages.delete(imageId);
      throw err;
    } finally {
      integrityKey.fill(0);
    }
  }

  /** The root monitor state holds for this image (changes with every FLUSH that follows writes). */
  get root(): Buffer {
    return Buffer.from(this.#root);
  }

  read(offset: number, length: number, into: Buffer): Promise<void> {
    return this.#run(async () => {
      const first = offset / SECTOR;
      const count = length / SECTOR;
      this.#refuseCondemned(first, count, 'read');
      const data = into.subarray(0, length);
      const expected = Buffer.allocUnsafe(count * LEAF);
      const bad = await this.#imageLock.shared(async () => {
        if (!this.#dirty.hasAny(first, count) && !this.#spilling?.hasAny(first, count)) {
          // Nothing of it buffered: every sector comes from the image, checked against a copy of its leaf taken
          // now. The shared lock keeps the image as it is until the job is done, so a spill that updates these
          // leaves meanwhile (their new contents are in its buffer) cannot write them under this read.
          this.#tree.levels[0]!.copy(expected, 0, first * LEAF, (first + count) * LEAF);
          return this.#crypto.readOpen(this.#imageFd, this.#payloadOffset + offset, first, data, expected);
        }
        await readFully(this.#imageFd, data, this.#payloadOffset + offset);
        // Decided right after the pread, before the lock is released: see the header comment.
        for (let i = 0; i < count; i++) {
          const s = first + i;
          if (this.#dirty.copyOut(s, data, i * SECTOR, expected, i * LEAF)) continue;
          if (this.#spilling?.copyOut(s, data, i * SECTOR, expected, i * LEAF)) continue;
          this.#tree.levels[0]!.copy(expected, i * LEAF, s * LEAF, (s + 1) * LEAF);
        }
        return null;
      }) ?? (await this.#crypto.open(first, data, expected, data));
      if (bad.length > 0) {
        for (const i of bad) this.#alert({ kind: 'TAMPER', image: this.imageId, sector: first + i, sectors: 1, reason: 'the ciphertext does not match its leaf' });
        throw ioError(`sealed disk ${this.imageId}: ${bad.length} sector(s) from ${first + bad[0]!} failed verification`);
      }
      if (first === 0 && !this.#bootChecked) this.#checkBootSector(data);
    });
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.#run(() => this.#write(offset, data, fua));
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    return this.#run(async () => {
      zeroes ??= Buffer.alloc(ZERO_CHUNK);
      for (let done = 0; done < length; done += ZERO_CHUNK) {
        await this.#write(offset + done, zeroes.subarray(0, Math.min(ZERO_CHUNK, length - done)), false);
      }
      if (fua) await this.#schedule(true);
    });
  }

  trim(): Promise<void> {
    return Promise.reject(ioError('trim is not supported by a sealed disk', 'EINVAL'));
  }

  /** Makes every write completed before the call durable: data, tree and root. */
  flush(): Promise<void> {
    return this.#run(() => this.#schedule(true));
  }

  /** Waits for running requests, flushes what is buffered (unless the disk failed), and closes the files. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#running > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
      try {
        if (!this.#failed) await this.#schedule(true);
        else await this.#flushTail;
      } finally {
        this.#failed ??= ioError(`sealed disk ${this.imageId} is closed`, 'EBADF');
        for (const wake of this.#spaceWaiters.splice(0)) wake();
        this.#crypto.close();
        if (this.#ownsPool) await this.#pool.release();
        await Promise.all([closeAsync(this.#imageFd), closeAsync(this.#sidecarFd)]);
        openImages.delete(this.imageId);
      }
    })();
    return this.#closing;
  }

  async #run<T>(op: () => Promise<T>): Promise<T> {
    if (this.#closing) throw ioError(`sealed disk ${this.imageId} is closed`, 'EBADF');
    if (this.#failed) throw ioError(`sealed disk ${this.imageId} has failed: ${this.#failed.message}`);
    this.#running++;
    try {
      return await op();
    } finally {
      if (--this.#running === 0) this.#idle?.();
    }
  }

  async #write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const first = offset / SECTOR;
    const count = data.length / SECTOR;
    this.#refuseCondemned(first, count, 'write');
    // Sealed straight into slots of the write buffer if they are free: the copy into it was the main thread's
    // largest cost per written byte.
    const buf = this.#dirty;
    const slot = this.#crypto.runsInline(data.length) ? buf.reserve(count) : -1;
    if (slot >= 0) {
      try {
        await this.#crypto.sealInto(first, data, buf.ciphertextAt(slot, count), buf.leavesAt(slot, count));
      } catch (err) {
        buf.abandon();
        throw err;
      }
      buf.publish(first, slot, count);
    } else await this.#sealAndPlace(first, data);
    if (fua) await this.#schedule(true);
    // Half full: spill in the background so the other half can fill meanwhile.
    else if (this.#dirty.used * 2 >= this.#dirty.capacity && !this.#spillRunning) this.#kickSpill();
  }

  /** Seals (on workers if large) and copies the results into the write buffer, waiting for room as needed. */
  async #sealAndPlace(first: number, data: Buffer): Promise<void> {
    // Sealed parts go straight into the write buffer; what does not fit waits, copied, for the next one.
    const overflow: { first: number; ciphertext: Buffer; leaves: Buffer }[] = [];
    await this.#crypto.seal(first, data, (s, ciphertext, leaves) => {
      const placed = this.#place(s, ciphertext, leaves);
      if (placed < ciphertext.length / SECTOR) {
        overflow.push({ first: s + placed, ciphertext: Buffer.from(ciphertext.subarray(placed * SECTOR)), leaves: Buffer.from(leaves.subarray(placed * LEAF)) });
      }
    });
    for (const part of overflow) {
      const count = part.ciphertext.length / SECTOR;
      for (let i = 0; ; ) {
        if (this.#failed) throw ioError(`sealed disk ${this.imageId} has failed: ${this.#failed.message}`);
        i += this.#place(part.first + i, part.ciphertext.subarray(i * SECTOR), part.leaves.subarray(i * LEAF));
        if (i === count) break;
        // Full: spill it and wait until a spill has swapped in an empty buffer.
        this.#kickSpill();
        await new Promise<void>((resolve) => this.#spaceWaiters.push(resolve));
      }
    }
  }

  /** Puts as many of these sectors as fit into the write buffer; returns how many did. */
  #place(first: number, ciphertext: Buffer, leaves: Buffer): number {
    return this.#dirty.putRun(first, ciphertext, leaves);
  }

  /** A read or write touching sectors whose sidecar nodes did not verify fails, and says so every time. */
  #refuseCondemned(first: number, count: number, what: string): void {
    if (this.#condemned.empty) return;
    const hit = this.#condemned.intersect(first, count);
    if (hit.length === 0) return;
    for (const r of hit) {
      this.#alert({ kind: 'TAMPER', image: this.imageId, sector: r.first, sectors: r.end - r.first, reason: `${what} of sectors whose sidecar nodes did not verify` });
    }
    throw ioError(`sealed disk ${this.imageId}: sectors ${hit[0]!.first}.. cannot be verified`);
  }

  #checkBootSector(sector0: Buffer): void {
    this.#bootChecked = true;
    if (sector0[510] === 0x55 && sector0[511] === 0xaa) return;
    const reason = 'sector 0 does not end with the MBR signature 0x55AA once decrypted: wrong volume key or another disk';
    this.#alert({ kind: 'BAD_KEY_OR_DISK', image: this.imageId, reason });
    this.#failed = new Error(reason);
    throw ioError(`sealed disk ${this.imageId}: ${reason}`);
  }

  #alert(a: SealedDiskAlert): void {
    try {
      this.#onAlert(a);
    } catch {
      // A failing sink must not turn a refused request into a crash; the request still fails.
    }
  }

  #kickSpill(): void {
    this.#schedule(false).catch(() => undefined); // a failure is recorded in #failed and alerted
  }

  /**
   * Spills and flushes run one at a time. Callers arriving while one waits to start share it; a FLUSH joining a
   * queued spill makes it a flush (a flush is a spill of what is buffered, then the sync and the commit).
   */
  #schedule(durable: boolean): Promise<void> {
    if (this.#queued) {
      this.#queued.durable ||= durable;
      return this.#queued.done;
    }
    const q = { done: Promise.resolve(), durable };
    q.done = this.#flushTail.then(() => {
      this.#queued = null;
      return this.#spillAndMaybeCommit(q.durable);
    });
    this.#queued = q;
    this.#flushTail = q.done.catch(() => undefined);
    return q.done;
  }

  async #spillAndMaybeCommit(durable: boolean): Promise<void> {
    if (this.#failed) throw ioError(`sealed disk ${this.imageId} has failed: ${this.#failed.message}`);
    try {
      if (this.#dirty.size > 0) await this.#spill();
      if (durable && this.#uncommitted) await this.#commit();
    } catch (err) {
      const reason = `${durable ? 'flush' : 'spill'} failed: ${err instanceof Error ? err.message : String(err)}`;
      this.#failed = new Error(reason);
      this.#alert({ kind: 'DISK_FAILURE', image: this.imageId, reason });
      throw ioError(`sealed disk ${this.imageId}: ${reason}`);
    }
  }

  /**
   * Puts the filling buffer into the image and sidecar, not durably: first a pending record of every sector's
   * old and new leaf is committed (so it is on disk before any byte it describes can be), then ciphertext and
   * changed nodes are written to the page cache. Recovery accepts any listed version of each listed sector.
   */
  async #spill(): Promise<void> {
    const buf = this.#dirty;
    this.#spillRunning = true;
    this.#dirty = this.#spare;
    this.#spilling = buf;
    for (const wake of this.#spaceWaiters.splice(0)) wake();
    try {
      // Writes still sealing into its reserved slots finish first: it is spilled and cleared whole.
      await buf.drained();
      const sectors = buf.sectors();
      const newLeaves = buf.leavesOf(sectors);
      const oldLeaves = Buffer.allocUnsafe(newLeaves.length);
      const leaves0 = this.#tree.levels[0]!;
      // One copy per run of consecutive sectors: a spill lists thousands.
      for (let i = 0; i < sectors.length; ) {
        let j = i + 1;
        while (j < sectors.length && sectors[j] === sectors[j - 1]! + 1) j++;
        leaves0.copy(oldLeaves, i * LEAF, sectors[i]! * LEAF, (sectors[j - 1]! + 1) * LEAF);
        i = j;
      }
      this.#db.recordPendingWrites(this.imageId, this.#root, { sectors, oldLeaves, newLeaves });
      this.#uncommitted = true;
      this.#afterStep?.('pending-recorded');
      const changed: ChangedNodes = this.#tree.setLeaves(this.#hasher, sectors, newLeaves);
      await this.#imageLock.exclusive(async () => {
        let written = 0;
        for (const run of buf.runs(sectors)) {
          await writevFully(this.#imageFd, run.buffers, this.#payloadOffset + run.firstSector * SECTOR);
          if (++written === 1) this.#afterStep?.('image-partly-written');
        }
      });
      this.#afterStep?.('image-written');
      await writeSidecarNodes(this.#sidecarFd, this.#geometry, this.#tree.levels, changed, () => this.#afterStep?.('sidecar-partly-written'));
      this.#afterStep?.('sidecar-written');
    } finally {
      this.#spilling = null;
      buf.clear();
      this.#spare = buf;
      this.#spillRunning = false;
      for (const wake of this.#spaceWaiters.splice(0)) wake();
    }
  }

  /**
   * FLUSH after spills: image and sidecar synced at once (the pending records cover whatever state either is
   * in until the commit), then the new root committed with the records dropped, in one transaction.
   */
  async #commit(): Promise<void> {
    await Promise.all([fdatasyncFd(this.#imageFd), fdatasyncFd(this.#sidecarFd)]);
    this.#afterStep?.('synced');
    const root = this.#tree.root(this.#hasher);
    this.#db.commitRoot(this.imageId, this.#root, root);
    this.#root = root;
    this.#uncommitted = false;
    this.#afterStep?.('committed');
  }
}
