/**
 * Establishes the in-memory integrity tree of a sealed disk at open (docs/sealed-disk.md): the sidecar's
 * levels are checked top-down against the trusted root. After a crash, the writes put into the files since that
 * root was committed (pending records in monitor state) are sorted out first, so the disk opens at a root that
 * vouches for what the files hold.
 */
import { IntegrityTree, TreeHasher, TREE_HASH_BYTES, TREE_SECTOR_BYTES, type BadSubtree, type ChangedNodes } from '../../crypto/integrity-tree.ts';
import type { MonitorDb, PendingWrites } from '../state/monitor-db.ts';
import { SealedDiskError } from './sealed-alerts.ts';
import { SectorRanges } from './sector-ranges.ts';

/** Sectors of ciphertext read at once while resolving pending writes. */
const RECOVERY_BATCH = 256;

export interface TreeLoad {
  imageId: string;
  hasher: TreeHasher;
  /** The levels as read from the sidecar; verified (and, after a crash, repaired) in place. */
  tree: IntegrityTree;
  /** The root monitor state or the launch bundle vouches for. */
  root: Buffer;
  db: MonitorDb;
  readCiphertext(firstSector: number, sectors: number): Promise<Buffer>;
  /** Makes what the image holds durable (recovery commits a root over what it read). */
  syncImage(): Promise<void>;
  /** Writes these nodes of `tree` to the sidecar and syncs it. */
  writeNodes(changed: ChangedNodes): Promise<void>;
  tamper(sector: number, sectors: number, reason: string): void;
}

export interface LoadedTree {
  /** The root the disk now opens at (the trusted one, or the one recovery committed). */
  root: Buffer;
  /** Subtrees whose sidecar nodes did not verify; their sectors must never be served. */
  bad: BadSubtree[];
}

export async function loadTree(t: TreeLoad): Promise<LoadedTree> {
  const pending = t.db.pendingWrites(t.imageId);
  if (pending.length === 0) return { root: t.root, bad: checkTree(t, t.root) };
  return resolvePendingWrites(t, pending);
}

/** Verifies the tree; a tree whose top does not verify (wrong sidecar, rollback, wrong key) is refused whole. */
function checkTree(t: TreeLoad, root: Buffer): BadSubtree[] {
  const bad = t.tree.verify(t.hasher, root);
  const whole = bad.length === 1 && bad[0]!.level === t.tree.levels.length - 1;
  if (whole) {
    const why = 'the sidecar does not verify against the trusted root (a swapped, rolled-back or altered image, or the wrong key)';
    t.tamper(0, t.tree.sectors, why);
    throw new SealedDiskError(`image ${t.imageId}: ${why}`, 'TAMPER');
  }
  for (const b of bad) t.tamper(b.firstSector, b.sectors, `sidecar node ${b.index} of level ${b.level} does not match its parent`);
  return bad;
}

/** Per listed sector: its leaf under the committed root, and every leaf written since (any may be on disk). */
interface Versions {
  sectors: number[];
  committed: Buffer;
  written: Map<number, Buffer[]>;
}

function collectVersions(t: TreeLoad, records: PendingWrites[]): Versions {
  const committed = new Map<number, Buffer>();
  const written = new Map<number, Buffer[]>();
  for (const r of records) {
    r.sectors.forEach((s, i) => {
      if (s >= t.tree.sectors) throw new SealedDiskError(`image ${t.imageId}: a pending write names sector ${s}, beyond the disk`, 'INVALID');
      const at = i * TREE_HASH_BYTES;
      // The first record naming a sector holds its leaf as of the committed root.
      if (!committed.has(s)) committed.set(s, r.oldLeaves.subarray(at, at + TREE_HASH_BYTES));
      const list = written.get(s) ?? [];
      list.push(r.newLeaves.subarray(at, at + TREE_HASH_BYTES));
      written.set(s, list);
    });
  }
  const sectors = [...committed.keys()].sort((a, b) => a - b);
  const leaves = Buffer.alloc(sectors.length * TREE_HASH_BYTES);
  sectors.forEach((s, i) => committed.get(s)!.copy(leaves, i * TREE_HASH_BYTES));
  return { sectors, committed: leaves, written };
}

/**
 * Buffers were spilled into the files since the root was committed, and the process died before the next
 * FLUSH committed a root over them. Each listed sector goes back to its committed leaf and the listed paths are
 * recomputed from the stored siblings (every other node is as the root committed it, and was synced then),
 * which must then verify against that root like a normal open. Each listed sector then takes the leaf of
 * whichever of its versions its ciphertext is; one that is none of them (torn by power loss, or altered) keeps
 * its committed leaf, so it fails verification when read and is alerted now. The repaired nodes are written, the
 * image and sidecar synced, and the new root committed, which also drops the records.
 */
async function resolvePendingWrites(t: TreeLoad, records: PendingWrites[]): Promise<LoadedTree> {
  const v = collectVersions(t, records);
  const n = v.sectors.length;
  const changed = t.tree.setLeaves(t.hasher, v.sectors, v.committed);
  const bad = checkTree(t, t.root);
  const condemned = new SectorRanges(bad.map((b) => ({ first: b.firstSector, end: b.firstSector + b.sectors })));

  const chosen = Buffer.from(v.committed);
  const leaves = Buffer.alloc(RECOVERY_BATCH * TREE_HASH_BYTES);
  for (let i = 0; i < n; ) {
    // A run of consecutive listed sectors, read and hashed at once.
    let j = i + 1;
    while (j < n && j - i < RECOVERY_BATCH && v.sectors[j] === v.sectors[j - 1]! + 1) j++;
    const first = v.sectors[i]!;
    const ciphertext = await t.readCiphertext(first, j - i);
    t.hasher.leaves(first, ciphertext.subarray(0, (j - i) * TREE_SECTOR_BYTES), leaves, 0);
    for (let x = i; x < j; x++) {
      const s = v.sectors[x]!;
      if (condemned.intersect(s, 1).length > 0) continue;
      const got = leaves.subarray((x - i) * TREE_HASH_BYTES, (x - i + 1) * TREE_HASH_BYTES);
      const at = x * TREE_HASH_BYTES;
      if (got.equals(v.committed.subarray(at, at + TREE_HASH_BYTES))) continue;
      if (v.written.get(s)!.some((leaf) => leaf.equals(got))) got.copy(chosen, at);
      else t.tamper(s, 1, 'after a crash the sector holds none of the versions written since the last flush');
    }
    i = j;
  }
  t.tree.setLeaves(t.hasher, v.sectors, chosen);
  await Promise.all([t.syncImage(), t.writeNodes(changed)]);
  const root = t.tree.root(t.hasher);
  t.db.commitRoot(t.imageId, t.root, root);
  return { root, bad };
}
