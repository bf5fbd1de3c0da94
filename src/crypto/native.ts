/**
 * Typed access to the native sector-crypto addon (native/sector_crypto.c, built by node-gyp into
 * build/Release during `npm ci`): OpenSSL's AES-256-XTS and the integrity tree's keyed BLAKE3 leaves over many
 * sectors per call, and keyed BLAKE3 itself (node:crypto has none). The XTS functions compute exactly what
 * XtsCipher (xts.ts) computes, which stays their reference (test/crypto/native.test.ts compares them); BLAKE3
 * is tested against b3sum. The addon is loaded on first use so that importing this module never fails by itself.
 */
import { loadNativeAddon } from './native-addon.ts';
import type { SectorNumber } from './xts.ts';

interface Addon {
  xtsEncrypt(key: Uint8Array, firstIv: bigint, ivStep: number, sectorSize: number, data: Uint8Array, out: Uint8Array): void;
  xtsDecrypt(key: Uint8Array, firstIv: bigint, ivStep: number, sectorSize: number, data: Uint8Array, out: Uint8Array): void;
  treeLeaves(key: Uint8Array, firstSector: bigint, data: Uint8Array, outLeaves: Uint8Array): void;
  blake3Keyed(key: Uint8Array, out: Uint8Array, ...parts: Uint8Array[]): void;
  sectorJob(
    kind: number,
    xtsKey: Uint8Array,
    integrityKey: Uint8Array,
    firstSector: bigint,
    encryptionSectorSize: number,
    fd: number,
    position: number,
    data: Uint8Array,
    out: Uint8Array,
    leaves: Uint8Array,
    callback: (status: number, bad: number) => void,
  ): void;
  xtsReadCached(xtsKey: Uint8Array, encryptionSectorSize: number, fd: number, position: number, firstSector: number, data: Uint8Array): number;
  xtsWriteNow(xtsKey: Uint8Array, encryptionSectorSize: number, fd: number, position: number, firstSector: number, plain: Uint8Array, scratch: Uint8Array): number;
}

/** plain64 counts 512-byte units whatever the sector size (see xts.ts). */
const IV_UNIT = 512;
const MAX_IV = (1n << 64n) - 1n;

let addon: Addon | undefined;

function load(): Addon {
  addon ??= loadNativeAddon<Addon>('sector_crypto', 'sector crypto');
  return addon;
}

function toBigSector(n: SectorNumber, what: string): bigint {
  if (typeof n === 'number' && !Number.isSafeInteger(n)) throw new RangeError(`${what} ${n} is not a safe integer`);
  const v = BigInt(n);
  if (v < 0n) throw new RangeError(`${what} ${v} is negative`);
  return v;
}

/**
 * AES-256-XTS over whole sectors of `data` into `out` (the same buffer, or one that does not overlap it, at
 * least as long). Sector s gets the tweak firstIv + s * ivStep as a 64-bit little-endian number.
 */
export function xtsEncryptNative(key: Uint8Array, firstIv: bigint, ivStep: number, sectorSize: number, data: Uint8Array, out: Uint8Array): void {
  load().xtsEncrypt(key, firstIv, ivStep, sectorSize, data, out);
}

/** The inverse of xtsEncryptNative, same arguments. */
export function xtsDecryptNative(key: Uint8Array, firstIv: bigint, ivStep: number, sectorSize: number, data: Uint8Array, out: Uint8Array): void {
  load().xtsDecrypt(key, firstIv, ivStep, sectorSize, data, out);
}

/**
 * The integrity tree's leaves of the 4096-byte sectors in `data` (docs/sealed-disk.md), into outLeaves[32i..]:
 * leaf_n = BLAKE3-keyed(key, sector_n ‖ "leaf" ‖ u64le(n)), n = firstSector + i. `key` is 32 bytes.
 */
export function treeLeavesNative(key: Uint8Array, firstSector: SectorNumber, data: Uint8Array, outLeaves: Uint8Array): void {
  load().treeLeaves(key, toBigSector(firstSector, 'treeLeaves: sector'), data, outLeaves);
}

/** BLAKE3 in keyed mode (32-byte key) over the concatenated parts (at most 8), 32 bytes written to `out`. */
export function blake3KeyedInto(out: Uint8Array, key: Uint8Array, ...parts: Uint8Array[]): void {
  load().blake3Keyed(key, out, ...parts);
}

/** BLAKE3 in keyed mode (32-byte key) over the concatenated parts: the 32-byte hash. */
export function blake3Keyed(key: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const out = Buffer.alloc(32);
  blake3KeyedInto(out, key, ...parts);
  return out;
}

/** XtsCipher's interface (AES-256-XTS, LUKS2 plain64 tweaks) on the native path. */
export class NativeXtsCipher {
  readonly #key: Buffer;

  /** `key` is key 1 (data) followed by key 2 (tweak), 64 bytes; copied. */
  constructor(key: Uint8Array) {
    if (key.length !== 64) throw new RangeError(`xts: key must be 64 bytes (two AES-256 keys), got ${key.length}`);
    // Checked here too so that a bad key fails when the context is made, as XtsCipher's does.
    if (Buffer.from(key.buffer, key.byteOffset, 32).equals(Buffer.from(key.buffer, key.byteOffset + 32, 32))) {
      throw new RangeError('xts: the two key halves must differ');
    }
    load();
    this.#key = Buffer.from(key);
  }

  /** Encrypts `data` (whole sectors, first one `firstSector` in `sectorSize` units) into `out` or a new buffer. */
  encryptSectors(firstSector: SectorNumber, sectorSize: number, data: Buffer, out?: Buffer): Buffer {
    return this.#run(xtsEncryptNative, firstSector, sectorSize, data, out);
  }

  decryptSectors(firstSector: SectorNumber, sectorSize: number, data: Buffer, out?: Buffer): Buffer {
    return this.#run(xtsDecryptNative, firstSector, sectorSize, data, out);
  }

  #run(op: typeof xtsEncryptNative, firstSector: SectorNumber, sectorSize: number, data: Buffer, out?: Buffer): Buffer {
    if (!Number.isInteger(sectorSize) || sectorSize < IV_UNIT || sectorSize % IV_UNIT !== 0) {
      throw new RangeError(`xts: sector size must be a power of two from 512 to 65536, got ${sectorSize}`);
    }
    const dst = out ?? Buffer.allocUnsafe(data.length);
    if (dst.length !== data.length) throw new RangeError(`xts: output length ${dst.length} != input length ${data.length}`);
    const step = sectorSize / IV_UNIT;
    const firstIv = toBigSector(firstSector, 'xts: sector') * BigInt(step);
    if (firstIv > MAX_IV) throw new RangeError(`xts: sector ${String(firstSector)} is beyond the 64-bit IV range`);
    op(this.#key, firstIv, step, sectorSize, data, dst);
    return dst;
  }
}

const JOB = { xtsRead: 0, xtsWrite: 1, open: 2, seal: 3, readOpen: 4 } as const;
const NONE = new Uint8Array(0);

function jobError(status: number, what: string): Error {
  if (status === -2) return Object.assign(new Error(`${what}: unexpected end of file`), { code: 'EIO' });
  if (status < 0) return new Error(`${what}: OpenSSL failed`);
  return Object.assign(new Error(`${what}: I/O error (errno ${status})`), { errno: status, code: status === 28 ? 'ENOSPC' : 'EIO' });
}

function sectorJob(kind: number, xtsKey: Uint8Array, integrityKey: Uint8Array, firstSector: number, ess: number, fd: number, position: number, data: Uint8Array, out: Uint8Array, leaves: Uint8Array): Promise<number> {
  const a = load();
  return new Promise((resolve, reject) => {
    a.sectorJob(kind, xtsKey, integrityKey, toBigSector(firstSector, 'sector job: sector'), ess, fd, position, data, out, leaves, (status, bad) => {
      if (status === 0) resolve(bad);
      else reject(jobError(status, 'sector job'));
    });
  });
}

/**
 * Whole-request sector work on libuv's thread pool, on the caller's buffers without copies (they must stay
 * untouched until the promise settles). Sectors count 4096-byte units; `ess` is the image's XTS data unit (4096,
 * or 512 for LUKS1), whose plain64 tweak counts 512-byte units. Computes what XtsCipher and treeLeavesNative
 * compute; `integrityKey` is the 32-byte BLAKE3 key.
 */
export const sectorJobs = {
  /** pread `data.length` bytes at `position`, then decrypt them in place. */
  xtsRead(key: Uint8Array, ess: number, fd: number, position: number, firstSector: number, data: Uint8Array): Promise<void> {
    return sectorJob(JOB.xtsRead, key, NONE, firstSector, ess, fd, position, data, NONE, NONE).then(() => undefined);
  },
  /**
   * xtsRead() done at once on this thread, if every byte is in the page cache (nothing waits for the disk).
   * Returns 0 when `data` holds the plaintext; otherwise an errno (EAGAIN: not cached; EOPNOTSUPP: the file
   * system cannot tell) and `data` holds anything: run xtsRead(), which reports real errors.
   */
  xtsReadCached(key: Uint8Array, ess: number, fd: number, position: number, firstSector: number, data: Uint8Array): number {
    return load().xtsReadCached(key, ess, fd, position, firstSector, data);
  },
  /**
   * xtsWrite() done at once on this thread (it blocks for as long as the pwrite does: for a buffered write, a copy
   * into the page cache unless the kernel throttles dirty pages). Throws the error xtsWrite() would reject with.
   */
  xtsWriteNow(key: Uint8Array, ess: number, fd: number, position: number, firstSector: number, plain: Uint8Array, scratch: Uint8Array): void {
    const status = load().xtsWriteNow(key, ess, fd, position, firstSector, plain, scratch);
    if (status !== 0) throw jobError(status, 'xts write');
  },
  /** Encrypt `plain` into `scratch` (same length or longer, not overlapping), then pwrite it at `position`. */
  xtsWrite(key: Uint8Array, ess: number, fd: number, position: number, firstSector: number, plain: Uint8Array, scratch: Uint8Array): Promise<void> {
    return sectorJob(JOB.xtsWrite, key, NONE, firstSector, ess, fd, position, plain, scratch, NONE).then(() => undefined);
  },
  /**
   * Checks every sector's leaf against expected[32i..]; flags[i] becomes 1 where it does not match. Decrypts
   * `data` in place only if all matched. Resolves with the number of mismatches.
   */
  open(xtsKey: Uint8Array, integrityKey: Uint8Array, ess: number, firstSector: number, data: Uint8Array, expected: Uint8Array, flags: Uint8Array): Promise<number> {
    return sectorJob(JOB.open, xtsKey, integrityKey, firstSector, ess, -1 >>> 0, 0, data, flags, expected);
  },
  /** pread `data.length` bytes at `position` into `data`, then open() them. */
  readOpen(xtsKey: Uint8Array, integrityKey: Uint8Array, ess: number, fd: number, position: number, firstSector: number, data: Uint8Array, expected: Uint8Array, flags: Uint8Array): Promise<number> {
    return sectorJob(JOB.readOpen, xtsKey, integrityKey, firstSector, ess, fd, position, data, flags, expected);
  },
  /** Encrypts `plain` into `ciphertext` and writes the ciphertext's leaves to `leaves`. */
  seal(xtsKey: Uint8Array, integrityKey: Uint8Array, ess: number, firstSector: number, plain: Uint8Array, ciphertext: Uint8Array, leaves: Uint8Array): Promise<void> {
    return sectorJob(JOB.seal, xtsKey, integrityKey, firstSector, ess, -1 >>> 0, 0, plain, ciphertext, leaves).then(() => undefined);
  },
};
