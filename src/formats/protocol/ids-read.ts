/**
 * The reads an IDS may ask of the monitor (ARCHITECTURE.md protocol 7). The same shapes are used by
 * the direct path (the monitor's own reader), the plain channel and the sealed channel, so the IDS's
 * kernel model does not know which one it runs on. Addresses are guest addresses: kernel virtual
 * (walked with the VM's kernel CR3), user virtual (walked with the CR3 given) or guest physical.
 */

export type ReadOp =
  | { kind: 'phys'; addr: bigint; len: number }
  | { kind: 'kv'; addr: bigint; len: number }
  | { kind: 'uv'; cr3: bigint; addr: bigint; len: number }
  /**
   * Follows a kernel `list_head` ring starting at the list head `head` (a kernel virtual address):
   * for each entry, `base = next - linkOffset`, and `len` bytes are read at `base`. Stops at `head`,
   * after `max` entries, or at the first unreadable link. The monitor knows nothing of the structure:
   * the IDS computed `linkOffset` from BTF.
   */
  | { kind: 'list'; head: bigint; linkOffset: number; len: number; max: number }
  /**
   * The same ring walk, but each entry comes back as a record of only what the IDS needs: the
   * `ranges` of the entry (offsets from its base), then for each of `follow`, one status byte
   * (FOLLOW_STATUS) and the follow's `ranges` read at the pointer stored at `ptrOffset` in the entry
   * (zeros unless the status is ok). A task list with its credentials and signal structs is one op.
   */
  | { kind: 'gather'; head: bigint; linkOffset: number; max: number; ranges: readonly ReadRange[]; follow: readonly ReadFollow[] };

/** `len` bytes at `off` from an object's address. */
export interface ReadRange {
  off: number;
  len: number;
}

/** A pointer member of a list entry (at `ptrOffset`) and what to read of its target. */
export interface ReadFollow {
  ptrOffset: number;
  ranges: readonly ReadRange[];
}

/** The byte in front of each follow's bytes in a 'gather' record. */
export const FOLLOW_STATUS = { null: 0, ok: 1, unreadable: 2 } as const;

/**
 * Sorts [from, to) spans and merges those less than `gap` bytes apart (0: only touching or overlapping
 * ones). The IDS plans its reads with it and the monitor its preads, from the same ranges.
 */
export function mergeSpans(spans: Iterable<readonly [number, number]>, gap: number): Array<[number, number]> {
  const sorted = [...spans].sort((a, b) => a[0] - b[0]);
  const merged: Array<[number, number]> = [];
  for (const [from, to] of sorted) {
    const last = merged[merged.length - 1];
    if (last && from <= last[1] + gap) last[1] = Math.max(last[1], to);
    else merged.push([from, to]);
  }
  return merged;
}

/** Bytes of one 'gather' record. */
export function gatherRecordBytes(op: { ranges: readonly ReadRange[]; follow: readonly ReadFollow[] }): number {
  let n = 0;
  for (const r of op.ranges) n += r.len;
  for (const f of op.follow) {
    n += 1;
    for (const r of f.ranges) n += r.len;
  }
  return n;
}

export type ReadResult =
  /**
   * For 'list': `data` is the entries' snapshots back to back (`len` bytes each), `bases` their
   * addresses; for 'gather' the same with records (gatherRecordBytes each).
   */
  | { ok: true; data: Buffer; bases?: bigint[] }
  | { ok: false; error: string };

/** Bounds on one request, enforced by every executor and decoder. */
export const READ_LIMITS = {
  /** Bytes one op may ask for ('list': per entry). */
  maxOpBytes: 1 << 20,
  /** Ops in one batch. */
  maxOps: 4096,
  /** Entries one 'list' op may follow. */
  maxListEntries: 1 << 16,
  /** Ranges of one 'gather' op: of the entry, and of each follow. */
  maxGatherRanges: 64,
  /** Pointers one 'gather' op may follow per entry. */
  maxGatherFollows: 16,
  /** Bytes one batch may return in total. */
  maxBatchBytes: 32 << 20,
} as const;

/** Anything that answers read batches: the monitor directly, or a channel to it. */
export interface MemorySource {
  read(ops: readonly ReadOp[]): Promise<ReadResult[]>;
}
