// The LUKS1 header (cryptsetup's "LUKS On-Disk Format Specification Version 1.2.3"), read for import: 592
// big-endian bytes at offset 0 with the cipher, the master-key digest (PBKDF2, 20 bytes) and eight keyslots.
// Offsets and the payload start are counted in 512-byte sectors.
import { MAX_AF_STRIPES } from './af.ts';
import { LuksFormatError } from './errors.ts';
import { luksHash } from './hash.ts';
import { MAGIC_PRIMARY } from './binary-header.ts';

export const LUKS1_HEADER_SIZE = 592;
export const LUKS1_SECTOR = 512;
export const LUKS1_DIGEST_SIZE = 20;
export const LUKS1_SALT_SIZE = 32;
const KEYSLOTS = 8;
const KEYSLOT_ENABLED = 0x00ac71f3;
const KEYSLOT_DISABLED = 0x0000dead;

export interface Luks1Keyslot {
  index: number;
  iterations: number;
  salt: Buffer;
  /** Start of the key material, in 512-byte sectors. */
  keyMaterialOffset: number;
  stripes: number;
}

export interface Luks1Header {
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  /** Start of the encrypted payload, in 512-byte sectors. */
  payloadOffset: number;
  keyBytes: number;
  mkDigest: Buffer;
  mkDigestSalt: Buffer;
  mkDigestIterations: number;
  uuid: string;
  /** The enabled keyslots only. */
  keyslots: Luks1Keyslot[];
}

/** Bytes of key material a keyslot occupies (AF stripes rounded up to whole sectors). */
export function luks1KeyMaterialSize(keyBytes: number, stripes: number): number {
  return Math.ceil((keyBytes * stripes) / LUKS1_SECTOR) * LUKS1_SECTOR;
}

export function parseLuks1Header(buf: Buffer): Luks1Header {
  const fail = (msg: string): never => {
    throw new LuksFormatError(`LUKS1 header: ${msg}`);
  };
  if (buf.length < LUKS1_HEADER_SIZE) fail(`${buf.length} bytes, need ${LUKS1_HEADER_SIZE}`);
  if (!buf.subarray(0, 6).equals(MAGIC_PRIMARY)) fail('bad magic');
  if (buf.readUInt16BE(6) !== 1) fail(`version ${buf.readUInt16BE(6)}, expected 1`);
  const h: Luks1Header = {
    cipherName: field(buf, 8, 32, 'cipher name'),
    cipherMode: field(buf, 40, 32, 'cipher mode'),
    hashSpec: field(buf, 72, 32, 'hash spec'),
    payloadOffset: buf.readUInt32BE(104),
    keyBytes: buf.readUInt32BE(108),
    mkDigest: Buffer.from(buf.subarray(112, 112 + LUKS1_DIGEST_SIZE)),
    mkDigestSalt: Buffer.from(buf.subarray(132, 132 + LUKS1_SALT_SIZE)),
    mkDigestIterations: buf.readUInt32BE(164),
    uuid: field(buf, 168, 40, 'uuid'),
    keyslots: [],
  };
  try {
    luksHash(h.hashSpec);
  } catch (e) {
    fail((e as Error).message);
  }
  if (h.keyBytes < 1 || h.keyBytes > 512) fail(`key size ${h.keyBytes} out of range`);
  if (h.mkDigestIterations < 1) fail('master key digest has zero iterations');
  const headerSectors = Math.ceil(LUKS1_HEADER_SIZE / LUKS1_SECTOR);
  for (let i = 0; i < KEYSLOTS; i++) {
    const at = 208 + i * 48;
    const active = buf.readUInt32BE(at);
    if (active === KEYSLOT_DISABLED) continue;
    if (active !== KEYSLOT_ENABLED) fail(`keyslot ${i} has invalid state 0x${active.toString(16)}`);
    const slot: Luks1Keyslot = {
      index: i,
      iterations: buf.readUInt32BE(at + 4),
      salt: Buffer.from(buf.subarray(at + 8, at + 8 + LUKS1_SALT_SIZE)),
      keyMaterialOffset: buf.readUInt32BE(at + 40),
      stripes: buf.readUInt32BE(at + 44),
    };
    if (slot.iterations < 1) fail(`keyslot ${i} has zero iterations`);
    if (slot.stripes < 1 || slot.stripes > MAX_AF_STRIPES) fail(`keyslot ${i} stripes ${slot.stripes} out of range`);
    if (slot.keyMaterialOffset < headerSectors) fail(`keyslot ${i} key material overlaps the header`);
    const end = slot.keyMaterialOffset * LUKS1_SECTOR + luks1KeyMaterialSize(h.keyBytes, slot.stripes);
    if (h.payloadOffset !== 0 && end > h.payloadOffset * LUKS1_SECTOR) fail(`keyslot ${i} key material overlaps the payload`);
    h.keyslots.push(slot);
  }
  return h;
}

function field(buf: Buffer, at: number, len: number, what: string): string {
  const bytes = buf.subarray(at, at + len);
  const end = bytes.indexOf(0);
  const text = bytes.subarray(0, end < 0 ? len : end);
  if (end < 0 || text.some((b) => b < 0x20 || b > 0x7e)) throw new LuksFormatError(`LUKS1 header: ${what} is not a NUL-terminated ASCII string`);
  return text.toString('latin1');
}
