/**
 * Runs a batch of IDS read ops (formats/protocol/ids-read.ts) against a guest. A batch over the
 * limits is refused whole before anything is read; an op over the per-op limits, or one that hits
 * memory that is not there, fails alone. The same executor answers the direct path and the channels.
 */
import { FOLLOW_STATUS, READ_LIMITS, gatherRecordBytes, mergeSpans, type MemorySource, type ReadOp, type ReadRange, type ReadResult } from '../../formats/protocol/ids-read.ts';
import { PhysRangeError } from './guest-memory.ts';
import type { GuestReader } from './guest-reader.ts';
import { UnmappedError } from './page-walk.ts';

/** The batch as a whole exceeds READ_LIMITS.maxOps or maxBatchBytes; nothing was read. */
export class ReadBatchLimitError extends Error {
  override readonly name = 'ReadBatchLimitError';
}

const U64_END = 1n << 64n;
const u64 = (v: unknown): v is bigint => typeof v === 'bigint' && v >= 0n && v < U64_END;
const count = (v: unknown, max: number): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;

function rangesProblem(ranges: unknown, what: string): string | null {
  if (!Array.isArray(ranges) || ranges.length > READ_LIMITS.maxGatherRanges) return `${what} must be at most ${READ_LIMITS.maxGatherRanges} ranges`;
  for (const r of ranges as ReadRange[]) {
    if (!count(r?.off, READ_LIMITS.maxOpBytes) || !count(r.len, READ_LIMITS.maxOpBytes) || r.off + r.len > READ_LIMITS.maxOpBytes) {
      return `${what}: each range must lie within the first ${READ_LIMITS.maxOpBytes} bytes`;
    }
  }
  return null;
}

function gatherProblem(op: Extract<ReadOp, { kind: 'gather' }>): string | null {
  if (!u64(op.head)) return 'head must be a 64-bit unsigned integer';
  if (!count(op.linkOffset, READ_LIMITS.maxOpBytes - 8)) return `linkOffset must be an integer in [0, ${READ_LIMITS.maxOpBytes - 8}]`;
  if (!count(op.max, READ_LIMITS.maxListEntries)) return `max must be an integer in [0, ${READ_LIMITS.maxListEntries}]`;
  const problem = rangesProblem(op.ranges, 'ranges');
  if (problem !== null) return problem;
  if (!Array.isArray(op.follow) || op.follow.length > READ_LIMITS.maxGatherFollows) return `follow must be at most ${READ_LIMITS.maxGatherFollows} pointers`;
  for (const f of op.follow) {
    if (!count(f?.ptrOffset, READ_LIMITS.maxOpBytes - 8)) return `a follow's ptrOffset must be an integer in [0, ${READ_LIMITS.maxOpBytes - 8}]`;
    const p = rangesProblem(f.ranges, 'a follow');
    if (p !== null) return p;
  }
  return gatherRecordBytes(op) > READ_LIMITS.maxOpBytes ? `a record may hold at most ${READ_LIMITS.maxOpBytes} bytes` : null;
}

/** Why one op is malformed or over the per-op limits, or null if it is fine. */
export function opProblem(op: ReadOp): string | null {
  if (op.kind === 'gather') return gatherProblem(op);
  if (!count(op.len, READ_LIMITS.maxOpBytes)) return `len must be an integer in [0, ${READ_LIMITS.maxOpBytes}]`;
  switch (op.kind) {
    case 'phys':
    case 'kv':
      return u64(op.addr) ? null : 'addr must be a 64-bit unsigned integer';
    case 'uv':
      return u64(op.addr) && u64(op.cr3) ? null : 'addr and cr3 must be 64-bit unsigned integers';
    case 'list':
      if (!u64(op.head)) return 'head must be a 64-bit unsigned integer';
      if (!count(op.linkOffset, READ_LIMITS.maxOpBytes)) return `linkOffset must be an integer in [0, ${READ_LIMITS.maxOpBytes}]`;
      if (!count(op.max, READ_LIMITS.maxListEntries)) return `max must be an integer in [0, ${READ_LIMITS.maxListEntries}]`;
      return null;
    default:
      return 'unknown op kind';
  }
}

/**
 * The most bytes a batch can return: each op's len, a list's len (a gather's record) times its max.
 * Malformed ops count zero (they fail alone and return nothing).
 */
export function batchBytes(ops: readonly ReadOp[]): number {
  let total = 0;
  for (const op of ops) {
    if (opProblem(op) !== null) continue;
    total += op.kind === 'list' ? op.len * op.max : op.kind === 'gather' ? gatherRecordBytes(op) * op.max : op.len;
  }
  return total;
}

/** Throws ReadBatchLimitError unless the batch fits READ_LIMITS. */
export function checkReadBatch(ops: readonly ReadOp[]): void {
  if (ops.length > READ_LIMITS.maxOps) throw new ReadBatchLimitError(`${ops.length} ops in one batch, at most ${READ_LIMITS.maxOps}`);
  const bytes = batchBytes(ops);
  if (bytes > READ_LIMITS.maxBatchBytes) throw new ReadBatchLimitError(`batch may return ${bytes} bytes, at most ${READ_LIMITS.maxBatchBytes}`);
}

export function executeReads(reader: GuestReader, ops: readonly ReadOp[]): ReadResult[] {
  checkReadBatch(ops);
  return reader.batch(() => ops.map((op) => executeOne(reader, op)));
}

function executeOne(reader: GuestReader, op: ReadOp): ReadResult {
  const problem = opProblem(op);
  if (problem !== null) return { ok: false, error: problem };
  try {
    switch (op.kind) {
      case 'phys':
        return { ok: true, data: reader.readPhys(op.addr, op.len) };
      case 'kv':
        return { ok: true, data: reader.readKernel(op.addr, op.len) };
      case 'uv':
        return { ok: true, data: reader.readVirt(op.cr3, op.addr, op.len) };
      case 'list':
        return readList(reader, op);
      case 'gather':
        return readGather(reader, op);
    }
  } catch (err) {
    const error = unreadable(err);
    if (error === null) throw err;
    return { ok: false, error };
  }
}

/** The op's error text for memory that is not there; null for anything else (a real failure). */
function unreadable(err: unknown): string | null {
  if (err instanceof UnmappedError) return err.message;
  if (err instanceof PhysRangeError) return `unmapped 0x${err.addr.toString(16)} (no guest RAM)`;
  return null;
}

/**
 * Follows a list_head ring. The head's own `next` must be readable (else the op fails); after that
 * the walk ends quietly at the head, at `max`, or at the first entry or link that cannot be read,
 * returning what it has: a list the guest is changing under us is normal, not an error.
 */
const INITIAL_LIST_ENTRIES = 64;

function readList(reader: GuestReader, op: Extract<ReadOp, { kind: 'list' }>): ReadResult {
  const root = reader.kernelRoot;
  const link = BigInt(op.linkOffset);
  const word = Buffer.allocUnsafe(8);
  reader.readVirtInto(root, op.head, word, 0, 8);
  let next = word.readBigUInt64LE(0);
  // Grown by doubling: `max` is an upper bound the IDS picks generously, not the list's length.
  let data = Buffer.allocUnsafe(op.len * Math.min(op.max, INITIAL_LIST_ENTRIES));
  const bases: bigint[] = [];
  while (bases.length < op.max && next !== op.head && next >= link) {
    const base = next - link;
    const at = bases.length * op.len;
    if (at + op.len > data.length) {
      const grown = Buffer.allocUnsafe(op.len * Math.min(op.max, bases.length * 2));
      data.copy(grown, 0, 0, at);
      data = grown;
    }
    try {
      reader.readVirtInto(root, base, data, at, op.len);
      if (op.linkOffset + 8 <= op.len) next = data.readBigUInt64LE(at + op.linkOffset);
      else {
        reader.readVirtInto(root, next, word, 0, 8);
        next = word.readBigUInt64LE(0);
      }
    } catch (err) {
      if (unreadable(err) === null) throw err;
      break;
    }
    bases.push(base);
  }
  return { ok: true, data: data.subarray(0, bases.length * op.len), bases };
}

/** Members closer than this are read with one pread: a syscall costs more than a few hundred bytes. */
const WINDOW_GAP = 256;

/** Where `ranges` sit in an object, as the few [from, to) windows that cover them (sorted, merged). */
function windowsOf(ranges: readonly ReadRange[]): Array<[number, number]> {
  return mergeSpans(ranges.filter((r) => r.len > 0).map((r): [number, number] => [r.off, r.off + r.len]), WINDOW_GAP);
}

/** Reads the windows of an object at `addr` into `scratch` at their own offsets. */
function readWindows(reader: GuestReader, root: bigint, addr: bigint, windows: ReadonlyArray<readonly [number, number]>, scratch: Buffer): void {
  for (const [from, to] of windows) reader.readVirtInto(root, addr + BigInt(from), scratch, from, to - from);
}

function copyRanges(ranges: readonly ReadRange[], scratch: Buffer | null, out: Buffer, at: number): number {
  for (const r of ranges) {
    if (scratch) scratch.copy(out, at, r.off, r.off + r.len);
    else out.fill(0, at, at + r.len);
    at += r.len;
  }
  return at;
}

/**
 * A 'list' walk that sends back records instead of snapshots: each entry is read as a few windows
 * (its ranges, its link and its followed pointers), and only the ranges go out. A followed pointer
 * that is NULL or cannot be read is reported in its status byte; the walk goes on.
 */
function readGather(reader: GuestReader, op: Extract<ReadOp, { kind: 'gather' }>): ReadResult {
  const root = reader.kernelRoot;
  const link = BigInt(op.linkOffset);
  const record = gatherRecordBytes(op);
  const entryWindows = windowsOf([...op.ranges, { off: op.linkOffset, len: 8 }, ...op.follow.map((f) => ({ off: f.ptrOffset, len: 8 }))]);
  const scratch = Buffer.alloc(Math.max(...entryWindows.map(([, to]) => to)));
  const follows = op.follow.map((f) => {
    const windows = windowsOf(f.ranges);
    return { f, windows, scratch: Buffer.alloc(Math.max(0, ...windows.map(([, to]) => to))) };
  });
  const word = Buffer.allocUnsafe(8);
  reader.readVirtInto(root, op.head, word, 0, 8);
  let next = word.readBigUInt64LE(0);
  let data = Buffer.allocUnsafe(record * Math.min(op.max, INITIAL_LIST_ENTRIES));
  const bases: bigint[] = [];
  while (bases.length < op.max && next !== op.head && next >= link) {
    const base = next - link;
    let at = bases.length * record;
    if (at + record > data.length) {
      const grown = Buffer.allocUnsafe(record * Math.min(op.max, bases.length * 2));
      data.copy(grown, 0, 0, at);
      data = grown;
    }
    try {
      readWindows(reader, root, base, entryWindows, scratch);
    } catch (err) {
      if (unreadable(err) === null) throw err;
      break;
    }
    next = scratch.readBigUInt64LE(op.linkOffset);
    at = copyRanges(op.ranges, scratch, data, at);
    for (const { f, windows, scratch: target } of follows) {
      const ptr = scratch.readBigUInt64LE(f.ptrOffset);
      let status: number = FOLLOW_STATUS.ok;
      if (ptr === 0n) status = FOLLOW_STATUS.null;
      else {
        try {
          readWindows(reader, root, ptr, windows, target);
        } catch (err) {
          if (unreadable(err) === null) throw err;
          status = FOLLOW_STATUS.unreadable;
        }
      }
      data[at++] = status;
      at = copyRanges(f.ranges, status === FOLLOW_STATUS.ok ? target : null, data, at);
    }
    bases.push(base);
  }
  return { ok: true, data: data.subarray(0, bases.length * record), bases };
}

/** The "direct" configuration: the monitor answers the IDS's reads from the RAM file itself. */
export class DirectMemorySource implements MemorySource {
  constructor(private readonly reader: GuestReader) {}

  async read(ops: readonly ReadOp[]): Promise<ReadResult[]> {
    return executeReads(this.reader, ops);
  }
}
