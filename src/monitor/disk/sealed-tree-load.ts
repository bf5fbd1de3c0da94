/**
 * Establishes the in-memory integrity tree of a sealed disk at open (docs/sealed-disk.md): the sidecar's
 * levels are checked top-down against the trusted root, and a flush that a crash interrupted (a pending
 * record in monitor state) is finished first, so the disk opens at a root that vouches for what the files hold.
 */
import { IntegrityTree, TreeHasher, TREE_HASH_BYTES, TREE_SECTOR_BYTES, type BadSubtree, type ChangedNodes } from '../../crypto/integrity-tree.ts';
import type { MonitorDb, PendingFlush } from '../state/monitor-db.ts';
import { SealedDiskError } from './sealed-alerts.ts';
import { SectorRanges } from './sector-ranges.ts';

/** Sectors of ciphertext read at once while resolving a pending flush. */
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
  const pending = t.db.pendingFlush(t.imageId);
  if (!pending) return { root: t.root, bad: checkTree(t, t.root) };
  return finishInterruptedFlush(t, pending);
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

/**
 * Step 2 was committed, steps 3-5 may have run partly. The listed sectors go back to their old leaves and their
 * paths are recomputed from the stored siblings, which must then verify against the old root; each listed sector
 * then takes the leaf of whichever version its ciphertext is. The repaired nodes are written and the new root
 * committed, which also drops the pending record.
 */
async function finishInterruptedFlush(t: TreeLoad, p: PendingFlush): Promise<LoadedTree> {
  if (!p.oldRoot.equals(t.root)) throw new SealedDiskError(`image ${t.imageId}: the pending flush does not start from the image's root`, 'INVALID');
  const n = p.sectors.length;
  if (n > 0 && p.sectors[n - 1]! >= t.tree.sectors) throw new SealedDiskError(`image ${t.imageId}: the pending flush names a sector beyond the disk`, 'INVALID');
  const changed = t.tree.setLeaves(t.hasher, p.sectors, p.oldLeaves);
  const bad = checkTree(t, p.oldRoot);
  const condemned = new SectorRanges(bad.map((b) => ({ first: b.firstSector, end: b.firstSector + b.sectors })));

  const chosen = Buffer.from(p.oldLeaves);
  const leaves = Buffer.alloc(RECOVERY_BATCH * TREE_HASH_BYTES);
  for (let i = 0; i < n; ) {
    // A run of consecutive listed sectors, read and hashed at once.
    let j = i + 1;
    while (j < n && j - i < RECOVERY_BATCH && p.sectors[j] === p.sectors[j - 1]! + 1) j++;
    const first = p.sectors[i]!;
    const ciphertext = await t.readCiphertext(first, j - i);
    t.hasher.leaves(first, ciphertext.subarray(0, (j - i) * TREE_SECTOR_BYTES), leaves, 0);
    for (let x = i; x < j; x++) {
      if (condemned.intersect(p.sectors[x]!, 1).length > 0) continue;
      const got = leaves.subarray((x - i) * TREE_HASH_BYTES, (x - i + 1) * TREE_HASH_BYTES);
      const at = x * TREE_HASH_BYTES;
      if (got.equals(p.newLeaves.subarray(at, at + TREE_HASH_BYTES))) got.copy(chosen, at);
      else if (!got.equals(p.oldLeaves.subarray(at, at + TREE_HASH_BYTES))) {
        t.tamper(p.sectors[x]!, 1, 'after an interrupted flush the sector holds neither its old nor its new contents');
      }
    }
    i = j;
  }
  t.tree.setLeaves(t.hasher, p.sectors, chosen);
  await t.writeNodes(changed);
  const root = t.tree.root(t.hasher);
  t.db.commitFlush(t.imageId, p.oldRoot, root);
  return { root, bad };
}
