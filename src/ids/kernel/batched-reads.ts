/**
 * Sends any number of read ops through a MemorySource in as few requests as READ_LIMITS allow, and
 * checks that every reply has the shape its op asked for (a source is only as honest as the
 * monitor behind it; a short or missing result must fail loudly, not decode as zeros).
 */
import { READ_LIMITS, gatherRecordBytes, type MemorySource, type ReadOp, type ReadResult } from '../../formats/protocol/ids-read.ts';

export class ReadFailure extends Error {
  constructor(
    readonly op: ReadOp,
    detail: string,
  ) {
    super(`${describeOp(op)}: ${detail}`);
  }
}

export function describeOp(op: ReadOp): string {
  const hex = (v: bigint) => `0x${v.toString(16)}`;
  switch (op.kind) {
    case 'list':
      return `list at ${hex(op.head)} (+${op.linkOffset}, ${op.len} bytes each)`;
    case 'gather':
      return `gather at ${hex(op.head)} (+${op.linkOffset}, ${gatherRecordBytes(op)} bytes each)`;
    case 'uv':
      return `uv ${hex(op.addr)}+${op.len} (cr3 ${hex(op.cr3)})`;
    default:
      return `${op.kind} ${hex(op.addr)}+${op.len}`;
  }
}

/** Bytes an op may return, for splitting batches under maxBatchBytes. */
function opBytes(op: ReadOp): number {
  return op.kind === 'list' ? op.len * op.max : op.kind === 'gather' ? gatherRecordBytes(op) * op.max : op.len;
}

export interface BatchStats {
  /** Requests sent to the source. */
  requests: number;
  ops: number;
}

/** Runs ops in chunks; results come back in op order. Reply shapes are validated. */
export async function readBatched(source: MemorySource, ops: readonly ReadOp[], stats?: BatchStats): Promise<ReadResult[]> {
  const out: ReadResult[] = [];
  let i = 0;
  while (i < ops.length) {
    const chunk: ReadOp[] = [];
    let bytes = 0;
    while (i < ops.length && chunk.length < READ_LIMITS.maxOps) {
      const op = ops[i] as ReadOp;
      const b = opBytes(op);
      if (b > READ_LIMITS.maxBatchBytes) throw new ReadFailure(op, 'asks for more than one batch may return');
      if (chunk.length > 0 && bytes + b > READ_LIMITS.maxBatchBytes) break;
      chunk.push(op);
      bytes += b;
      i++;
    }
    const res = await source.read(chunk);
    if (stats) {
      stats.requests++;
      stats.ops += chunk.length;
    }
    if (res.length !== chunk.length) throw new Error(`memory source answered ${res.length} results for ${chunk.length} ops`);
    chunk.forEach((op, j) => out.push(checkShape(op, res[j] as ReadResult)));
  }
  return out;
}

function checkShape(op: ReadOp, r: ReadResult): ReadResult {
  if (!r.ok) return r;
  if (op.kind === 'list' || op.kind === 'gather') {
    const n = r.bases?.length ?? -1;
    const each = op.kind === 'list' ? op.len : gatherRecordBytes(op);
    if (n < 0 || n > op.max || r.data.length !== n * each) throw new ReadFailure(op, `malformed ${op.kind} reply (${n} bases, ${r.data.length} bytes)`);
  } else if (r.data.length !== op.len) throw new ReadFailure(op, `reply has ${r.data.length} bytes, asked ${op.len}`);
  return r;
}

/** Data of an ok result, or a ReadFailure naming the op. */
export function dataOf(op: ReadOp, r: ReadResult): Buffer {
  if (!r.ok) throw new ReadFailure(op, r.error);
  return r.data;
}
