/**
 * Binary encoding of IDS read batches (src/formats/protocol/ids-read.ts) for the IDS channel: JSON
 * would cost more than the crypto for a batch of a few MiB. All integers are little-endian.
 *
 *   ops     = count u32, then per op: kind u8 and its fields
 *             1 phys / 2 kv: addr u64, len u32
 *             3 uv:          cr3 u64, addr u64, len u32
 *             4 list:        head u64, linkOffset u32, len u32, max u32
 *             5 gather:      head u64, linkOffset u32, max u32, ranges, follows count u8,
 *                            per follow: ptrOffset u32, ranges
 *             ranges = count u8, then per range: off u32, len u32
 *   results = count u32, then per result: status u8
 *             0 ok:            len u32, data
 *             1 ok with bases: n u32, n × base u64, len u32, data (len = n × entry or record size, not checked here)
 * Data and bases together count against READ_LIMITS.maxBatchBytes.
 *             2 error:         len u16, UTF-8 message (at most 1024 bytes)
 *
 * Decoders enforce READ_LIMITS, refuse unknown kinds, short input and trailing bytes, and never
 * allocate more than the input holds: result data are views into the (freshly decrypted) input.
 */
import { READ_LIMITS, gatherRecordBytes, type ReadOp, type ReadRange, type ReadResult } from './ids-read.ts';
import { ProtocolError } from './fields.ts';

const KIND = { phys: 1, kv: 2, uv: 3, list: 4, gather: 5 } as const;
const OK = 0;
const OK_BASES = 1;
const ERR = 2;
export const MAX_READ_ERROR_BYTES = 1024;
const U64_MAX = (1n << 64n) - 1n;

function opSize(op: ReadOp): number {
  switch (op.kind) {
    case 'phys':
    case 'kv':
      return 1 + 8 + 4;
    case 'uv':
      return 1 + 8 + 8 + 4;
    case 'list':
      return 1 + 8 + 4 + 4 + 4;
    case 'gather':
      return 1 + 8 + 4 + 4 + 1 + 8 * op.ranges.length + 1 + op.follow.reduce((n, f) => n + 4 + 1 + 8 * f.ranges.length, 0);
  }
}

function checkU64(v: bigint, what: string): void {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw new ProtocolError('IDS read ops', `${what} is not a u64`);
}

function checkLen(v: number, max: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new ProtocolError('IDS read ops', `${what} ${v} is outside 0..${max}`);
}

function checkRanges(ranges: readonly ReadRange[], what: string): void {
  if (!Array.isArray(ranges) || ranges.length > READ_LIMITS.maxGatherRanges) throw new ProtocolError('IDS read ops', `${what}: more than ${READ_LIMITS.maxGatherRanges} ranges`);
  for (const r of ranges) {
    checkLen(r.off, READ_LIMITS.maxOpBytes, `${what} offset`);
    checkLen(r.len, READ_LIMITS.maxOpBytes - r.off, `${what} length`);
  }
}

function checkGather(op: Extract<ReadOp, { kind: 'gather' }>): void {
  checkU64(op.head, 'head');
  checkLen(op.linkOffset, READ_LIMITS.maxOpBytes - 8, 'linkOffset');
  checkLen(op.max, READ_LIMITS.maxListEntries, 'max');
  checkRanges(op.ranges, 'gather');
  if (!Array.isArray(op.follow) || op.follow.length > READ_LIMITS.maxGatherFollows) throw new ProtocolError('IDS read ops', `more than ${READ_LIMITS.maxGatherFollows} follows`);
  for (const f of op.follow) {
    checkLen(f.ptrOffset, READ_LIMITS.maxOpBytes - 8, 'ptrOffset');
    checkRanges(f.ranges, 'follow');
  }
  checkLen(gatherRecordBytes(op), READ_LIMITS.maxOpBytes, 'record size');
}

function checkOp(op: ReadOp): void {
  if (op.kind === 'gather') return checkGather(op);
  checkLen(op.len, READ_LIMITS.maxOpBytes, 'len');
  switch (op.kind) {
    case 'phys':
    case 'kv':
      return checkU64(op.addr, 'addr');
    case 'uv':
      checkU64(op.cr3, 'cr3');
      return checkU64(op.addr, 'addr');
    case 'list':
      checkU64(op.head, 'head');
      checkLen(op.linkOffset, READ_LIMITS.maxOpBytes, 'linkOffset');
      return checkLen(op.max, READ_LIMITS.maxListEntries, 'max');
    default:
      throw new ProtocolError('IDS read ops', `unknown op kind ${JSON.stringify((op as { kind: unknown }).kind)}`);
  }
}

export function encodeReadOps(ops: readonly ReadOp[]): Buffer {
  if (ops.length > READ_LIMITS.maxOps) throw new ProtocolError('IDS read ops', `${ops.length} ops is over the limit of ${READ_LIMITS.maxOps}`);
  let size = 4;
  for (const op of ops) {
    checkOp(op);
    size += opSize(op);
  }
  const b = Buffer.allocUnsafe(size);
  let at = b.writeUInt32LE(ops.length, 0);
  for (const op of ops) {
    at = b.writeUInt8(KIND[op.kind], at);
    switch (op.kind) {
      case 'phys':
      case 'kv':
        at = b.writeBigUInt64LE(op.addr, at);
        at = b.writeUInt32LE(op.len, at);
        break;
      case 'uv':
        at = b.writeBigUInt64LE(op.cr3, at);
        at = b.writeBigUInt64LE(op.addr, at);
        at = b.writeUInt32LE(op.len, at);
        break;
      case 'list':
        at = b.writeBigUInt64LE(op.head, at);
        at = b.writeUInt32LE(op.linkOffset, at);
        at = b.writeUInt32LE(op.len, at);
        at = b.writeUInt32LE(op.max, at);
        break;
      case 'gather':
        at = b.writeBigUInt64LE(op.head, at);
        at = b.writeUInt32LE(op.linkOffset, at);
        at = b.writeUInt32LE(op.max, at);
        at = writeRanges(b, at, op.ranges);
        at = b.writeUInt8(op.follow.length, at);
        for (const f of op.follow) {
          at = b.writeUInt32LE(f.ptrOffset, at);
          at = writeRanges(b, at, f.ranges);
        }
        break;
    }
  }
  return b;
}

function writeRanges(b: Buffer, at: number, ranges: readonly ReadRange[]): number {
  at = b.writeUInt8(ranges.length, at);
  for (const r of ranges) {
    at = b.writeUInt32LE(r.off, at);
    at = b.writeUInt32LE(r.len, at);
  }
  return at;
}

/** A count u8 and that many ranges; the count is checked against the limit before anything is allocated. */
function readRanges(r: Reader): ReadRange[] {
  const n = r.u8();
  if (n > READ_LIMITS.maxGatherRanges) throw new ProtocolError(r.what, `${n} ranges is over the limit of ${READ_LIMITS.maxGatherRanges}`);
  r.need(8 * n);
  const ranges: ReadRange[] = new Array(n);
  for (let i = 0; i < n; i++) ranges[i] = { off: r.u32(), len: r.u32() };
  return ranges;
}

/** A bounds-checked cursor: every read past the end is a ProtocolError naming `what`. */
class Reader {
  at = 0;
  constructor(
    readonly b: Buffer,
    readonly what: string,
  ) {}
  need(n: number): void {
    if (this.b.length - this.at < n) throw new ProtocolError(this.what, `truncated at byte ${this.at}`);
  }
  u8(): number {
    this.need(1);
    return this.b[this.at++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.b.readUInt16LE(this.at);
    this.at += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32LE(this.at);
    this.at += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.b.readBigUInt64LE(this.at);
    this.at += 8;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return v;
  }
  end(): void {
    if (this.at !== this.b.length) throw new ProtocolError(this.what, `${this.b.length - this.at} trailing bytes`);
  }
}

export function decodeReadOps(bytes: Buffer): ReadOp[] {
  const r = new Reader(bytes, 'IDS read ops');
  const count = r.u32();
  if (count > READ_LIMITS.maxOps) throw new ProtocolError(r.what, `${count} ops is over the limit of ${READ_LIMITS.maxOps}`);
  // Each op takes at least 13 bytes: a count the input cannot hold is refused before the loop.
  if (count * 13 > bytes.length - 4) throw new ProtocolError(r.what, `${count} ops cannot fit in ${bytes.length} bytes`);
  const ops: ReadOp[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const kind = r.u8();
    let op: ReadOp;
    switch (kind) {
      case KIND.phys:
        op = { kind: 'phys', addr: r.u64(), len: r.u32() };
        break;
      case KIND.kv:
        op = { kind: 'kv', addr: r.u64(), len: r.u32() };
        break;
      case KIND.uv:
        op = { kind: 'uv', cr3: r.u64(), addr: r.u64(), len: r.u32() };
        break;
      case KIND.list:
        op = { kind: 'list', head: r.u64(), linkOffset: r.u32(), len: r.u32(), max: r.u32() };
        break;
      case KIND.gather: {
        const head = r.u64();
        const linkOffset = r.u32();
        const max = r.u32();
        const ranges = readRanges(r);
        const n = r.u8();
        if (n > READ_LIMITS.maxGatherFollows) throw new ProtocolError(r.what, `${n} follows is over the limit of ${READ_LIMITS.maxGatherFollows}`);
        const follow = [];
        for (let j = 0; j < n; j++) follow.push({ ptrOffset: r.u32(), ranges: readRanges(r) });
        op = { kind: 'gather', head, linkOffset, max, ranges, follow };
        break;
      }
      default:
        throw new ProtocolError(r.what, `op ${i} has unknown kind ${kind}`);
    }
    checkOp(op);
    ops[i] = op;
  }
  r.end();
  return ops;
}

/** 300 UTF-16 units take at most 900 UTF-8 bytes, so cutting the string keeps the bytes under the limit and valid. */
function errorText(message: string): Buffer {
  return Buffer.from(message.length > 300 ? message.slice(0, 300) : message, 'utf8');
}

export function encodeReadResults(results: readonly ReadResult[]): Buffer {
  if (results.length > READ_LIMITS.maxOps) throw new ProtocolError('IDS read results', `${results.length} results is over the limit of ${READ_LIMITS.maxOps}`);
  let size = 4;
  let dataBytes = 0;
  const errors: Array<Buffer | undefined> = new Array(results.length);
  results.forEach((res, i) => {
    if (res.ok) {
      dataBytes += res.data.length + 8 * (res.bases?.length ?? 0);
      size += 1 + 4 + res.data.length + (res.bases ? 4 + 8 * res.bases.length : 0);
    } else {
      const e = errorText(res.error);
      errors[i] = e;
      size += 1 + 2 + e.length;
    }
  });
  if (dataBytes > READ_LIMITS.maxBatchBytes) throw new ProtocolError('IDS read results', `${dataBytes} bytes is over the batch limit of ${READ_LIMITS.maxBatchBytes}`);
  const b = Buffer.allocUnsafe(size);
  let at = b.writeUInt32LE(results.length, 0);
  results.forEach((res, i) => {
    if (res.ok) {
      if (res.bases) {
        at = b.writeUInt8(OK_BASES, at);
        at = b.writeUInt32LE(res.bases.length, at);
        for (const base of res.bases) at = b.writeBigUInt64LE(base, at);
      } else {
        at = b.writeUInt8(OK, at);
      }
      at = b.writeUInt32LE(res.data.length, at);
      at += res.data.copy(b, at);
    } else {
      const e = errors[i]!;
      at = b.writeUInt8(ERR, at);
      at = b.writeUInt16LE(e.length, at);
      at += e.copy(b, at);
    }
  });
  return b;
}

export function decodeReadResults(bytes: Buffer): ReadResult[] {
  const r = new Reader(bytes, 'IDS read results');
  const count = r.u32();
  if (count > READ_LIMITS.maxOps) throw new ProtocolError(r.what, `${count} results is over the limit of ${READ_LIMITS.maxOps}`);
  if (count * 3 > bytes.length - 4) throw new ProtocolError(r.what, `${count} results cannot fit in ${bytes.length} bytes`);
  const results: ReadResult[] = new Array(count);
  let dataBytes = 0;
  for (let i = 0; i < count; i++) {
    const status = r.u8();
    if (status === ERR) {
      const n = r.u16();
      if (n > MAX_READ_ERROR_BYTES) throw new ProtocolError(r.what, `error message of ${n} bytes is over ${MAX_READ_ERROR_BYTES}`);
      results[i] = { ok: false, error: r.bytes(n).toString('utf8') };
      continue;
    }
    if (status !== OK && status !== OK_BASES) throw new ProtocolError(r.what, `result ${i} has unknown status ${status}`);
    let bases: bigint[] | undefined;
    if (status === OK_BASES) {
      const n = r.u32();
      if (n > READ_LIMITS.maxListEntries) throw new ProtocolError(r.what, `${n} list entries is over ${READ_LIMITS.maxListEntries}`);
      r.need(n * 8);
      dataBytes += n * 8;
      bases = new Array(n);
      for (let j = 0; j < n; j++) bases[j] = r.u64();
    }
    const len = r.u32();
    dataBytes += len;
    if (dataBytes > READ_LIMITS.maxBatchBytes) throw new ProtocolError(r.what, `over the batch limit of ${READ_LIMITS.maxBatchBytes} bytes`);
    const data = r.bytes(len);
    results[i] = bases ? { ok: true, data, bases } : { ok: true, data };
  }
  r.end();
  return results;
}

/*
 * The relay stream between the host library and the monitor (docs/ids.md): one upgraded connection
 * per session instead of an HTTP request per frame. Both directions are length-prefixed messages,
 *   message = len (u32 BE) ‖ body
 * request bodies are channel request frames (at most IDS_STREAM_MAX_REQUEST_BYTES, as the HTTP
 * route's body limit); reply bodies are status (u8) ‖ the response frame (status ok) or the
 * refusal as UTF-8 JSON { error, code } (any other status). Replies come in request order.
 */
export const IDS_STREAM_PROTOCOL = 'vmseal-ids-channel/1';
export const IDS_STREAM_MAX_REQUEST_BYTES = 256 * 1024;
export const IdsStreamStatus = { ok: 0, refused: 1, badRequest: 2, notFound: 3, internal: 4 } as const;
export type IdsStreamStatus = (typeof IdsStreamStatus)[keyof typeof IdsStreamStatus];
const STREAM_STATUSES = new Set<number>(Object.values(IdsStreamStatus));

/** The 4-byte prefix of a message whose body is `bodyBytes` long (the body is written after it, not copied). */
export function idsStreamPrefix(bodyBytes: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(bodyBytes, 0);
  return b;
}

/** Splits a byte stream into message bodies; a length over `maxBytes` breaks it for good. */
export class IdsStreamDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #broken: ProtocolError | undefined;

  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer): Buffer[] {
    if (this.#broken) throw this.#broken;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const out: Buffer[] = [];
    while (this.#buffered >= 4) {
      const head = this.#chunks[0]!.length >= 4 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
      const len = head.readUInt32BE(0);
      if (len > this.maxBytes) {
        this.#broken = new ProtocolError('IDS relay stream', `message of ${len} bytes is over the limit of ${this.maxBytes}`);
        this.#chunks = [];
        this.#buffered = 0;
        throw this.#broken;
      }
      if (this.#buffered < 4 + len) break;
      const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
      out.push(all.subarray(4, 4 + len));
      const rest = all.subarray(4 + len);
      this.#chunks = rest.length > 0 ? [rest] : [];
      this.#buffered = rest.length;
    }
    return out;
  }
}

/** Splits a reply body into its status and payload. */
export function decodeIdsStreamReply(body: Buffer): { status: IdsStreamStatus; payload: Buffer } {
  const status = body[0];
  if (status === undefined || !STREAM_STATUSES.has(status)) throw new ProtocolError('IDS relay stream', status === undefined ? 'empty reply' : `unknown reply status ${status}`);
  return { status: status as IdsStreamStatus, payload: body.subarray(1) };
}
