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
  | { kind: 'list'; head: bigint; linkOffset: number; len: number; max: number };

export type ReadResult =
  /** For 'list': `data` is the entries' snapshots back to back (`len` bytes each), `bases` their addresses. */
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
  /** Bytes one batch may return in total. */
  maxBatchBytes: 32 << 20,
} as const;

/** Anything that answers read batches: the monitor directly, or a channel to it. */
export interface MemorySource {
  read(ops: readonly ReadOp[]): Promise<ReadResult[]>;
}
