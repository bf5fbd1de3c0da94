/**
 * The XTS-only sealed disk (docs/sealed-disk.md, "XTS only"): a LUKS2 image's AES-XTS payload served as a plain
 * block device, with no integrity tree. It is the seed's original mechanism, chosen explicitly by the tenant
 * (launch bundle `disk.integrity: 'none'`): storage sees only ciphertext, but a flipped, moved or rolled-back
 * sector is not detected — it decrypts to garbage, or to old data, and is served as such.
 *
 * Each request is one job on libuv's thread pool (crypto/native.ts sectorJobs): the pread and the XTS over the
 * whole request, or the XTS and the pwrite, with no copy; reads decrypt in place in the caller's buffer. Reads
 * whose bytes are in the page cache, and small writes, may instead be done at once on the event loop (see
 * INLINE_ALWAYS and INLINE_WRITE_MAX). Writes go through the page cache like qemu-nbd's cache=writeback; FLUSH
 * and FUA fdatasync the image (after the write, before the reply). The boot-sector
 * check of the integrity export is kept: a wrong key or another disk stops the disk on the first read of sector 0.
 */
import { open as openCb, close as closeCb, fstat as fstatCb, fdatasync as fdatasyncCb } from 'node:fs';
import { constants } from 'node:os';
import { promisify } from 'node:util';
import { deriveVmKey, VOLUME_KEY_BYTES } from '../../crypto/keys.ts';
import { integrityImageId } from '../../crypto/integrity-tree.ts';
import { sectorJobs } from '../../crypto/native.ts';
import { ioError, type BlockBackend, type BlockSizes } from './backend.ts';
import { SpareBuffers } from './buffer-pool.ts';
import { SealedDiskError, type AlertSink, type SealedDiskAlert } from './sealed-alerts.ts';
import type { EncryptionSectorSize } from './sector-crypto.ts';

const openAsync = promisify(openCb);
const closeAsync = promisify(closeCb);
const fstatAsync = promisify(fstatCb);
const fdatasyncAsync = promisify(fdatasyncCb);
const { errno } = constants;

const SECTOR = 4096;
export const XTS_MAX_PAYLOAD = 32 * 1024 * 1024;
/** Write-zeroes encrypts zero sectors this many bytes at a time. */
const ZERO_CHUNK = 1024 * 1024;
/** Encryption output buffers kept for reuse: enough for the NBD session's concurrent writes. */
const SPARE_BUFFERS = 32;
const SPARE_MAX_BYTES = 1024 * 1024;
/**
 * Reads this small are served on the event loop when their bytes are in the page cache (xtsReadCached): the
 * thread-pool round trip (queue lock, futex wake, eventfd wake, context switches) costs more CPU than their pread
 * and decryption. At 4 KiB random reads that cut the server's CPU per GB by more than half.
 */
const INLINE_ALWAYS = 32 * 1024;
/**
 * Larger reads up to this size (a coalesced run of 64 KiB reads) are served there too once POOL_DEPTH reads of
 * ours are already on the pool: the loop and pool threads then share the work over both cores of a small host,
 * where either alone would be the bottleneck; the loop is never held for long (256 KiB: under 0.1 ms).
 */
const INLINE_MAX = 256 * 1024;
const POOL_DEPTH = 2;
/**
 * Writes this small are encrypted and written on the event loop (xtsWriteNow): a buffered 4 KiB pwrite is a copy
 * into the page cache, and ext4 serialises writers to one file on its inode lock anyway, so pool threads only
 * spun on that lock and paid the round trip. Should one take long (dirty-page throttling, a contended lock),
 * writes go back to the pool for a while so the loop is not held again.
 */
const INLINE_WRITE_MAX = 32 * 1024;
const SLOW_INLINE_WRITE_MS = 10;
const POOL_WRITES_FOR_MS = 1000;
let zeroes: Buffer | undefined;

export interface XtsBackendOptions {
  imagePath: string;
  /** Byte offset of the payload in the image. */
  payloadOffset: number;
  /** Disk size in 4096-byte sectors (from the launch bundle: the image may be longer, never shorter). */
  sectors: number;
  /** The 64-byte volume key. */
  volumeKey: Buffer;
  onAlert: AlertSink;
  /** 4096 for our images, 512 for LUKS1 imports. Default 4096. */
  encryptionSectorSize?: EncryptionSectorSize;
}

export class XtsBackend implements BlockBackend {
  readonly blockSizes: BlockSizes = { min: SECTOR, preferred: SECTOR, max: XTS_MAX_PAYLOAD };
  readonly readOnly = false;
  /** Trim would expose which sectors the guest freed and read back as garbage; not offered. */
  readonly canTrim = false;
  readonly canWriteZeroes = true;
  readonly size: number;
  /** Same derivation as the integrity export's, so alerts name the image the same way. */
  readonly imageId: string;

  readonly #fd: number;
  readonly #payloadOffset: number;
  readonly #key: Buffer;
  readonly #ess: EncryptionSectorSize;
  readonly #onAlert: AlertSink;
  readonly #spare = new SpareBuffers(SPARE_BUFFERS, SPARE_MAX_BYTES, 64 * 1024);
  #bootChecked = false;
  /** Cleared if the file system cannot say whether a read would wait (RWF_NOWAIT unsupported). */
  #tryCached = true;
  /** Until this performance.now() time, writes go to the pool (see INLINE_WRITE_MAX). */
  #poolWritesUntil = 0;
  /** Reads running as thread-pool jobs. */
  #poolReads = 0;
  #failed: Error | null = null;
  #running = 0;
  #idle: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  private constructor(fd: number, opts: XtsBackendOptions, imageId: string) {
    this.#fd = fd;
    this.#payloadOffset = opts.payloadOffset;
    this.#ess = opts.encryptionSectorSize ?? 4096;
    this.#key = Buffer.from(opts.volumeKey);
    this.#onAlert = opts.onAlert;
    this.size = opts.sectors * SECTOR;
    this.imageId = imageId;
  }

  static async open(opts: XtsBackendOptions): Promise<XtsBackend> {
    if (!Number.isSafeInteger(opts.payloadOffset) || opts.payloadOffset < 0) throw new SealedDiskError(`bad payload offset ${opts.payloadOffset}`, 'INVALID');
    if (!Number.isSafeInteger(opts.sectors) || opts.sectors < 1 || opts.sectors > 2 ** 32) throw new SealedDiskError(`bad sector count ${opts.sectors}`, 'INVALID');
    if (!Buffer.isBuffer(opts.volumeKey) || opts.volumeKey.length !== VOLUME_KEY_BYTES) {
      throw new SealedDiskError(`the volume key must be ${VOLUME_KEY_BYTES} bytes`, 'INVALID');
    }
    if (opts.volumeKey.subarray(0, 32).equals(opts.volumeKey.subarray(32))) throw new SealedDiskError('the volume key halves must differ (AES-XTS)', 'INVALID');
    const ess = opts.encryptionSectorSize ?? 4096;
    if (ess !== 512 && ess !== 4096) throw new SealedDiskError(`encryption sector size must be 512 or 4096, got ${String(ess)}`, 'INVALID');
    const integrityKey = deriveVmKey(opts.volumeKey, 'integrity');
    const imageId = integrityImageId(integrityKey);
    integrityKey.fill(0);
    const fd = await openAsync(opts.imagePath, 'r+');
    try {
      const st = await fstatAsync(fd);
      if (!st.isFile()) throw new SealedDiskError(`${opts.imagePath} is not a regular file`, 'INVALID');
      if (st.size < opts.payloadOffset + opts.sectors * SECTOR) {
        throw new SealedDiskError(`${opts.imagePath} is ${st.size} bytes, shorter than its ${opts.sectors} sectors from ${opts.payloadOffset}`, 'INVALID');
      }
      return new XtsBackend(fd, opts, imageId);
    } catch (err) {
      await closeAsync(fd).catch(() => undefined);
      throw err;
    }
  }

  read(offset: number, length: number, into: Buffer): Promise<void> {
    const data = into.subarray(0, length);
    const inline = length <= INLINE_ALWAYS || (length <= INLINE_MAX && this.#poolReads >= POOL_DEPTH);
    if (inline && this.#tryCached && !this.#closing && !this.#failed) {
      try {
        // Synchronous: the reply buffer holds ciphertext only within this call.
        const status = sectorJobs.xtsReadCached(this.#key, this.#ess, this.#fd, this.#payloadOffset + offset, offset / SECTOR, data);
        if (status === 0) {
          if (offset === 0 && !this.#bootChecked) this.#checkBootSector(data);
          return Promise.resolve();
        }
        if (status === errno.EOPNOTSUPP) this.#tryCached = false;
      } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
    }
    return this.#run(async () => {
      this.#poolReads++;
      try {
        // In place: the reply buffer holds ciphertext only inside the job.
        await sectorJobs.xtsRead(this.#key, this.#ess, this.#fd, this.#payloadOffset + offset, offset / SECTOR, data);
      } finally {
        this.#poolReads--;
      }
      if (offset === 0 && !this.#bootChecked) this.#checkBootSector(data);
    });
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (data.length <= INLINE_WRITE_MAX && !this.#closing && !this.#failed && performance.now() >= this.#poolWritesUntil) {
      const out = this.#spare.take(data.length);
      try {
        const start = performance.now();
        sectorJobs.xtsWriteNow(this.#key, this.#ess, this.#fd, this.#payloadOffset + offset, offset / SECTOR, data, out);
        const end = performance.now();
        if (end - start > SLOW_INLINE_WRITE_MS) this.#poolWritesUntil = end + POOL_WRITES_FOR_MS;
      } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
      } finally {
        this.#spare.give(out);
      }
      return fua ? this.#run(() => fdatasyncAsync(this.#fd)) : Promise.resolve();
    }
    return this.#run(async () => {
      await this.#write(offset, data);
      if (fua) await fdatasyncAsync(this.#fd);
    });
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    return this.#run(async () => {
      zeroes ??= Buffer.alloc(ZERO_CHUNK);
      for (let done = 0; done < length; done += ZERO_CHUNK) await this.#write(offset + done, zeroes.subarray(0, Math.min(ZERO_CHUNK, length - done)));
      if (fua) await fdatasyncAsync(this.#fd);
    });
  }

  trim(): Promise<void> {
    return Promise.reject(ioError('trim is not supported by a sealed disk', 'EINVAL'));
  }

  flush(): Promise<void> {
    return this.#run(() => fdatasyncAsync(this.#fd));
  }

  /** Waits for running requests, syncs and closes the image. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#running > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
      try {
        if (!this.#failed) await fdatasyncAsync(this.#fd);
      } finally {
        this.#key.fill(0);
        await closeAsync(this.#fd);
      }
    })();
    return this.#closing;
  }

  async #write(offset: number, plain: Buffer): Promise<void> {
    // The caller's payload stays untouched (it may be shared, e.g. the zero chunk): encrypt into our own buffer.
    const out = this.#spare.take(plain.length);
    try {
      await sectorJobs.xtsWrite(this.#key, this.#ess, this.#fd, this.#payloadOffset + offset, offset / SECTOR, plain, out);
    } finally {
      this.#spare.give(out);
    }
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

  #checkBootSector(sector0: Buffer): void {
    this.#bootChecked = true;
    if (sector0[510] === 0x55 && sector0[511] === 0xaa) return;
    const reason = 'sector 0 does not end with the MBR signature 0x55AA once decrypted: wrong volume key or another disk';
    this.#alert({ kind: 'BAD_KEY_OR_DISK', image: this.imageId, reason });
    this.#failed = new Error(reason);
    // The plaintext of a wrong key is garbage, but it is not the guest's: wipe it before failing.
    sector0.fill(0);
    throw ioError(`sealed disk ${this.imageId}: ${reason}`);
  }

  #alert(a: SealedDiskAlert): void {
    try {
      this.#onAlert(a);
    } catch {
      // A failing sink must not turn a refused request into a crash; the request still fails.
    }
  }
}
