// Lays out a fresh LUKS2 image with one keyslot the way `cryptsetup luksFormat --type luks2` does by default:
// 16 KiB header copies (primary at 0, secondary at 16 KiB), the keyslots area from 32 KiB to 16 MiB, the data
// segment from 16 MiB to the end of the file ("dynamic" size). The caller supplies the encrypted keyslot material
// and the digest; this module only encodes.
import { encodeHeaderArea } from './binary-header.ts';
import { LuksFormatError } from './errors.ts';
import type { KeyslotKdf } from './kdf.ts';
import { encodeLuks2Metadata, parseLuks2Metadata, type Luks2Metadata } from './metadata.ts';

export const LUKS2_LAYOUT = {
  hdrSize: 16384,
  keyslotsOffset: 32768,
  keyslotsSize: 16 * 1024 * 1024 - 32768,
  dataOffset: 16 * 1024 * 1024,
} as const;
export const AF_STRIPES = 4000;
export const DATA_CIPHER = 'aes-xts-plain64';

export interface NewLuks2Header {
  uuid: string;
  /** Two 64-byte random salts, one per header copy. */
  headerSalts: [Buffer, Buffer];
  volumeKeyBytes: number;
  sectorSize: number;
  keyslot: { kdf: KeyslotKdf; afHash: string; keySize: number; material: Buffer };
  digest: { hash: string; iterations: number; salt: Buffer; digest: Buffer };
  label?: string;
}

/** Bytes the keyslot area takes for a key of `keyBytes` split into `stripes` (rounded up to 4096). */
export function keyslotAreaSize(keyBytes: number, stripes: number = AF_STRIPES): number {
  return Math.ceil((keyBytes * stripes) / 4096) * 4096;
}

export function newLuks2Metadata(p: NewLuks2Header): Luks2Metadata {
  const areaSize = keyslotAreaSize(p.volumeKeyBytes);
  return {
    keyslots: [
      {
        id: 0,
        keySize: p.volumeKeyBytes,
        priority: 1,
        af: { stripes: AF_STRIPES, hash: p.keyslot.afHash },
        area: { offset: LUKS2_LAYOUT.keyslotsOffset, size: areaSize, encryption: DATA_CIPHER, keySize: p.keyslot.keySize },
        kdf: p.keyslot.kdf,
      },
    ],
    otherKeyslots: [],
    tokens: {},
    segments: [
      {
        id: 0,
        type: 'crypt',
        offset: LUKS2_LAYOUT.dataOffset,
        size: 'dynamic',
        ivTweak: 0n,
        encryption: DATA_CIPHER,
        sectorSize: p.sectorSize,
        integrity: false,
        flags: [],
      },
    ],
    otherSegments: [],
    digests: [{ id: 0, keyslots: [0], segments: [0], ...p.digest }],
    config: { jsonSize: LUKS2_LAYOUT.hdrSize - 4096, keyslotsSize: LUKS2_LAYOUT.keyslotsSize, flags: [], mandatoryRequirements: [] },
  };
}

/**
 * The image's first bytes: both header copies and the keyslot material, to be written at offset 0.
 * Everything between its end and LUKS2_LAYOUT.dataOffset is left as zeros.
 */
export function buildLuks2HeaderRegion(p: NewLuks2Header): Buffer {
  const areaSize = keyslotAreaSize(p.volumeKeyBytes);
  if (p.keyslot.material.length !== p.volumeKeyBytes * AF_STRIPES) {
    throw new LuksFormatError(`keyslot material is ${p.keyslot.material.length} bytes, expected ${p.volumeKeyBytes * AF_STRIPES}`);
  }
  const jsonText = encodeLuks2Metadata(newLuks2Metadata(p));
  // Refuse to write anything our own reader would reject.
  parseLuks2Metadata(jsonText, LUKS2_LAYOUT.hdrSize);
  const region = Buffer.alloc(LUKS2_LAYOUT.keyslotsOffset + areaSize);
  const common = { hdrSize: LUKS2_LAYOUT.hdrSize, seqid: 1n, uuid: p.uuid, jsonText, ...(p.label ? { label: p.label } : {}) };
  encodeHeaderArea({ ...common, primary: true, salt: p.headerSalts[0], hdrOffset: 0 }).copy(region, 0);
  encodeHeaderArea({ ...common, primary: false, salt: p.headerSalts[1], hdrOffset: LUKS2_LAYOUT.hdrSize }).copy(region, LUKS2_LAYOUT.hdrSize);
  p.keyslot.material.copy(region, LUKS2_LAYOUT.keyslotsOffset);
  return region;
}
