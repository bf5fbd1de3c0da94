/**
 * One $MFT file record: update-sequence fixups, the header, and its attributes (resident values
 * copied out, non-resident ones with their decoded data runs).
 */
import { NtfsError } from './boot-sector.ts';
import { decodeDataRuns, type DataRun } from './data-runs.ts';

/** The fixup stride: NTFS protects every 512 bytes of a multi-sector record, whatever the sector size. */
const FIXUP_STRIDE = 512;

export const ATTR = {
  STANDARD_INFORMATION: 0x10,
  ATTRIBUTE_LIST: 0x20,
  FILE_NAME: 0x30,
  DATA: 0x80,
  INDEX_ROOT: 0x90,
  INDEX_ALLOCATION: 0xa0,
  END: 0xffffffff,
} as const;

export const ATTR_FLAG_COMPRESSED = 0x0001;
export const ATTR_FLAG_ENCRYPTED = 0x4000;
export const ATTR_FLAG_SPARSE = 0x8000;

export interface ResidentAttribute {
  type: number;
  name: string;
  flags: number;
  id: number;
  resident: true;
  value: Uint8Array;
}

export interface NonResidentAttribute {
  type: number;
  name: string;
  flags: number;
  id: number;
  resident: false;
  startVcn: number;
  lastVcn: number;
  compressionUnit: number;
  allocatedSize: number;
  dataSize: number;
  initializedSize: number;
  runs: DataRun[];
}

export type Attribute = ResidentAttribute | NonResidentAttribute;

export interface MftRecord {
  recordNumber: number;
  sequence: number;
  inUse: boolean;
  isDirectory: boolean;
  /** Record number of the base record for an extension record, 0 for a base record. */
  baseRecord: number;
  attributes: Attribute[];
}

/** Applies the update sequence array in place; a torn or forged record fails here. */
export function applyFixups(rec: Uint8Array, what: string): void {
  const v = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const usaOffset = v.getUint16(4, true);
  const usaCount = v.getUint16(6, true);
  const sectors = rec.length / FIXUP_STRIDE;
  if (usaCount !== sectors + 1) throw new NtfsError(`${what}: update sequence has ${usaCount} entries for ${sectors} sectors`);
  if (usaOffset < 0x28 || usaOffset % 2 !== 0 || usaOffset + 2 * usaCount > FIXUP_STRIDE - 2) throw new NtfsError(`${what}: update sequence array at ${usaOffset} is out of range`);
  const usn = v.getUint16(usaOffset, true);
  for (let i = 0; i < sectors; i++) {
    const end = (i + 1) * FIXUP_STRIDE - 2;
    if (v.getUint16(end, true) !== usn) throw new NtfsError(`${what}: fixup mismatch in sector ${i} (torn or corrupt record)`);
    v.setUint16(end, v.getUint16(usaOffset + 2 + 2 * i, true), true);
  }
}

function utf16(b: Uint8Array, at: number, chars: number): string {
  return Buffer.from(b.buffer, b.byteOffset + at, chars * 2).toString('utf16le');
}

/** Reference = 48-bit record number + 16-bit sequence number. */
export function splitReference(ref: bigint): { record: number; sequence: number } {
  return { record: Number(ref & 0xffffffffffffn), sequence: Number(ref >> 48n) };
}

/**
 * Parses a record read from disk (fixups are applied to a copy, never to the caller's buffer).
 * Returns null for a slot without the "FILE" magic (never used); "BAAD" is an error.
 */
export function parseMftRecord(raw: Uint8Array, recordNumber: number, totalClusters: number): MftRecord | null {
  const what = `MFT record ${recordNumber}`;
  const rec = new Uint8Array(raw); // a copy even when `raw` is a Buffer (whose slice() is a view)
  const magic = Buffer.from(raw.subarray(0, 4)).toString('latin1');
  if (magic === 'BAAD') throw new NtfsError(`${what}: marked BAAD by chkdsk`);
  if (magic !== 'FILE') return null;
  applyFixups(rec, what);
  const v = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const flags = v.getUint16(0x16, true);
  const bytesInUse = v.getUint32(0x18, true);
  if (bytesInUse > rec.length || bytesInUse < 0x30) throw new NtfsError(`${what}: ${bytesInUse} bytes in use in a ${rec.length}-byte record`);
  const base = splitReference(v.getBigUint64(0x20, true));
  let at = v.getUint16(0x14, true);
  const attributes: Attribute[] = [];
  // Each attribute is at least 16 bytes and advances `at`, so the loop ends within the record.
  while (true) {
    if (at % 8 !== 0 || at + 8 > bytesInUse) throw new NtfsError(`${what}: attribute at ${at} is outside the used part of the record`);
    const type = v.getUint32(at, true);
    if (type === ATTR.END) break;
    const len = v.getUint32(at + 4, true);
    if (len < 24 || at + len > bytesInUse) throw new NtfsError(`${what}: attribute 0x${type.toString(16)} at ${at} has bad length ${len}`);
    const nonResident = rec[at + 8]!;
    const nameLen = rec[at + 9]!;
    const nameOff = v.getUint16(at + 10, true);
    if (nameLen && nameOff + nameLen * 2 > len) throw new NtfsError(`${what}: attribute name runs past the attribute`);
    const name = nameLen ? utf16(rec, at + nameOff, nameLen) : '';
    const aflags = v.getUint16(at + 12, true);
    const id = v.getUint16(at + 14, true);
    if (nonResident === 0) {
      const valueLen = v.getUint32(at + 16, true);
      const valueOff = v.getUint16(at + 20, true);
      if (valueOff + valueLen > len) throw new NtfsError(`${what}: resident value of attribute 0x${type.toString(16)} runs past the attribute`);
      attributes.push({ type, name, flags: aflags, id, resident: true, value: rec.slice(at + valueOff, at + valueOff + valueLen) });
    } else {
      if (len < 0x40) throw new NtfsError(`${what}: non-resident attribute header too short`);
      const big = (o: number): number => {
        const x = v.getBigUint64(at + o, true);
        if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new NtfsError(`${what}: attribute field at +${o} is out of range`);
        return Number(x);
      };
      const startVcn = big(0x10);
      const lastVcnRaw = v.getBigInt64(at + 0x18, true);
      const lastVcn = Number(lastVcnRaw);
      const runsOff = v.getUint16(at + 0x20, true);
      if (runsOff >= len || lastVcn < startVcn - 1) throw new NtfsError(`${what}: non-resident attribute 0x${type.toString(16)} has a bad header`);
      const runs = decodeDataRuns(rec.subarray(at + runsOff, at + len), startVcn, totalClusters, lastVcn - startVcn + 1);
      const attr: NonResidentAttribute = {
        type,
        name,
        flags: aflags,
        id,
        resident: false,
        startVcn,
        lastVcn,
        compressionUnit: v.getUint16(at + 0x22, true),
        allocatedSize: big(0x28),
        dataSize: big(0x30),
        initializedSize: big(0x38),
        runs,
      };
      if (startVcn === 0 && (attr.dataSize > attr.allocatedSize || attr.initializedSize > attr.dataSize)) {
        throw new NtfsError(`${what}: attribute 0x${type.toString(16)} sizes are inconsistent`);
      }
      attributes.push(attr);
    }
    at += len;
  }
  return {
    recordNumber,
    sequence: v.getUint16(0x10, true),
    inUse: (flags & 0x01) !== 0,
    isDirectory: (flags & 0x02) !== 0,
    baseRecord: base.record,
    attributes,
  };
}

export const FILE_NAME_NAMESPACE = { POSIX: 0, WIN32: 1, DOS: 2, WIN32_AND_DOS: 3 } as const;

export interface FileNameAttr {
  parentRecord: number;
  parentSequence: number;
  name: string;
  namespace: number;
  /** Logical size as the directory entry last saw it (not authoritative; $DATA is). */
  size: number;
}

export function parseFileName(value: Uint8Array): FileNameAttr {
  if (value.length < 0x42) throw new NtfsError('$FILE_NAME shorter than its header');
  const v = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const chars = value[0x40]!;
  if (0x42 + chars * 2 > value.length) throw new NtfsError('$FILE_NAME name runs past the attribute');
  const parent = splitReference(v.getBigUint64(0, true));
  return {
    parentRecord: parent.record,
    parentSequence: parent.sequence,
    name: utf16(value, 0x42, chars),
    namespace: value[0x41]!,
    size: Number(v.getBigUint64(0x30, true)),
  };
}

/** NTFS timestamps count 100 ns intervals since 1601-01-01 UTC. */
const EPOCH_DIFF_MS = 11644473600000n;
export function ntfsTimeToDate(t: bigint): Date {
  return new Date(Number(t / 10000n - EPOCH_DIFF_MS));
}

export interface StandardInformation {
  created: Date;
  modified: Date;
  mftChanged: Date;
  accessed: Date;
  /** FILE_ATTRIBUTE_* bits (read-only 0x1, hidden 0x2, system 0x4, archive 0x20, ...). */
  fileAttributes: number;
}

export function parseStandardInformation(value: Uint8Array): StandardInformation {
  if (value.length < 0x24) throw new NtfsError('$STANDARD_INFORMATION shorter than 36 bytes');
  const v = new DataView(value.buffer, value.byteOffset, value.byteLength);
  return {
    created: ntfsTimeToDate(v.getBigUint64(0, true)),
    modified: ntfsTimeToDate(v.getBigUint64(8, true)),
    mftChanged: ntfsTimeToDate(v.getBigUint64(0x10, true)),
    accessed: ntfsTimeToDate(v.getBigUint64(0x18, true)),
    fileAttributes: v.getUint32(0x20, true),
  };
}
