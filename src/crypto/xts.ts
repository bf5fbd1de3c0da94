// AES-XTS over many sectors per call, with the sector tweak that LUKS2/dm-crypt's "aes-xts-plain64" uses.
//
// Tweak ("plain64" IV): the 64-bit little-endian sector number, zero-extended to 16 bytes. dm-crypt counts that
// number in 512-byte units whatever the encryption sector size, unless the table carries `iv_large_sectors`.
// cryptsetup sets CRYPT_ACTIVATE_IV_LARGE_SECTORS only for BITLK and for plain mode with --iv-large-sectors,
// never for LUKS2, so in a LUKS2 segment with 4096-byte sectors data unit k (counted from the segment start) has
// IV = iv_tweak + 8k. test/client/image.test.ts proves it against `cryptsetup reencrypt`, which encrypts
// without device-mapper.
//
// Why not one Node `aes-256-xts` cipher per sector: the per-call cost of Node's cipher API, not AES, dominates.
// Here a batch costs one AES-ECB call under key 2 for all its sectors' initial tweaks, then per 64 KiB slice one
// AES-ECB call under key 1 for all the data blocks, with the GF(2^128) doubling and the XOR whitening done in JS
// over Uint32Array. The ECB cipher objects live as long as the key context: with padding off, `update()` on
// whole blocks returns every block at once and keeps no state between calls.
import { createCipheriv, createDecipheriv, type Cipher, type Decipher } from 'node:crypto';
import { endianness } from 'node:os';

if (endianness() !== 'LE') {
  // The Uint32Array views below read the tweak words in host byte order; XTS defines them little-endian.
  throw new Error('xts: this implementation needs a little-endian host');
}

const BLOCK = 16;
const CHUNK_BYTES = 64 * 1024;
const IV_UNIT = 512;
const MAX_IV = (1n << 64n) - 1n;
/** GF(2^128) reduction constant of XTS: x^128 = x^7 + x^2 + x + 1. */
const GF_POLY = 0x87;

export type SectorNumber = bigint | number;

/** A key context: create once per volume key and reuse it for every batch. */
export class XtsCipher {
  readonly keyBits: 256 | 512;
  readonly #dataEnc: Cipher;
  readonly #dataDec: Decipher;
  readonly #tweakEnc: Cipher;

  /** `key` is key 1 (data) followed by key 2 (tweak): 32 bytes for AES-128-XTS, 64 for AES-256-XTS. */
  constructor(key: Buffer) {
    if (key.length !== 32 && key.length !== 64) {
      throw new Error(`xts: key must be 32 or 64 bytes (two AES keys), got ${key.length}`);
    }
    const half = key.length / 2;
    const key1 = key.subarray(0, half);
    const key2 = key.subarray(half);
    if (key1.equals(key2)) {
      // With equal halves XTS degrades (the tweak is the encryption of the block's own position under the data
      // key); OpenSSL refuses such keys for the same reason.
      throw new Error('xts: the two key halves must differ');
    }
    const ecb = half === 32 ? 'aes-256-ecb' : 'aes-128-ecb';
    this.keyBits = half === 32 ? 512 : 256;
    this.#dataEnc = createCipheriv(ecb, key1, null).setAutoPadding(false);
    this.#dataDec = createDecipheriv(ecb, key1, null).setAutoPadding(false);
    this.#tweakEnc = createCipheriv(ecb, key2, null).setAutoPadding(false);
  }

  /**
   * Encrypts `data` (a whole number of sectors) starting at sector `firstSector`, counted in `sectorSize` units.
   * Writes into `out` (which may be `data` itself) or a new buffer, and returns it.
   */
  encryptSectors(firstSector: SectorNumber, sectorSize: number, data: Buffer, out?: Buffer): Buffer {
    return this.#run(true, firstSector, sectorSize, data, out);
  }

  /** The inverse of encryptSectors, same arguments. */
  decryptSectors(firstSector: SectorNumber, sectorSize: number, data: Buffer, out?: Buffer): Buffer {
    return this.#run(false, firstSector, sectorSize, data, out);
  }

  #run(encrypt: boolean, firstSector: SectorNumber, sectorSize: number, data: Buffer, out?: Buffer): Buffer {
    checkSectorSize(sectorSize);
    if (data.length % sectorSize !== 0) {
      throw new Error(`xts: data length ${data.length} is not a multiple of the sector size ${sectorSize}`);
    }
    const dst = out ?? Buffer.allocUnsafe(data.length);
    if (dst.length !== data.length) throw new Error(`xts: output length ${dst.length} != input length ${data.length}`);
    const sectors = data.length / sectorSize;
    if (sectors === 0) return dst;

    const tweaks = this.#initialTweaks(firstSector, sectorSize, sectors);
    const src = aligned(data);
    const work = aligned(dst);
    const blocksPerSector = sectorSize / BLOCK;
    const ecb = encrypt ? this.#dataEnc : this.#dataDec;
    // Sub-batches keep the AES call's fresh output buffer small enough to be recycled by malloc and to stay in
    // cache; one huge call would page-fault a new mapping every time and runs at half the speed.
    const chunkSectors = Math.max(1, Math.floor(CHUNK_BYTES / sectorSize));
    for (let s = 0; s < sectors; s += chunkSectors) {
      const n = Math.min(chunkSectors, sectors - s);
      const from = s * sectorSize;
      const to = from + n * sectorSize;
      const w = work.subarray(from, to);
      const t = tweaks.subarray(s * 4, (s + n) * 4);
      // Pass 1: w = data XOR T (w may alias data: each word is read before it is written).
      whiten(words(src.subarray(from, to)), words(w), t, n, blocksPerSector);
      const crypted = aligned(ecb.update(w));
      if (crypted.length !== w.length) throw new Error('xts: AES-ECB returned a short result');
      // Pass 2: w = AES(w) XOR T, regenerating the same tweak sequence.
      whiten(words(crypted), words(w), t, n, blocksPerSector);
    }
    if (work !== dst) work.copy(dst);
    return dst;
  }

  /** E_K2(IV) for every sector of the batch, in one AES call. */
  #initialTweaks(firstSector: SectorNumber, sectorSize: number, sectors: number): Uint32Array {
    const step = BigInt(sectorSize / IV_UNIT);
    const first = toSector(firstSector);
    const firstIv = first * step;
    const lastIv = (first + BigInt(sectors - 1)) * step;
    if (lastIv > MAX_IV) throw new Error(`xts: sector ${first + BigInt(sectors - 1)} is beyond the 64-bit IV range`);
    const ivs = Buffer.alloc(sectors * BLOCK);
    const w = words(ivs);
    let lo = Number(firstIv & 0xffffffffn);
    let hi = Number(firstIv >> 32n);
    const inc = Number(step);
    for (let s = 0; s < sectors; s++) {
      w[s * 4] = lo;
      w[s * 4 + 1] = hi;
      lo += inc;
      if (lo > 0xffffffff) {
        lo -= 0x100000000;
        hi += 1;
      }
    }
    return words(aligned(this.#tweakEnc.update(ivs)));
  }
}

/** One-shot form; pass an XtsCipher instead of a key to avoid re-creating the cipher objects per call. */
export function xtsEncryptSectors(
  key: Buffer | XtsCipher,
  firstSector: SectorNumber,
  sectorSize: number,
  data: Buffer,
  out?: Buffer,
): Buffer {
  return cipherFor(key).encryptSectors(firstSector, sectorSize, data, out);
}

export function xtsDecryptSectors(
  key: Buffer | XtsCipher,
  firstSector: SectorNumber,
  sectorSize: number,
  data: Buffer,
  out?: Buffer,
): Buffer {
  return cipherFor(key).decryptSectors(firstSector, sectorSize, data, out);
}

function cipherFor(key: Buffer | XtsCipher): XtsCipher {
  return key instanceof XtsCipher ? key : new XtsCipher(key);
}

/**
 * dst[b] = src[b] XOR T_b for every 16-byte block, where T_0 of each sector comes from `tweaks` and
 * T_{j+1} = T_j * x in GF(2^128): little-endian words shifted left by one, the bit carried out of bit 127 folded
 * back in as 0x87. Unrolled four blocks deep (a sector has at least 32), which V8 runs about 25% faster.
 */
function whiten(src: Uint32Array, dst: Uint32Array, tweaks: Uint32Array, sectors: number, blocksPerSector: number): void {
  let p = 0;
  for (let s = 0; s < sectors; s++) {
    let t0 = tweaks[s * 4]! | 0;
    let t1 = tweaks[s * 4 + 1]! | 0;
    let t2 = tweaks[s * 4 + 2]! | 0;
    let t3 = tweaks[s * 4 + 3]! | 0;
    let c = 0;
    for (let b = 0; b < blocksPerSector; b += 4) {
      dst[p] = src[p]! ^ t0;
      dst[p + 1] = src[p + 1]! ^ t1;
      dst[p + 2] = src[p + 2]! ^ t2;
      dst[p + 3] = src[p + 3]! ^ t3;
      c = (t3 >> 31) & GF_POLY;
      t3 = (t3 << 1) | (t2 >>> 31);
      t2 = (t2 << 1) | (t1 >>> 31);
      t1 = (t1 << 1) | (t0 >>> 31);
      t0 = (t0 << 1) ^ c;
      dst[p + 4] = src[p + 4]! ^ t0;
      dst[p + 5] = src[p + 5]! ^ t1;
      dst[p + 6] = src[p + 6]! ^ t2;
      dst[p + 7] = src[p + 7]! ^ t3;
      c = (t3 >> 31) & GF_POLY;
      t3 = (t3 << 1) | (t2 >>> 31);
      t2 = (t2 << 1) | (t1 >>> 31);
      t1 = (t1 << 1) | (t0 >>> 31);
      t0 = (t0 << 1) ^ c;
      dst[p + 8] = src[p + 8]! ^ t0;
      dst[p + 9] = src[p + 9]! ^ t1;
      dst[p + 10] = src[p + 10]! ^ t2;
      dst[p + 11] = src[p + 11]! ^ t3;
      c = (t3 >> 31) & GF_POLY;
      t3 = (t3 << 1) | (t2 >>> 31);
      t2 = (t2 << 1) | (t1 >>> 31);
      t1 = (t1 << 1) | (t0 >>> 31);
      t0 = (t0 << 1) ^ c;
      dst[p + 12] = src[p + 12]! ^ t0;
      dst[p + 13] = src[p + 13]! ^ t1;
      dst[p + 14] = src[p + 14]! ^ t2;
      dst[p + 15] = src[p + 15]! ^ t3;
      c = (t3 >> 31) & GF_POLY;
      t3 = (t3 << 1) | (t2 >>> 31);
      t2 = (t2 << 1) | (t1 >>> 31);
      t1 = (t1 << 1) | (t0 >>> 31);
      t0 = (t0 << 1) ^ c;
      p += 16;
    }
  }
}

function checkSectorSize(sectorSize: number): void {
  if (!Number.isInteger(sectorSize) || sectorSize < IV_UNIT || sectorSize > 65536 || (sectorSize & (sectorSize - 1)) !== 0) {
    throw new Error(`xts: sector size must be a power of two from 512 to 65536, got ${sectorSize}`);
  }
}

function toSector(n: SectorNumber): bigint {
  if (typeof n === 'number' && !Number.isSafeInteger(n)) throw new Error(`xts: sector number ${n} is not a safe integer`);
  const v = BigInt(n);
  if (v < 0n) throw new Error(`xts: negative sector number ${v}`);
  return v;
}

/** Uint32Array needs a 4-byte aligned offset; Node's pool and fresh buffers are 8-aligned, caller slices may not be. */
function aligned(b: Buffer): Buffer {
  return b.byteOffset % 4 === 0 ? b : Buffer.from(b);
}

function words(b: Buffer): Uint32Array {
  return new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
}
