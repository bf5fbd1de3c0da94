/**
 * Maps a tenant's protected paths on an ext4 guest disk to the byte ranges the ProtectedBackend
 * refuses to let the guest write (docs/integrity.md lists what this does and does not stop).
 *
 * Covered, for each protected path (directories recursively, up to MAX_FILES entries):
 *  - its data blocks (file contents; for a directory, its entry blocks: no create/delete/rename inside);
 *  - its extent-tree index/leaf blocks, or ext2/3 indirect blocks (the block map cannot be redirected);
 *  - the identity fields of its inode in the inode table: mode, uid/gid, size, links, block count,
 *    flags, the extent root (i_block), generation, xattr block. Timestamps, i_version and the inode
 *    checksum are left writable, because the guest rewrites them on every access (atime) and on the
 *    refused write itself (mtime); refusing them would make the guest's own inode-table write-back
 *    fail for the 15 other inodes sharing the 4 KiB block.
 * The ranges are byte ranges; the guest writes whole blocks, so ProtectedBackend compares the bytes.
 */
import { Ext4, INODE_FLAG, isDir, isSymlink, type Inode } from '../../formats/ext4/index.ts';
import type { ProtectedRange } from '../disk/protected-backend.ts';

const MAX_FILES = 100_000;

/** [start, end) offsets inside an ext4 inode that identify the file and where its data lives. */
const INODE_IDENTITY_FIELDS: ReadonlyArray<readonly [number, number]> = [
  [0x00, 0x08], // i_mode, i_uid, i_size_lo
  [0x14, 0x24], // i_dtime, i_gid, i_links_count, i_blocks_lo, i_flags
  [0x28, 0x70], // i_block (extent root), i_generation, i_file_acl_lo, i_size_high
  [0x74, 0x7c], // i_blocks_high, i_file_acl_high, i_uid_high, i_gid_high
];

/** Fast symlinks keep their target in i_block, inline-data files their bytes: nothing outside the inode. */
function inInodeOnly(inode: Inode): boolean {
  if (inode.flags & INODE_FLAG.INLINE_DATA) return true;
  return isSymlink(inode) && inode.size < 60 && !(inode.flags & INODE_FLAG.EXTENTS);
}

async function rangesFor(fs: Ext4, inode: Inode, path: string, base: number): Promise<ProtectedRange[]> {
  const location = base + (await fs.inodeLocation(inode.ino));
  const out: ProtectedRange[] = INODE_IDENTITY_FIELDS.map(([s, e]) => ({ offset: location + s, length: e - s, label: `${path} (inode ${inode.ino})` }));
  // Device nodes, fifos and empty files have no blocks.
  if (inode.size === 0 || inInodeOnly(inode)) return out;
  const bs = fs.sb.blockSize;
  const kind = isDir(inode) ? 'entries' : 'data';
  for (const r of await fs.runs(inode)) out.push({ offset: base + r.physical * bs, length: r.length * bs, label: `${path} ${kind}` });
  for (const b of await fs.mapBlocks(inode)) out.push({ offset: base + b * bs, length: bs, label: `${path} extent tree` });
  return out;
}

/**
 * Byte ranges (on the whole disk: `base` is the partition's offset) protecting `paths`. A path that
 * does not exist is an error: a policy naming a missing file protects nothing and must say so.
 * A symlink is protected itself, not followed.
 */
export async function protectedRangesFor(fs: Ext4, paths: readonly string[], base: number): Promise<ProtectedRange[]> {
  const out: ProtectedRange[] = [];
  let files = 0;
  for (const p of paths) {
    const inode = await fs.lookup(p);
    out.push(...(await rangesFor(fs, inode, p, base)));
    if (!isDir(inode)) continue;
    for await (const e of fs.walk(p, { maxEntries: MAX_FILES })) {
      if (++files > MAX_FILES) throw new Error(`protected paths cover more than ${MAX_FILES} files`);
      out.push(...(await rangesFor(fs, e.inode, e.path, base)));
    }
  }
  return out;
}
