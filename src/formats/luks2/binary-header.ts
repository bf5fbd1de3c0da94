// The LUKS2 binary header (cryptsetup docs/on-disk-format-luks2.pdf, section 2): a 4096-byte big-endian record
// followed by the JSON area, the two together `hdr_size` bytes; a primary copy at offset 0 and a secondary one
// right after it. The checksum is a hash over the whole hdr_size bytes with the checksum field zeroed.
import { createHash } from 'node:crypto';
import { LuksFormatError } from './errors.ts';

export const BINARY_HEADER_SIZE = 4096;
export const MAGIC_PRIMARY = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
export const MAGIC_SECONDARY = Buffer.from([0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]); // "SKUL\xba\xbe"
/** hdr_size may only be one of these (16 KiB .. 4 MiB); they are also where a secondary header may sit. */
export const ALLOWED_HDR_SIZES: readonly number[] = Array.from({ length: 9 }, (_, i) => 16384 << i);

const OFF = {
  magic: 0,
  version: 6,
  hdrSize: 8,
  seqid: 16,
  label: 24,
  checksumAlg: 72,
  salt: 104,
  uuid: 168,
  subsystem: 208,
  hdrOffset: 256,
  checksum: 448,
} as const;
const LEN = { label: 48, checksumAlg: 32, salt: 64, uuid: 40, subsystem: 48, checksum: 64 } as const;
const CHECKSUM_ALG = 'sha256';

export interface Luks2BinaryHeader {
  primary: boolean;
  hdrSize: number;
  seqid: bigint;
  label: string;
  checksumAlg: string;
  salt: Buffer;
  uuid: string;
  subsystem: string;
  hdrOffset: number;
  checksum: Buffer;
}

/** Reads the LUKS version from a device's first bytes: 1, 2, or null if it carries no LUKS magic. */
export function luksVersion(start: Buffer): 1 | 2 | null {
  if (start.length < 8 || !start.subarray(0, 6).equals(MAGIC_PRIMARY)) return null;
  const v = start.readUInt16BE(6);
  if (v === 1 || v === 2) return v;
  throw new LuksFormatError(`LUKS magic with unsupported version ${v}`);
}

/** Parses the fixed 4096-byte part. Does not check the checksum (see verifyHeaderArea). */
export function parseBinaryHeader(buf: Buffer): Luks2BinaryHeader {
  if (buf.length < BINARY_HEADER_SIZE) throw new LuksFormatError(`LUKS2 header: ${buf.length} bytes, need 4096`);
  const magic = buf.subarray(0, 6);
  const primary = magic.equals(MAGIC_PRIMARY);
  if (!primary && !magic.equals(MAGIC_SECONDARY)) throw new LuksFormatError('LUKS2 header: bad magic');
  const version = buf.readUInt16BE(OFF.version);
  if (version !== 2) throw new LuksFormatError(`LUKS2 header: version ${version}, expected 2`);
  const hdrSize = Number(buf.readBigUInt64BE(OFF.hdrSize));
  if (!ALLOWED_HDR_SIZES.includes(hdrSize)) throw new LuksFormatError(`LUKS2 header: invalid hdr_size ${buf.readBigUInt64BE(OFF.hdrSize)}`);
  const hdrOffset = buf.readBigUInt64BE(OFF.hdrOffset);
  if (hdrOffset > BigInt(Number.MAX_SAFE_INTEGER)) throw new LuksFormatError(`LUKS2 header: hdr_offset ${hdrOffset} too large`);
  const checksumAlg = cString(buf, OFF.checksumAlg, LEN.checksumAlg, 'checksum_alg');
  return {
    primary,
    hdrSize,
    seqid: buf.readBigUInt64BE(OFF.seqid),
    label: cString(buf, OFF.label, LEN.label, 'label', false),
    checksumAlg,
    salt: Buffer.from(buf.subarray(OFF.salt, OFF.salt + LEN.salt)),
    uuid: cString(buf, OFF.uuid, LEN.uuid, 'uuid'),
    subsystem: cString(buf, OFF.subsystem, LEN.subsystem, 'subsystem', false),
    hdrOffset: Number(hdrOffset),
    checksum: Buffer.from(buf.subarray(OFF.checksum, OFF.checksum + LEN.checksum)),
  };
}

/** Checksum of a header area (hdr_size bytes): sha256 over it with the checksum field taken as zeros. */
export function headerAreaChecksum(area: Buffer): Buffer {
  const h = createHash(CHECKSUM_ALG);
  h.update(area.subarray(0, OFF.checksum));
  h.update(Buffer.alloc(LEN.checksum));
  h.update(area.subarray(OFF.checksum + LEN.checksum));
  return h.digest();
}

/**
 * Validates one header copy read from `offset`: binary fields, checksum, the NUL-terminated JSON text.
 * `area` must be exactly the header's hdr_size bytes.
 */
export function verifyHeaderArea(area: Buffer, offset: number): { header: Luks2BinaryHeader; jsonText: string } {
  const header = parseBinaryHeader(area);
  if (area.length !== header.hdrSize) throw new LuksFormatError(`LUKS2 header area is ${area.length} bytes, hdr_size says ${header.hdrSize}`);
  if (header.hdrOffset !== offset) throw new LuksFormatError(`LUKS2 header at ${offset} says hdr_offset ${header.hdrOffset}`);
  if (header.checksumAlg !== CHECKSUM_ALG) throw new LuksFormatError(`LUKS2 header: unsupported checksum_alg "${header.checksumAlg}"`);
  const want = headerAreaChecksum(area);
  if (!want.equals(header.checksum.subarray(0, want.length)) || header.checksum.subarray(want.length).some((b) => b !== 0)) {
    throw new LuksFormatError(`LUKS2 header at ${offset}: checksum mismatch`);
  }
  const json = area.subarray(BINARY_HEADER_SIZE);
  const end = json.indexOf(0);
  if (end < 0) throw new LuksFormatError('LUKS2 header: JSON area is not NUL-terminated');
  let jsonText: string;
  try {
    jsonText = new TextDecoder('utf-8', { fatal: true }).decode(json.subarray(0, end));
  } catch {
    throw new LuksFormatError('LUKS2 header: JSON area is not valid UTF-8');
  }
  return { header, jsonText };
}

export interface HeaderAreaFields {
  primary: boolean;
  hdrSize: number;
  seqid: bigint;
  label?: string;
  salt: Buffer;
  uuid: string;
  subsystem?: string;
  hdrOffset: number;
  jsonText: string;
}

/** Encodes one header copy (binary header + JSON area, hdr_size bytes) with its checksum. */
export function encodeHeaderArea(f: HeaderAreaFields): Buffer {
  if (!ALLOWED_HDR_SIZES.includes(f.hdrSize)) throw new LuksFormatError(`invalid hdr_size ${f.hdrSize}`);
  if (f.salt.length !== LEN.salt) throw new LuksFormatError(`header salt must be ${LEN.salt} bytes`);
  const area = Buffer.alloc(f.hdrSize);
  (f.primary ? MAGIC_PRIMARY : MAGIC_SECONDARY).copy(area, OFF.magic);
  area.writeUInt16BE(2, OFF.version);
  area.writeBigUInt64BE(BigInt(f.hdrSize), OFF.hdrSize);
  area.writeBigUInt64BE(f.seqid, OFF.seqid);
  putCString(area, OFF.label, LEN.label, f.label ?? '', 'label');
  putCString(area, OFF.checksumAlg, LEN.checksumAlg, CHECKSUM_ALG, 'checksum_alg');
  f.salt.copy(area, OFF.salt);
  putCString(area, OFF.uuid, LEN.uuid, f.uuid, 'uuid');
  putCString(area, OFF.subsystem, LEN.subsystem, f.subsystem ?? '', 'subsystem');
  area.writeBigUInt64BE(BigInt(f.hdrOffset), OFF.hdrOffset);
  const json = Buffer.from(f.jsonText, 'utf8');
  // The JSON text must leave room for its terminating NUL.
  if (json.length >= f.hdrSize - BINARY_HEADER_SIZE) throw new LuksFormatError(`JSON metadata (${json.length} bytes) does not fit the JSON area`);
  json.copy(area, BINARY_HEADER_SIZE);
  headerAreaChecksum(area).copy(area, OFF.checksum);
  return area;
}

/** A NUL-terminated field; identifiers must be printable ASCII, free text (label, subsystem) is read as UTF-8. */
function cString(buf: Buffer, at: number, len: number, what: string, identifier = true): string {
  const field = buf.subarray(at, at + len);
  const end = field.indexOf(0);
  if (end < 0) throw new LuksFormatError(`LUKS2 header: ${what} is not NUL-terminated`);
  const bytes = field.subarray(0, end);
  if (!identifier) return bytes.toString('utf8');
  if (bytes.some((b) => b < 0x20 || b > 0x7e)) throw new LuksFormatError(`LUKS2 header: ${what} is not printable ASCII`);
  return bytes.toString('latin1');
}

function putCString(buf: Buffer, at: number, len: number, value: string, what: string): void {
  const bytes = Buffer.from(value, 'latin1');
  if (bytes.length >= len || bytes.some((b) => b < 0x20 || b > 0x7e)) throw new LuksFormatError(`${what} must be printable ASCII shorter than ${len} bytes`);
  bytes.copy(buf, at);
}
