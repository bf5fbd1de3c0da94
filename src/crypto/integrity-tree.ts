/**
 * The integrity tree over ciphertext sectors (docs/sealed-disk.md, sidecar version 2), keyed with the VM's
 * 32-byte K_integrity as a BLAKE3 key:
 *
 *   leaf_i        = BLAKE3-keyed(K, ciphertext_i ‖ "leaf" ‖ u64le(i))                        (4096-byte sectors)
 *   node (k, j)   = BLAKE3-keyed(K, "node" ‖ u32le(k) ‖ u64le(j) ‖ children)                  (k >= 1)
 *   root          = BLAKE3-keyed(K, "root" ‖ u64le(n) ‖ top)
 *
 * Level 0 holds the leaves; entry j of level k >= 1 is node (k, j), whose children are entries 128j ..
 * 128j+127 of level k-1 (only those that exist: the last node of a level may have fewer, and its hash
 * covers exactly those). The last level has one entry, the top node; there is always at least one level
 * above the leaves. Levels are kept padded with zeros to whole 4096-byte nodes, the sidecar file's layout.
 *
 * The hashing runs in the native addon (native.ts): node:crypto has no BLAKE3.
 */
import { hash } from 'node:crypto';
import { blake3Keyed, blake3KeyedInto, treeLeavesNative } from './native.ts';

export const TREE_SECTOR_BYTES = 4096;
export const TREE_HASH_BYTES = 32;
export const TREE_ARITY = 128;
export const TREE_NODE_BYTES = TREE_ARITY * TREE_HASH_BYTES;
/** K_integrity is a BLAKE3 key. */
export const TREE_KEY_BYTES = 32;

const TAG_NODE = 0x65646f6e; // "node" read as u32 LE
const TWO_32 = 2 ** 32;

/** Entries per level for `sectors` leaves: [n, ceil(n/128), ..., 1], at least two levels. */
export function treeLevelEntries(sectors: number): number[] {
  if (!Number.isSafeInteger(sectors) || sectors < 1) throw new RangeError(`integrity tree: bad sector count ${sectors}`);
  const entries = [sectors];
  while (entries.length < 2 || entries.at(-1)! > 1) entries.push(Math.ceil(entries.at(-1)! / TREE_ARITY));
  return entries;
}

/** Bytes a level of `entries` hashes takes, padded to whole nodes. */
export function paddedLevelBytes(entries: number): number {
  return Math.ceil(entries / TREE_ARITY) * TREE_NODE_BYTES;
}

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % TWO_32, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

/** The tree's hash under one key. Not reentrant (a shared header buffer); all methods are synchronous. */
export class TreeHasher {
  readonly #key: Buffer;
  /** "node" ‖ u32le(k) ‖ u64le(j), rewritten per node. */
  readonly #nodeHeader = Buffer.alloc(16);

  /** `key` (K_integrity, 32 bytes) is copied. */
  constructor(key: Uint8Array) {
    if (key.length !== TREE_KEY_BYTES) throw new RangeError(`integrity key must be ${TREE_KEY_BYTES} bytes (a BLAKE3 key), got ${key.length}`);
    this.#key = Buffer.from(key);
  }

  /** Leaves of the consecutive sectors in `ciphertext` (first one `firstSector`), written to out[at..]. */
  leaves(firstSector: number, ciphertext: Buffer, out: Buffer, at = 0): void {
    if (ciphertext.length % TREE_SECTOR_BYTES !== 0) throw new RangeError(`integrity tree: ${ciphertext.length} bytes is not whole sectors`);
    const count = ciphertext.length / TREE_SECTOR_BYTES;
    if (at + count * TREE_HASH_BYTES > out.length) throw new RangeError('integrity tree: leaf output too small');
    treeLeavesNative(this.#key, firstSector, ciphertext, out.subarray(at, at + count * TREE_HASH_BYTES));
  }

  /** Node (level, index) over `children` (1..128 hashes), written to out[at..]. */
  node(level: number, index: number, children: Buffer, out: Buffer, at: number): void {
    if (children.length === 0 || children.length > TREE_NODE_BYTES || children.length % TREE_HASH_BYTES !== 0) {
      throw new RangeError(`integrity tree: a node has 1..${TREE_ARITY} children, got ${children.length} bytes`);
    }
    const h = this.#nodeHeader;
    h.writeUInt32LE(TAG_NODE, 0);
    h.writeUInt32LE(level, 4);
    writeU64(h, index, 8);
    blake3KeyedInto(out.subarray(at, at + TREE_HASH_BYTES), this.#key, h, children);
  }

  root(sectors: number, top: Buffer): Buffer {
    if (top.length !== TREE_HASH_BYTES) throw new RangeError('integrity tree: top hash must be 32 bytes');
    const header = Buffer.alloc(12);
    header.write('root', 0, 'ascii');
    writeU64(header, sectors, 4);
    return blake3Keyed(this.#key, header, top);
  }
}

/**
 * Hashes node `node` of the level above `childLevel`: entry `node` of level childLevel+1 from its children in
 * `children` (the whole level childLevel, `childEntries` hashes), written into `parents`.
 */
export function hashNode(h: TreeHasher, childLevel: number, children: Buffer, childEntries: number, node: number, parents: Buffer): void {
  h.node(childLevel + 1, node, childrenOf(children, childEntries, node), parents, node * TREE_HASH_BYTES);
}

/** The existing children of node `node` in a level of `entries` hashes. */
function childrenOf(level: Buffer, entries: number, node: number): Buffer {
  const from = node * TREE_ARITY;
  const count = Math.min(TREE_ARITY, entries - from);
  return level.subarray(from * TREE_HASH_BYTES, (from + count) * TREE_HASH_BYTES);
}

/** A subtree whose stored node did not match its trusted parent: its sectors cannot be verified. */
export interface BadSubtree {
  /** Level of the entry that failed (>= 1) and its index; the top level means the whole tree. */
  level: number;
  index: number;
  firstSector: number;
  sectors: number;
}

export type ChangedNodes = number[][];

/** A whole tree in memory. Pure: the caller reads and writes the levels from and to the sidecar. */
export class IntegrityTree {
  readonly entries: readonly number[];

  /** `levels` (adopted, not copied) must have the padded sizes of treeLevelEntries(sectors); default zeros. */
  constructor(
    readonly sectors: number,
    readonly levels: Buffer[] = treeLevelEntries(sectors).map((e) => Buffer.alloc(paddedLevelBytes(e))),
  ) {
    this.entries = treeLevelEntries(sectors);
    if (levels.length !== this.entries.length || levels.some((l, k) => l.length !== paddedLevelBytes(this.entries[k]!))) {
      throw new RangeError('integrity tree: level buffers do not match the sector count');
    }
  }

  /** A tree over the given leaves (n * 32 bytes), all upper levels computed. */
  static fromLeaves(h: TreeHasher, sectors: number, leaves: Buffer): IntegrityTree {
    const t = new IntegrityTree(sectors);
    if (leaves.length !== sectors * TREE_HASH_BYTES) throw new RangeError('integrity tree: leaves buffer does not match the sector count');
    leaves.copy(t.levels[0]!);
    t.rebuild(h);
    return t;
  }

  get top(): Buffer {
    return this.levels.at(-1)!.subarray(0, TREE_HASH_BYTES);
  }

  leaf(sector: number): Buffer {
    return this.levels[0]!.subarray(sector * TREE_HASH_BYTES, (sector + 1) * TREE_HASH_BYTES);
  }

  /** Recomputes every level above `fromLevel` from the one below it. */
  rebuild(h: TreeHasher, fromLevel = 0): void {
    for (let k = fromLevel; k < this.levels.length - 1; k++) {
      const nodes = this.entries[k + 1]!;
      for (let j = 0; j < nodes; j++) hashNode(h, k, this.levels[k]!, this.entries[k]!, j, this.levels[k + 1]!);
    }
  }

  root(h: TreeHasher): Buffer {
    return h.root(this.sectors, this.top);
  }

  /**
   * Sets the leaves of `sectors` (ascending, distinct) to the hashes in `leaves` (32 bytes each, same order)
   * and recomputes their ancestors. Returns, per level, the ascending indexes of the nodes (4096-byte blocks of
   * that level) whose bytes changed, i.e. what the sidecar must be rewritten with.
   */
  setLeaves(h: TreeHasher, sectors: ArrayLike<number>, leaves: Buffer): ChangedNodes {
    const n = sectors.length;
    if (leaves.length !== n * TREE_HASH_BYTES) throw new RangeError('integrity tree: one 32-byte leaf per sector expected');
    const changed: ChangedNodes = this.levels.map(() => []);
    let prev = -1;
    // Leaves are copied one run of consecutive sectors at a time: per-leaf copies cost more than the bytes.
    let from = 0;
    for (let i = 0; i <= n; i++) {
      const s = i < n ? sectors[i]! : -1;
      if (i < n && (!Number.isInteger(s) || s <= prev || s >= this.sectors)) throw new RangeError(`integrity tree: sector ${s} out of order or range`);
      if (i > from && (i === n || s !== prev + 1)) {
        leaves.copy(this.levels[0]!, sectors[from]! * TREE_HASH_BYTES, from * TREE_HASH_BYTES, i * TREE_HASH_BYTES);
        from = i;
      }
      if (i === n) break;
      prev = s;
      const block = Math.floor(s / TREE_ARITY);
      if (changed[0]!.at(-1) !== block) changed[0]!.push(block);
    }
    for (let k = 0; k < this.levels.length - 1; k++) {
      for (const j of changed[k]!) {
        hashNode(h, k, this.levels[k]!, this.entries[k]!, j, this.levels[k + 1]!);
        const up = Math.floor(j / TREE_ARITY);
        if (changed[k + 1]!.at(-1) !== up) changed[k + 1]!.push(up);
      }
    }
    return changed;
  }

  /**
   * Checks stored levels (e.g. read from an untrusted sidecar) top-down against a trusted root. The top node
   * is recomputed from its children; then each node is recomputed from its children and compared with its
   * entry in the already verified level above. A mismatch condemns that subtree only (its sectors are returned)
   * and nothing below it is examined. If the top itself does not verify, the whole tree is bad. The stored top
   * is replaced by its verified value; condemned entries stay as stored and must not be trusted.
   */
  verify(h: TreeHasher, root: Buffer): BadSubtree[] {
    const T = this.levels.length - 1;
    const top = Buffer.alloc(TREE_HASH_BYTES);
    hashNode(h, T - 1, this.levels[T - 1]!, this.entries[T - 1]!, 0, top);
    if (!h.root(this.sectors, top).equals(root)) return [{ level: T, index: 0, firstSector: 0, sectors: this.sectors }];
    top.copy(this.levels[T]!);
    const bad: BadSubtree[] = [];
    const computed = Buffer.alloc(TREE_HASH_BYTES);
    // untrusted[j] for the level being checked: entry j lies under a condemned node.
    let untrustedAbove = new Uint8Array(1);
    for (let k = T - 1; k >= 1; k--) {
      const count = this.entries[k]!;
      const untrusted = new Uint8Array(count);
      const span = TREE_ARITY ** k;
      for (let j = 0; j < count; j++) {
        if (untrustedAbove[Math.floor(j / TREE_ARITY)]) {
          untrusted[j] = 1;
          continue;
        }
        h.node(k, j, childrenOf(this.levels[k - 1]!, this.entries[k - 1]!, j), computed, 0);
        if (!computed.equals(this.levels[k]!.subarray(j * TREE_HASH_BYTES, (j + 1) * TREE_HASH_BYTES))) {
          untrusted[j] = 1;
          const firstSector = j * span;
          bad.push({ level: k, index: j, firstSector, sectors: Math.min(span, this.sectors - firstSector) });
        }
      }
      untrustedAbove = untrusted;
    }
    return bad;
  }
}

/**
 * The monitor's id for an image: SHA-256("vmseal/v1/image-id" ‖ K_integrity), first 16 bytes in hex. It names
 * the image's state (its trusted root) without revealing the key, and is the same on every open of that image.
 */
export function integrityImageId(integrityKey: Uint8Array): string {
  return hash('sha256', Buffer.concat([Buffer.from('vmseal/v1/image-id', 'ascii'), integrityKey]), 'buffer').subarray(0, 16).toString('hex');
}
