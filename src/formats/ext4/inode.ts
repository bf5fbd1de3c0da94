// ext4 inodes (ondisk/inodes) and how a file's logical blocks map to disk blocks: extent trees
// (ondisk/ifork, magic 0xF30A) or the legacy direct/indirect block map of ext2/3.
import { Ext4Error } from './errors.ts';

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;

export const INODE_FLAG = {
  ENCRYPT: 0x800,
  INDEX: 0x1000,
  EXTENTS: 0x80000,
  EA_INODE: 0x200000,
  INLINE_DATA: 0x10000000,
} as const;

/** ext4 caps a file at 2^32 logical blocks; with 64 KiB blocks that is 2^48 bytes. */
export const MAX_LOGICAL_BLOCKS = 2 ** 32;

export interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  linksCount: number;
  flags: number;
  mtime: number;
  /** The 60-byte i_block area: extent root, block map or fast-symlink text. */
  iBlock: Buffer;
}

export function parseInode(ino: number, b: Uint8Array): Inode {
  const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (v.length < 128) throw new Ext4Error(`inode ${ino} truncated`);
  const size = v.readUInt32LE(4) + v.readUInt32LE(108) * 2 ** 32;
  if (!Number.isSafeInteger(size)) throw new Ext4Error(`inode ${ino}: size out of range`);
  return {
    ino,
    mode: v.readUInt16LE(0),
    uid: v.readUInt16LE(2) | (v.readUInt16LE(120) << 16),
    gid: v.readUInt16LE(24) | (v.readUInt16LE(122) << 16),
    size,
    linksCount: v.readUInt16LE(26),
    flags: v.readUInt32LE(32),
    mtime: v.readUInt32LE(16),
    iBlock: Buffer.from(v.subarray(40, 100)),
  };
}

export const isDir = (i: Inode) => (i.mode & S_IFMT) === S_IFDIR;
export const isRegular = (i: Inode) => (i.mode & S_IFMT) === S_IFREG;
export const isSymlink = (i: Inode) => (i.mode & S_IFMT) === S_IFLNK;

/** A run of logical blocks: on disk at `physical`, or a hole (physical 0; also unwritten extents). */
export interface BlockRun {
  logical: number;
  physical: number;
  length: number;
}

export interface BlockSource {
  blockSize: number;
  blocksCount: number;
  readBlock(block: number): Promise<Buffer>;
}

const EXTENT_MAGIC = 0xf30a;
const MAX_EXTENT_DEPTH = 5; // the kernel's EXT4_MAX_EXTENT_DEPTH

/**
 * The block runs of a file, sorted by logical block; holes are left out. `mapBlocks`, when given,
 * receives the blocks that hold the mapping itself (extent index/leaf nodes or indirect blocks).
 */
export async function blockRuns(inode: Inode, src: BlockSource, mapBlocks?: number[]): Promise<BlockRun[]> {
  if (inode.flags & INODE_FLAG.INLINE_DATA) throw new Ext4Error(`inode ${inode.ino}: inline data is not supported`);
  if (inode.flags & INODE_FLAG.ENCRYPT) throw new Ext4Error(`inode ${inode.ino}: encrypted (fscrypt) content`);
  const visited = new Set<number>();
  const runs = inode.flags & INODE_FLAG.EXTENTS ? await extentRuns(inode, src, visited) : await blockMapRuns(inode, src, visited);
  if (mapBlocks) for (const b of [...visited].sort((a, b) => a - b)) mapBlocks.push(b);
  runs.sort((a, b) => a.logical - b.logical);
  for (let i = 1; i < runs.length; i++) {
    const p = runs[i - 1] as BlockRun;
    if (p.logical + p.length > (runs[i] as BlockRun).logical) throw new Ext4Error(`inode ${inode.ino}: overlapping extents`);
  }
  return runs;
}

async function extentRuns(inode: Inode, src: BlockSource, visited: Set<number>): Promise<BlockRun[]> {
  const runs: BlockRun[] = [];
  const maxRuns = Math.ceil(inode.size / src.blockSize) + 1;
  const walk = async (node: Buffer, depthExpected: number | null, level: number): Promise<void> => {
    if (node.length < 12 || node.readUInt16LE(0) !== EXTENT_MAGIC) throw new Ext4Error(`inode ${inode.ino}: bad extent header`);
    const entries = node.readUInt16LE(2);
    const max = node.readUInt16LE(4);
    const depth = node.readUInt16LE(6);
    if (depth > MAX_EXTENT_DEPTH || (depthExpected !== null && depth !== depthExpected)) throw new Ext4Error(`inode ${inode.ino}: extent depth ${depth} invalid`);
    if (entries > max || 12 + max * 12 > node.length) throw new Ext4Error(`inode ${inode.ino}: extent node overflows`);
    if (level > MAX_EXTENT_DEPTH) throw new Ext4Error(`inode ${inode.ino}: extent tree too deep`);
    for (let i = 0; i < entries; i++) {
      const o = 12 + i * 12;
      if (depth === 0) {
        const logical = node.readUInt32LE(o);
        let len = node.readUInt16LE(o + 4);
        const unwritten = len > 32768;
        if (unwritten) len -= 32768;
        const physical = node.readUInt16LE(o + 6) * 2 ** 32 + node.readUInt32LE(o + 8);
        if (len === 0) continue;
        if (logical + len > MAX_LOGICAL_BLOCKS) throw new Ext4Error(`inode ${inode.ino}: extent beyond the maximum file size`);
        if (!unwritten && (physical === 0 || physical + len > src.blocksCount)) throw new Ext4Error(`inode ${inode.ino}: extent at block ${physical} outside the file system`);
        if (!unwritten) runs.push({ logical, physical, length: len });
        if (runs.length > maxRuns) throw new Ext4Error(`inode ${inode.ino}: more extents than its size allows`);
      } else {
        const child = node.readUInt16LE(o + 8) * 2 ** 32 + node.readUInt32LE(o + 4);
        if (child === 0 || child >= src.blocksCount) throw new Ext4Error(`inode ${inode.ino}: extent index points outside the file system`);
        if (visited.has(child)) throw new Ext4Error(`inode ${inode.ino}: extent tree loop at block ${child}`);
        visited.add(child);
        await walk(await src.readBlock(child), depth - 1, level + 1);
      }
    }
  };
  await walk(inode.iBlock, null, 0);
  return runs;
}

async function blockMapRuns(inode: Inode, src: BlockSource, visited: Set<number>): Promise<BlockRun[]> {
  const perBlock = src.blockSize / 4;
  const fileBlocks = Math.ceil(inode.size / src.blockSize);
  const runs: BlockRun[] = [];
  const add = (logical: number, physical: number) => {
    if (physical === 0 || logical >= fileBlocks) return;
    if (physical >= src.blocksCount) throw new Ext4Error(`inode ${inode.ino}: block ${physical} outside the file system`);
    const last = runs.at(-1);
    if (last && last.logical + last.length === logical && last.physical + last.length === physical) last.length++;
    else runs.push({ logical, physical, length: 1 });
  };
  // Walks an indirect block of the given level; `base` is the first logical block it maps.
  const indirect = async (block: number, level: number, base: number): Promise<void> => {
    if (block === 0 || base >= fileBlocks) return;
    if (block >= src.blocksCount) throw new Ext4Error(`inode ${inode.ino}: indirect block ${block} outside the file system`);
    if (visited.has(block)) throw new Ext4Error(`inode ${inode.ino}: block map loop at block ${block}`);
    visited.add(block);
    const data = await src.readBlock(block);
    const span = perBlock ** level;
    for (let i = 0; i < perBlock; i++) {
      const p = data.readUInt32LE(i * 4);
      if (level === 0) add(base + i, p);
      else await indirect(p, level - 1, base + i * span);
    }
  };
  for (let i = 0; i < 12; i++) add(i, inode.iBlock.readUInt32LE(i * 4));
  await indirect(inode.iBlock.readUInt32LE(48), 0, 12);
  await indirect(inode.iBlock.readUInt32LE(52), 1, 12 + perBlock);
  await indirect(inode.iBlock.readUInt32LE(56), 2, 12 + perBlock + perBlock ** 2);
  return runs;
}
