/**
 * The per-sector work of the sealed disk, on whichever thread runs it (a libuv pool thread through the *Async
 * methods, a crypto worker for large requests on hosts with more than two cores): encrypt and hash on write;
 * on read, hash and compare with the trusted leaves first and decrypt only when every sector matched.
 *
 * Sectors here are the integrity tree's 4096-byte units. The XTS data unit is the image's encryption sector
 * (4096 for our images, 512 for LUKS1 imports); the plain64 tweak counts 512-byte units either way, which
 * NativeXtsCipher handles given the sector size.
 *
 * Both steps run in the native addon (crypto/native.ts: OpenSSL's XTS and keyed BLAKE3 over the whole batch in
 * one call), tested against the TypeScript XtsCipher and against b3sum.
 */
import { TREE_HASH_BYTES, TREE_KEY_BYTES, TREE_SECTOR_BYTES } from '../../crypto/integrity-tree.ts';
import { NativeXtsCipher, sectorJobs, treeLeavesNative } from '../../crypto/native.ts';

export type EncryptionSectorSize = 512 | 4096;

export interface SectorKeys {
  /** The 64-byte XTS volume key. */
  volumeKey: Buffer;
  /** K_integrity. */
  integrityKey: Buffer;
  encryptionSectorSize: EncryptionSectorSize;
}

export class SectorCrypto {
  readonly #xts: NativeXtsCipher;
  readonly #volumeKey: Buffer;
  readonly #integrityKey: Buffer;
  readonly #ess: EncryptionSectorSize;
  readonly #unitsPerSector: number;
  #scratch = Buffer.alloc(0);

  constructor(keys: SectorKeys) {
    if (keys.encryptionSectorSize !== 512 && keys.encryptionSectorSize !== 4096) {
      throw new RangeError(`encryption sector size must be 512 or 4096, got ${String(keys.encryptionSectorSize)}`);
    }
    if (keys.integrityKey.length !== TREE_KEY_BYTES) {
      throw new RangeError(`integrity key must be ${TREE_KEY_BYTES} bytes, got ${keys.integrityKey.length}`);
    }
    this.#xts = new NativeXtsCipher(keys.volumeKey);
    this.#volumeKey = Buffer.from(keys.volumeKey);
    this.#integrityKey = Buffer.from(keys.integrityKey);
    this.#ess = keys.encryptionSectorSize;
    this.#unitsPerSector = TREE_SECTOR_BYTES / keys.encryptionSectorSize;
  }

  /** Encrypts `plain` (sectors from `firstSector`) into `ciphertext` and writes their leaves to leaves[at..]. */
  seal(firstSector: number, plain: Buffer, ciphertext: Buffer, leaves: Buffer, at = 0): void {
    this.#xts.encryptSectors(firstSector * this.#unitsPerSector, this.#ess, plain, ciphertext);
    treeLeavesNative(this.#integrityKey, firstSector, ciphertext, leaves.subarray(at));
  }

  /**
   * Checks each sector of `ciphertext` against its expected leaf (expected[i*32..]). Returns the indexes (from 0)
   * of the sectors that do not match; only if there are none is `ciphertext` decrypted into `plain` (which may be
   * the same buffer). Nothing unverified is ever decrypted.
   */
  open(firstSector: number, ciphertext: Buffer, expected: Buffer, plain: Buffer): number[] {
    const count = ciphertext.length / TREE_SECTOR_BYTES;
    const need = count * TREE_HASH_BYTES;
    if (this.#scratch.length < need) this.#scratch = Buffer.alloc(need);
    treeLeavesNative(this.#integrityKey, firstSector, ciphertext, this.#scratch);
    const bad: number[] = [];
    for (let i = 0; i < count; i++) {
      const at = i * TREE_HASH_BYTES;
      if (this.#scratch.compare(expected, at, at + TREE_HASH_BYTES, at, at + TREE_HASH_BYTES) !== 0) bad.push(i);
    }
    if (bad.length === 0) this.#xts.decryptSectors(firstSector * this.#unitsPerSector, this.#ess, ciphertext, plain);
    return bad;
  }

  /** seal() as one job on libuv's thread pool (both steps in one native call); `ciphertext` must not overlap `plain`. */
  sealAsync(firstSector: number, plain: Buffer, ciphertext: Buffer, leaves: Buffer): Promise<void> {
    return sectorJobs.seal(this.#volumeKey, this.#integrityKey, this.#ess, firstSector, plain, ciphertext, leaves);
  }

  /**
   * open() in place, as one job on libuv's thread pool: every sector hashed and compared, then the whole
   * request decrypted in the same native call only if all matched.
   */
  async openInPlaceAsync(firstSector: number, data: Buffer, expected: Buffer): Promise<number[]> {
    const flags = Buffer.allocUnsafe(data.length / TREE_SECTOR_BYTES);
    return badOf(flags, await sectorJobs.open(this.#volumeKey, this.#integrityKey, this.#ess, firstSector, data, expected, flags));
  }

  /** pread at `position` into `data`, then openInPlaceAsync, all in one job. */
  async readOpenAsync(fd: number, position: number, firstSector: number, data: Buffer, expected: Buffer): Promise<number[]> {
    const flags = Buffer.allocUnsafe(data.length / TREE_SECTOR_BYTES);
    return badOf(flags, await sectorJobs.readOpen(this.#volumeKey, this.#integrityKey, this.#ess, fd, position, firstSector, data, expected, flags));
  }

  /** Wipes the keys this object holds. */
  dispose(): void {
    this.#volumeKey.fill(0);
    this.#integrityKey.fill(0);
  }
}

/** The indexes of the set flags, given how many there are. */
function badOf(flags: Buffer, count: number): number[] {
  const bad: number[] = [];
  for (let i = 0; i < flags.length && bad.length < count; i++) if (flags[i] !== 0) bad.push(i);
  return bad;
}
