// Unlocks an existing LUKS2 or LUKS1 image (ours, or one made by `cryptsetup luksFormat` or QEMU) with a
// passphrase and returns what the data path needs: the volume key and where and how the payload is encrypted.
// Only aes-xts-plain64 payloads are supported; anything else is refused before any key is derived.
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { luksVersion } from '../formats/luks2/binary-header.ts';
import { LuksFormatError } from '../formats/luks2/errors.ts';
import { checkVolumeKeyDigest } from '../formats/luks2/kdf.ts';
import { LUKS1_HEADER_SIZE, LUKS1_SECTOR, luks1KeyMaterialSize, parseLuks1Header } from '../formats/luks2/luks1-header.ts';
import type { Luks2Keyslot } from '../formats/luks2/metadata.ts';
import { readExactly } from './image-file.ts';
import { readLuks2Header } from './luks2-header-read.ts';
import { SUPPORTED_CIPHER, UnsupportedCipherError, checkCipher, keyslotMaterialSize, openKeyslot } from './luks-keyslot.ts';

export interface OpenImageOptions {
  path: string;
  passphrase: Buffer;
  /**
   * Argon2 keyslots asking for more memory than this are not tried, so a hostile header cannot make us allocate
   * up to the 4 GiB the format allows. Default: 1 GiB, the most cryptsetup picks by itself.
   */
  maxKdfMemoryKiB?: number;
}

export const DEFAULT_MAX_KDF_MEMORY_KIB = 1024 * 1024;

export interface OpenedImage {
  format: 'luks1' | 'luks2';
  volumeKey: Buffer;
  cipher: typeof SUPPORTED_CIPHER;
  keyBits: 256 | 512;
  /** Encryption sector size; the XTS tweak of payload sector k is k * sectorSize / 512 (plain64). */
  sectorSize: number;
  /** Byte offset of the encrypted payload in the image file. */
  payloadOffset: number;
  /** Payload bytes (a whole number of sectors). */
  size: number;
  uuid: string;
  /** The keyslot the passphrase opened. */
  keyslot: number;
}

/** No keyslot opens with the passphrase given. */
export class WrongPassphraseError extends Error {
  override readonly name = 'WrongPassphraseError';
}

export async function openImage(opts: OpenImageOptions): Promise<OpenedImage> {
  if (opts.passphrase.length === 0) throw new Error('empty passphrase');
  const fh = await open(opts.path, 'r');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${opts.path} is not a regular file`);
    const start = await readExactly(fh, 0, Math.min(st.size, 4096), 'image start');
    const version = luksVersion(start);
    if (version === null) throw new LuksFormatError(`${opts.path} is not a LUKS image (no LUKS magic)`);
    if (version === 1) return await openLuks1(start, st.size, fh, opts.passphrase);
    return await openLuks2(fh, st.size, opts.passphrase, opts.maxKdfMemoryKiB ?? DEFAULT_MAX_KDF_MEMORY_KIB);
  } finally {
    await fh.close();
  }
}

async function openLuks2(fh: FileHandle, fileSize: number, passphrase: Buffer, maxKdfMemoryKiB: number): Promise<OpenedImage> {
  const { header, metadata: m } = await readLuks2Header(fh, fileSize);
  if (m.config.mandatoryRequirements.length) {
    throw new LuksFormatError(`LUKS2 image needs unsupported features: ${m.config.mandatoryRequirements.join(', ')}`);
  }
  if (m.otherKeyslots.some((k) => k.type === 'reencrypt') || m.otherSegments.length) {
    throw new LuksFormatError('LUKS2 image is in the middle of a reencryption; finish it with cryptsetup first');
  }
  if (m.segments.length !== 1) throw new LuksFormatError(`LUKS2 image has ${m.segments.length} crypt segments, expected 1`);
  const seg = m.segments[0]!;
  if (seg.integrity) throw new UnsupportedCipherError('LUKS2 segment uses dm-integrity (authenticated encryption), not supported');
  if (seg.ivTweak !== 0n) throw new UnsupportedCipherError(`LUKS2 segment iv_tweak ${seg.ivTweak} is not supported (only 0)`);
  const metadataEnd = 2 * header.hdrSize + m.config.keyslotsSize;
  if (seg.offset < metadataEnd) {
    throw new LuksFormatError(`LUKS2 data offset ${seg.offset} overlaps the metadata (detached headers are not supported)`);
  }
  if (seg.offset > fileSize) throw new LuksFormatError(`image is ${fileSize} bytes, shorter than its data offset ${seg.offset}`);
  let size: number;
  if (seg.size === 'dynamic') {
    size = Math.floor((fileSize - seg.offset) / seg.sectorSize) * seg.sectorSize;
  } else {
    if (seg.offset + seg.size > fileSize) throw new LuksFormatError(`image is ${fileSize} bytes, its segment ends at ${seg.offset + seg.size}`);
    size = seg.size;
  }

  const digests = m.digests.filter((d) => d.segments.includes(seg.id));
  if (digests.length === 0) throw new LuksFormatError('no digest covers the data segment');
  const bound = new Set(digests.flatMap((d) => d.keyslots));
  // cryptsetup's order: high-priority keyslots first, then normal ones; "ignore" keyslots are not tried.
  const candidates = m.keyslots
    .filter((k) => bound.has(k.id) && k.priority > 0)
    .sort((a, b) => b.priority - a.priority || a.id - b.id);
  if (candidates.length === 0) throw new LuksFormatError('no usable keyslot is bound to the data segment');

  checkCipher(seg.encryption, candidates[0]!.keySize, 'LUKS2 data segment');
  const skipped: Error[] = [];
  for (const k of candidates) {
    try {
      checkCipher(seg.encryption, k.keySize, `LUKS2 keyslot ${k.id} volume key`);
      checkCipher(k.area.encryption, k.area.keySize, `LUKS2 keyslot ${k.id} area`);
      if (k.kdf.type !== 'pbkdf2' && k.kdf.memoryKiB > maxKdfMemoryKiB) {
        throw new LuksFormatError(`LUKS2 keyslot ${k.id} wants ${k.kdf.memoryKiB} KiB of Argon2 memory, above the limit of ${maxKdfMemoryKiB}`);
      }
    } catch (e) {
      if (!(e instanceof UnsupportedCipherError || e instanceof LuksFormatError)) throw e;
      skipped.push(e);
      continue;
    }
    const vk = await tryLuks2Keyslot(fh, k, passphrase);
    for (const d of digests.filter((x) => x.keyslots.includes(k.id))) {
      if (await checkVolumeKeyDigest(vk, d)) {
        return {
          format: 'luks2',
          volumeKey: vk,
          cipher: SUPPORTED_CIPHER,
          keyBits: vk.length === 64 ? 512 : 256,
          sectorSize: seg.sectorSize,
          payloadOffset: seg.offset,
          size,
          uuid: header.uuid,
          keyslot: k.id,
        };
      }
    }
    vk.fill(0);
  }
  if (skipped.length === candidates.length) {
    const message = skipped.map((e) => e.message).join('; ');
    throw skipped.every((e) => e instanceof UnsupportedCipherError) ? new UnsupportedCipherError(message) : new LuksFormatError(message);
  }
  throw new WrongPassphraseError('no keyslot opens with this passphrase');
}

async function tryLuks2Keyslot(fh: FileHandle, k: Luks2Keyslot, passphrase: Buffer): Promise<Buffer> {
  const encrypted = await readExactly(fh, k.area.offset, keyslotMaterialSize(k.keySize, k.af.stripes), `keyslot ${k.id} area`);
  return openKeyslot(encrypted, passphrase, {
    kdf: k.kdf,
    areaKeyBytes: k.area.keySize,
    keyBytes: k.keySize,
    stripes: k.af.stripes,
    afHash: k.af.hash,
  });
}

async function openLuks1(start: Buffer, fileSize: number, fh: FileHandle, passphrase: Buffer): Promise<OpenedImage> {
  if (start.length < LUKS1_HEADER_SIZE) throw new LuksFormatError('LUKS1 header truncated');
  const h = parseLuks1Header(start);
  checkCipher(`${h.cipherName}-${h.cipherMode}`, h.keyBytes, 'LUKS1 image');
  if (h.payloadOffset === 0) throw new LuksFormatError('LUKS1 image with a detached header is not supported');
  const payloadOffset = h.payloadOffset * LUKS1_SECTOR;
  if (payloadOffset > fileSize) throw new LuksFormatError(`image is ${fileSize} bytes, shorter than its payload offset ${payloadOffset}`);
  if (h.keyslots.length === 0) throw new LuksFormatError('LUKS1 image has no enabled keyslot');
  for (const slot of h.keyslots) {
    const encrypted = await readExactly(
      fh,
      slot.keyMaterialOffset * LUKS1_SECTOR,
      luks1KeyMaterialSize(h.keyBytes, slot.stripes),
      `keyslot ${slot.index} material`,
    );
    const vk = await openKeyslot(encrypted, passphrase, {
      kdf: { type: 'pbkdf2', hash: h.hashSpec, iterations: slot.iterations, salt: slot.salt },
      areaKeyBytes: h.keyBytes,
      keyBytes: h.keyBytes,
      stripes: slot.stripes,
      afHash: h.hashSpec,
    });
    if (await checkVolumeKeyDigest(vk, { hash: h.hashSpec, salt: h.mkDigestSalt, iterations: h.mkDigestIterations, digest: h.mkDigest })) {
      return {
        format: 'luks1',
        volumeKey: vk,
        cipher: SUPPORTED_CIPHER,
        keyBits: vk.length === 64 ? 512 : 256,
        sectorSize: LUKS1_SECTOR,
        payloadOffset,
        size: Math.floor((fileSize - payloadOffset) / LUKS1_SECTOR) * LUKS1_SECTOR,
        uuid: h.uuid,
        keyslot: slot.index,
      };
    }
    vk.fill(0);
  }
  throw new WrongPassphraseError('no keyslot opens with this passphrase');
}
