/**
 * A read-only NTFS volume over a `read(offset, length)` function (the monitor's decrypted disk, a
 * partition of it, or an image file). The directory tree is built from the $FILE_NAME parent
 * references of every $MFT record rather than from $INDEX_ROOT/$INDEX_ALLOCATION B+trees: one
 * sequential pass over $MFT, no index-node parsing, and a corrupt index cannot hide a file that
 * still has its record. Extension records (files with an $ATTRIBUTE_LIST) are merged into their base
 * record during the same pass, so their attributes need no list lookup; only $MFT itself, which must
 * be mapped before the pass, has its $ATTRIBUTE_LIST read explicitly.
 */
import { NtfsError, parseBootSector, type NtfsBootSector } from './boot-sector.ts';
import type { DataRun } from './data-runs.ts';
import {
  ATTR,
  ATTR_FLAG_COMPRESSED,
  ATTR_FLAG_ENCRYPTED,
  FILE_NAME_NAMESPACE,
  parseFileName,
  parseMftRecord,
  parseStandardInformation,
  splitReference,
  type Attribute,
  type FileNameAttr,
  type MftRecord,
  type NonResidentAttribute,
  type StandardInformation,
} from './mft-record.ts';

export type ReadAt = (offset: number, length: number) => Promise<Uint8Array>;

export interface NtfsOpenOptions {
  /** Refuse volumes whose $MFT holds more records than this (memory bound for the pass). */
  maxRecords?: number;
  /** Bytes per read while scanning $MFT. */
  scanChunk?: number;
}

export interface NtfsEntry {
  record: number;
  /** '/'-separated from the volume root, e.g. "/Windows/System32/cmd.exe". */
  path: string;
  isDirectory: boolean;
  /** Size of the unnamed $DATA stream (0 for directories). */
  size: number;
  /** Names of alternate data streams (listed, not hashed). */
  streams: string[];
  /** Why the contents cannot be read (compressed, encrypted, damaged record); undefined when readable. */
  unsupported?: string;
  standardInformation?: StandardInformation;
}

/** A byte range of the volume holding part of a file's data. */
export interface ByteExtent {
  offset: number;
  length: number;
}

interface FileRecord {
  record: number;
  sequence: number;
  isDirectory: boolean;
  names: FileNameAttr[];
  attributes: Attribute[];
}

const ROOT_RECORD = 5;
/** Records 0-23 are reserved for metadata ($MFT ... $Extend and spares). */
const FIRST_USER_RECORD = 24;
const MAX_DEPTH = 256;
const DEFAULT_MAX_RECORDS = 1 << 22;
const DEFAULT_SCAN_CHUNK = 1 << 20;
const READ_CHUNK = 4 << 20;

async function readExact(read: ReadAt, offset: number, length: number, what: string): Promise<Uint8Array> {
  const b = await read(offset, length);
  if (b.length !== length) throw new NtfsError(`${what}: short read (${b.length} of ${length} bytes at ${offset})`);
  return b;
}

/** Maps attribute pieces (base + extension records) of one stream into a single ordered run list. */
function mergePieces(pieces: NonResidentAttribute[], what: string): { first: NonResidentAttribute; runs: DataRun[] } {
  const sorted = [...pieces].sort((a, b) => a.startVcn - b.startVcn);
  const first = sorted[0]!;
  if (first.startVcn !== 0) throw new NtfsError(`${what}: no piece starts at VCN 0`);
  const runs: DataRun[] = [];
  let next = 0;
  for (const p of sorted) {
    if (p.startVcn !== next) throw new NtfsError(`${what}: attribute pieces leave a gap or overlap at VCN ${next}`);
    runs.push(...p.runs);
    next = p.lastVcn + 1;
  }
  return { first, runs };
}

export class NtfsVolume {
  private constructor(
    private readonly read: ReadAt,
    readonly boot: NtfsBootSector,
    private readonly files: Map<number, FileRecord>,
    /** Records that could not be parsed, with the reason; the scan continues past them. */
    readonly damaged: ReadonlyArray<{ record: number; error: string }>,
  ) {}

  static async open(read: ReadAt, options: NtfsOpenOptions = {}): Promise<NtfsVolume> {
    const boot = parseBootSector(await readExact(read, 0, 512, 'boot sector'));
    const maxRecords = options.maxRecords ?? DEFAULT_MAX_RECORDS;
    const recSize = boot.mftRecordSize;
    const rec0 = parseMftRecord(await readExact(read, boot.mftLcn * boot.clusterSize, recSize, '$MFT record 0'), 0, boot.totalClusters);
    if (!rec0 || !rec0.inUse) throw new NtfsError('$MFT record 0 is not an in-use file record');
    const mftPieces = rec0.attributes.filter((a): a is NonResidentAttribute => a.type === ATTR.DATA && a.name === '' && !a.resident);
    if (mftPieces.length === 0) throw new NtfsError('$MFT has no non-resident $DATA');
    const list = rec0.attributes.find((a) => a.type === ATTR.ATTRIBUTE_LIST);
    if (list) {
      // A fragmented $MFT continues its $DATA in extension records that the runs so far must reach.
      const listBytes = list.resident ? list.value : await readStream(read, boot, mergePieces([list], '$MFT attribute list').runs, list.dataSize, list.initializedSize, 1 << 20);
      for (const ext of parseAttributeListDataRecords(listBytes)) {
        if (ext === 0) continue;
        const known = mergePieces(mftPieces, '$MFT $DATA').runs;
        const bytes = await readStream(read, boot, known, (ext + 1) * recSize, (ext + 1) * recSize, (ext + 1) * recSize);
        const r = parseMftRecord(bytes.slice(ext * recSize, (ext + 1) * recSize), ext, boot.totalClusters);
        if (!r || r.baseRecord !== 0) throw new NtfsError(`$MFT extension record ${ext} is not an extension of record 0`);
        for (const a of r.attributes) if (a.type === ATTR.DATA && a.name === '' && !a.resident) mftPieces.push(a);
      }
    }
    const { first: mftData, runs: mftRuns } = mergePieces(mftPieces, '$MFT $DATA');
    const recordCount = Math.floor(mftData.dataSize / recSize);
    if (recordCount > maxRecords) throw new NtfsError(`$MFT holds ${recordCount} records, over the limit of ${maxRecords}`);

    const files = new Map<number, FileRecord>();
    const extensions: Array<{ base: number; baseSequence: number; attrs: Attribute[] }> = [];
    const damaged: Array<{ record: number; error: string }> = [];
    const chunkRecords = Math.max(1, Math.floor((options.scanChunk ?? DEFAULT_SCAN_CHUNK) / recSize));
    for (let first = 0; first < recordCount; first += chunkRecords) {
      const n = Math.min(chunkRecords, recordCount - first);
      const bytes = await readRange(read, boot, mftRuns, first * recSize, n * recSize);
      for (let i = 0; i < n; i++) {
        const num = first + i;
        let r: MftRecord | null;
        try {
          r = parseMftRecord(bytes.subarray(i * recSize, (i + 1) * recSize), num, boot.totalClusters);
        } catch (err) {
          damaged.push({ record: num, error: (err as Error).message });
          continue;
        }
        if (!r || !r.inUse) continue;
        if (r.baseRecord !== 0) {
          const baseSequence = splitReference(new DataView(bytes.buffer, bytes.byteOffset + i * recSize + 0x20, 8).getBigUint64(0, true)).sequence;
          extensions.push({ base: r.baseRecord, baseSequence, attrs: r.attributes });
          continue;
        }
        const names: FileNameAttr[] = [];
        for (const a of r.attributes) {
          if (a.type !== ATTR.FILE_NAME || !a.resident) continue;
          try {
            names.push(parseFileName(a.value));
          } catch (err) {
            damaged.push({ record: num, error: (err as Error).message });
          }
        }
        files.set(num, { record: num, sequence: r.sequence, isDirectory: r.isDirectory, names, attributes: [...r.attributes] });
      }
    }
    for (const e of extensions) {
      const base = files.get(e.base);
      // An extension left behind by a deleted file names a base that has been reused: ignore it.
      if (!base || base.sequence !== e.baseSequence) continue;
      base.attributes.push(...e.attrs);
      for (const a of e.attrs) if (a.type === ATTR.FILE_NAME && a.resident) base.names.push(parseFileName(a.value));
    }
    return new NtfsVolume(read, boot, files, damaged);
  }

  /** Every file and directory under the root (metadata files such as $MFT and $Extend excluded), in path order. */
  walk(): NtfsEntry[] {
    const children = new Map<number, Array<{ name: string; record: number }>>();
    for (const f of this.files.values()) {
      if (f.record === ROOT_RECORD) continue;
      for (const n of preferredNames(f.names)) {
        const parent = this.files.get(n.parentRecord);
        if (!parent || !parent.isDirectory || parent.sequence !== n.parentSequence) continue;
        if (n.parentRecord === ROOT_RECORD && f.record < FIRST_USER_RECORD) continue;
        let list = children.get(n.parentRecord);
        if (!list) children.set(n.parentRecord, (list = []));
        list.push({ name: n.name, record: f.record });
      }
    }
    const out: NtfsEntry[] = [];
    const visited = new Set<number>([ROOT_RECORD]);
    const visit = (dir: number, prefix: string, depth: number): void => {
      if (depth > MAX_DEPTH) throw new NtfsError(`directory tree deeper than ${MAX_DEPTH} at ${prefix}`);
      const list = (children.get(dir) ?? []).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const c of list) {
        const f = this.files.get(c.record)!;
        const path = `${prefix}/${c.name}`;
        out.push(this.entry(f, path));
        // A directory reached twice (a forged second parent) is listed but not descended again.
        if (f.isDirectory && !visited.has(f.record)) {
          visited.add(f.record);
          visit(f.record, path, depth + 1);
        }
      }
    };
    visit(ROOT_RECORD, '', 0);
    return out;
  }

  /** Looks a path up (components compared case-insensitively, as Windows does). */
  lookup(path: string): NtfsEntry | undefined {
    const want = normalise(path).toLowerCase();
    if (want === '') {
      const root = this.files.get(ROOT_RECORD);
      return root ? this.entry(root, '/') : undefined;
    }
    return this.walk().find((e) => e.path.toLowerCase() === want);
  }

  /** Where the file's unnamed $DATA lies on the volume (sparse runs and resident data have none). */
  extents(entry: NtfsEntry): ByteExtent[] {
    const data = this.dataStream(this.files.get(entry.record)!);
    if (!data || data.resident) return [];
    const { first, runs } = mergePieces(data.pieces, `record ${entry.record} $DATA`);
    return runs.filter((r) => r.lcn !== null).map((r) => ({ offset: r.lcn! * this.boot.clusterSize, length: Math.min(r.clusters * this.boot.clusterSize, Math.max(0, first.allocatedSize - r.vcn * this.boot.clusterSize)) }));
  }

  /** Streams the unnamed $DATA in chunks of at most 4 MiB; sparse runs and the uninitialised tail read as zeros. */
  async *chunks(entry: NtfsEntry): AsyncGenerator<Uint8Array> {
    if (entry.unsupported) throw new NtfsError(`${entry.path}: unsupported (${entry.unsupported})`);
    const data = this.dataStream(this.files.get(entry.record)!);
    if (!data) return;
    if (data.resident) {
      yield data.value;
      return;
    }
    const { first, runs } = mergePieces(data.pieces, `${entry.path} $DATA`);
    for (let at = 0; at < first.dataSize; at += READ_CHUNK) {
      const n = Math.min(READ_CHUNK, first.dataSize - at);
      yield await readRange(this.read, this.boot, runs, at, n, first.initializedSize);
    }
  }

  /** The whole unnamed $DATA, refused when larger than `maxBytes`. */
  async readFile(entry: NtfsEntry, maxBytes = 256 << 20): Promise<Buffer> {
    if (entry.size > maxBytes) throw new NtfsError(`${entry.path}: ${entry.size} bytes is over the limit of ${maxBytes}`);
    const parts: Uint8Array[] = [];
    for await (const c of this.chunks(entry)) parts.push(c);
    return Buffer.concat(parts);
  }

  private dataStream(f: FileRecord): { resident: true; value: Uint8Array; flags: number } | { resident: false; pieces: NonResidentAttribute[]; flags: number } | undefined {
    const pieces = f.attributes.filter((a) => a.type === ATTR.DATA && a.name === '');
    if (pieces.length === 0) return undefined;
    const p0 = pieces[0]!;
    if (p0.resident) {
      if (pieces.length > 1) throw new NtfsError(`record ${f.record}: resident $DATA appears more than once`);
      return { resident: true, value: p0.value, flags: p0.flags };
    }
    if (pieces.some((p) => p.resident)) throw new NtfsError(`record ${f.record}: $DATA is both resident and not`);
    return { resident: false, pieces: pieces as NonResidentAttribute[], flags: p0.flags };
  }

  private entry(f: FileRecord, path: string): NtfsEntry {
    const si = f.attributes.find((a) => a.type === ATTR.STANDARD_INFORMATION && a.resident);
    const streams = [...new Set(f.attributes.filter((a) => a.type === ATTR.DATA && a.name !== '').map((a) => a.name))].sort();
    const e: NtfsEntry = { record: f.record, path, isDirectory: f.isDirectory, size: 0, streams };
    if (si && si.resident) {
      try {
        e.standardInformation = parseStandardInformation(si.value);
      } catch {
        // Timestamps are informative only; a short attribute does not make the file unreadable.
      }
    }
    if (f.isDirectory) return e;
    try {
      const data = this.dataStream(f);
      if (!data) return e;
      if (data.resident) {
        e.size = data.value.length;
      } else {
        const { first, runs } = mergePieces(data.pieces, `${path} $DATA`);
        e.size = first.dataSize;
        const mapped = runs.reduce((n, r) => n + r.clusters, 0);
        // The compression flag, not the compression unit, marks compressed data: sparse streams carry a unit too.
        const compressed = (data.flags & ATTR_FLAG_COMPRESSED) !== 0;
        if (first.dataSize > mapped * this.boot.clusterSize) {
          throw new NtfsError(`data size ${first.dataSize} exceeds the ${mapped} clusters mapped`);
        }
        if (compressed) e.unsupported = 'compressed';
      }
      if ((data.flags & ATTR_FLAG_ENCRYPTED) !== 0) e.unsupported = 'encrypted (EFS)';
    } catch (err) {
      e.unsupported = `damaged: ${(err as Error).message}`;
    }
    return e;
  }
}

function normalise(path: string): string {
  const parts = path.split(/[\\/]+/).filter((p) => p !== '');
  return parts.length ? `/${parts.join('/')}` : '';
}

/** Long names first: a DOS 8.3 alias is used only when a file has no Win32 or POSIX name. */
function preferredNames(names: FileNameAttr[]): FileNameAttr[] {
  const long = names.filter((n) => n.namespace !== FILE_NAME_NAMESPACE.DOS);
  const chosen = long.length ? long : names;
  const seen = new Set<string>();
  return chosen.filter((n) => {
    const k = `${n.parentRecord}/${n.name}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** Reads `length` bytes at `offset` within a stream mapped by `runs`; bytes at or past `initialized` are zeros. */
async function readRange(read: ReadAt, boot: NtfsBootSector, runs: DataRun[], offset: number, length: number, initialized = Infinity): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const cs = boot.clusterSize;
  let done = 0;
  for (const r of runs) {
    if (done >= length) break;
    const runStart = r.vcn * cs;
    const runEnd = runStart + r.clusters * cs;
    const pos = offset + done;
    if (runEnd <= pos) continue;
    if (runStart > pos) throw new NtfsError(`stream has no run covering byte ${pos}`);
    const n = Math.min(runEnd - pos, length - done, Math.max(0, initialized - pos));
    if (n > 0 && r.lcn !== null) out.set(await readExact(read, r.lcn * cs + (pos - runStart), n, 'data run'), done);
    done += Math.min(runEnd - pos, length - done);
  }
  if (done < length) throw new NtfsError(`stream runs end before byte ${offset + length}`);
  return out;
}

async function readStream(read: ReadAt, boot: NtfsBootSector, runs: DataRun[], size: number, initialized: number, max: number): Promise<Uint8Array> {
  if (size > max) throw new NtfsError(`stream of ${size} bytes is over the limit of ${max}`);
  return readRange(read, boot, runs, 0, size, initialized);
}

/** Record numbers holding $DATA pieces, from an $ATTRIBUTE_LIST value. */
function parseAttributeListDataRecords(b: Uint8Array): number[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: number[] = [];
  let at = 0;
  while (at + 0x1a <= b.length) {
    const type = v.getUint32(at, true);
    const len = v.getUint16(at + 4, true);
    if (len < 0x1a || at + len > b.length) throw new NtfsError('$ATTRIBUTE_LIST entry has a bad length');
    if (type === ATTR.DATA && b[at + 6] === 0) {
      const r = splitReference(v.getBigUint64(at + 0x10, true)).record;
      if (!out.includes(r)) out.push(r);
    }
    at += len;
  }
  return out;
}
