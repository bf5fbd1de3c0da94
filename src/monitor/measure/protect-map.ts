/**
 * Maps a tenant's protected paths on an ext4 guest disk to the byte ranges the ProtectedBackend
 * refuses to let the guest write (docs/integrity.md lists what this does and does not stop).
 *
 * Covered, for each protected path (directories recursively, up to MAX_FILES entries):
 *  - its data blocks (file contents; for a directory, its entry blocks: no create/delete/rename inside);
 *  - its extent-tree index/leaf blocks (the block map cannot be redirected);
 *  - the identity fields of its inode in the inode table: mode, uid/gid, size, links, block count,
 *    flags, the extent root (i_block), generation, xattr block. Timestamps, i_version and the inode
 *    checksum are left writable, because the guest rewrites them on every access (atime) and on the
 *    refused write itself (mtime); refusing them would make the guest's own inode-table write-back
 *    fail for the 15 other inodes sharing the 4 KiB block.
 * The ranges are byte ranges; the guest writes whole blocks, so ProtectedBackend compares the bytes.
 */
import type { ProtectedRange } from '../disk/protected-backend.ts';
import { S_IFDIR, S_IFMT, type Ext4Inode, type Ext4Map } from './ext4-map.ts';

const MAX_FILES = 100_000;

/** [start, end) offsets inside an ext4 inode that identify the file and where its data lives. */
const INODE_IDENTITY_FIELDS: ReadonlyArray<readonly [number, number]> = [
  [0x00, 0x08], // i_mode, i_uid, i_size_lo
  [0x14, 0x24], // i_dtime, i_gid, i_links_count, i_blocks_lo, i_flags
  [0x28, 0x70], // i_block (extent root), i_generation, i_file_acl_lo, i_size_high
  [0x74, 0x7c], // i_blocks_high, i_file_acl_high, i_uid_high, i_gid_high
];

async function rangesFor(fs: Ext4Map, inode: Ext4Inode, path: string, base: number): Promise<ProtectedRange[]> {
  const out: ProtectedRange[] = INODE_IDENTITY_FIELDS.map(([s, e]) => ({ offset: base + inode.location + s, length: e - s, label: `${path} (inode ${inode.ino})` }));
  const type = inode.mode & S_IFMT;
  // Fast symlinks and device nodes keep everything in the inode itself.
  if (inode.size === 0 || !(inode.flags & 0x80000)) return out;
  const { extents, treeBlocks } = await fs.extents(inode);
  const bs = fs.blockSize;
  for (const e of extents) out.push({ offset: base + e.physical * bs, length: e.blocks * bs, label: `${path} ${type === S_IFDIR ? 'entries' : 'data'}` });
  for (const b of treeBlocks) out.push({ offset: base + b * bs, length: bs, label: `${path} extent tree` });
  return out;
}

/**
 * Byte ranges (on the whole disk: `base` is the partition's offset) protecting `paths`. A path that
 * does not exist is an error: a policy naming a missing file protects nothing and must say so.
 */
export async function protectedRangesFor(fs: Ext4Map, paths: readonly string[], base: number): Promise<ProtectedRange[]> {
  const out: ProtectedRange[] = [];
  let files = 0;
  for (const p of paths) {
    const inode = await fs.lookup(p);
    out.push(...(await rangesFor(fs, inode, p, base)));
    if ((inode.mode & S_IFMT) !== S_IFDIR) continue;
    for await (const e of fs.walk(p)) {
      if (++files > MAX_FILES) throw new Error(`protected paths cover more than ${MAX_FILES} files`);
      out.push(...(await rangesFor(fs, await fs.inode(e.ino), e.path, base)));
    }
  }
  return out;
}
