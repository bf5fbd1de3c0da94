/**
 * Stop-gap ext4 reader for the monitor's disk integrity work: path lookup, directory walk, file
 * contents, and the physical layout of a file (data blocks, extent-tree blocks, the inode's slot in
 * the inode table). Written because src/formats/ext4 had not landed; once it does, the scan and the
 * protection map should move onto it and this file should go. Extent-mapped inodes only (what
 * mke2fs and the kernel create on ext4); block-mapped and inline-data files are reported unsupported.
 */
export type ReadAt = (offset: number, length: number) => Promise<Uint8Array>;

export class Ext4Error extends Error {
  override name = 'Ext4Error';
}

const EXT4_MAGIC = 0xef53;
const EXTENT_MAGIC = 0xf30a;
const INCOMPAT_64BIT = 0x80;
const INODE_FLAG_EXTENTS = 0x80000;
const INODE_FLAG_INLINE = 0x10000000;
const ROOT_INODE = 2;
const MAX_EXTENT_DEPTH = 5;
const MAX_PATH_DEPTH = 256;
const READ_CHUNK = 4 << 20;
export const S_IFMT = 0xf000;
export const S_IFDIR = 0x4000;
export const S_IFREG = 0x8000;
export const S_IFLNK = 0xa000;

export interface Ext4Extent {
  /** First file block. */
  logical: number;
  /** First disk block. */
  physical: number;
  blocks: number;
  /** Allocated but never written: reads as zeros. */
  uninitialized: boolean;
}

export interface Ext4Inode {
  ino: number;
  mode: number;
  size: number;
  flags: number;
  /** Byte offset of the inode on the volume (its slot in the inode table). */
  location: number;
  iBlock: Uint8Array;
}

export interface Ext4Entry {
  path: string;
  ino: number;
  mode: number;
  size: number;
  unsupported?: string;
}

export class Ext4Map {
  private constructor(
    private readonly read: ReadAt,
    readonly blockSize: number,
    readonly blocksCount: number,
    private readonly inodesPerGroup: number,
    private readonly inodesCount: number,
    private readonly inodeSize: number,
    private readonly inodeTables: number[],
  ) {}

  static async open(read: ReadAt): Promise<Ext4Map> {
    const sb = await readExact(read, 1024, 1024);
    const v = view(sb);
    if (v.getUint16(0x38, true) !== EXT4_MAGIC) throw new Ext4Error('not ext2/3/4: no 0xEF53 magic');
    const logBs = v.getUint32(0x18, true);
    if (logBs > 6) throw new Ext4Error(`block size 1024<<${logBs} is too large`);
    const bs = 1024 << logBs;
    const incompat = v.getUint32(0x60, true);
    const blocksCount = v.getUint32(4, true) + (incompat & INCOMPAT_64BIT ? v.getUint32(0x150, true) * 2 ** 32 : 0);
    const bpg = v.getUint32(0x20, true);
    const ipg = v.getUint32(0x28, true);
    const inodesCount = v.getUint32(0, true);
    const inodeSize = v.getUint32(0x4c, true) === 0 ? 128 : v.getUint16(0x58, true);
    if (bpg === 0 || ipg === 0 || inodeSize < 128 || inodeSize > bs || (inodeSize & (inodeSize - 1)) !== 0) throw new Ext4Error('superblock geometry is invalid');
    const groups = Math.ceil((blocksCount - v.getUint32(0x14, true)) / bpg);
    if (groups < 1 || groups > 1 << 20 || groups * ipg < inodesCount) throw new Ext4Error(`${groups} block groups is out of range`);
    const descSize = incompat & INCOMPAT_64BIT ? v.getUint16(0xfe, true) : 32;
    if (descSize < 32 || descSize > 1024) throw new Ext4Error(`group descriptor size ${descSize} is invalid`);
    const gdt = await readExact(read, (v.getUint32(0x14, true) + 1) * bs, groups * descSize);
    const gv = view(gdt);
    const tables: number[] = [];
    for (let g = 0; g < groups; g++) {
      const lo = gv.getUint32(g * descSize + 8, true);
      const hi = descSize >= 64 ? gv.getUint32(g * descSize + 0x28, true) : 0;
      tables.push(lo + hi * 2 ** 32);
    }
    return new Ext4Map(read, bs, blocksCount, ipg, inodesCount, inodeSize, tables);
  }

  async inode(ino: number): Promise<Ext4Inode> {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.inodesCount) throw new Ext4Error(`inode ${ino} is out of range`);
    const table = this.inodeTables[Math.floor((ino - 1) / this.inodesPerGroup)]!;
    const location = table * this.blockSize + ((ino - 1) % this.inodesPerGroup) * this.inodeSize;
    const b = await readExact(this.read, location, 128);
    const v = view(b);
    return {
      ino,
      mode: v.getUint16(0, true),
      size: v.getUint32(4, true) + v.getUint32(0x6c, true) * 2 ** 32,
      flags: v.getUint32(0x20, true),
      location,
      iBlock: b.slice(0x28, 0x28 + 60),
    };
  }

  /** The file's extents, and the disk blocks of the extent tree's index and leaf nodes. */
  async extents(inode: Ext4Inode): Promise<{ extents: Ext4Extent[]; treeBlocks: number[] }> {
    if (inode.flags & INODE_FLAG_INLINE) throw new Ext4Error(`inode ${inode.ino}: inline data is unsupported`);
    if (!(inode.flags & INODE_FLAG_EXTENTS)) throw new Ext4Error(`inode ${inode.ino}: block-mapped (non-extent) files are unsupported`);
    const extents: Ext4Extent[] = [];
    const treeBlocks: number[] = [];
    const walk = async (node: Uint8Array, depth: number): Promise<void> => {
      const v = view(node);
      if (v.getUint16(0, true) !== EXTENT_MAGIC) throw new Ext4Error(`inode ${inode.ino}: bad extent header`);
      const entries = v.getUint16(2, true);
      const d = v.getUint16(6, true);
      if (d !== depth || depth > MAX_EXTENT_DEPTH || 12 + entries * 12 > node.length) throw new Ext4Error(`inode ${inode.ino}: malformed extent node`);
      for (let i = 0; i < entries; i++) {
        const at = 12 + i * 12;
        if (depth === 0) {
          let len = v.getUint16(at + 4, true);
          const uninitialized = len > 32768;
          if (uninitialized) len -= 32768;
          const physical = v.getUint16(at + 6, true) * 2 ** 32 + v.getUint32(at + 8, true);
          if (physical + len > this.blocksCount) throw new Ext4Error(`inode ${inode.ino}: extent outside the volume`);
          extents.push({ logical: v.getUint32(at, true), physical, blocks: len, uninitialized });
        } else {
          const leaf = v.getUint32(at + 4, true) + v.getUint16(at + 8, true) * 2 ** 32;
          if (leaf >= this.blocksCount || treeBlocks.length > 1 << 16) throw new Ext4Error(`inode ${inode.ino}: extent index outside the volume`);
          treeBlocks.push(leaf);
          await walk(await readExact(this.read, leaf * this.blockSize, this.blockSize), depth - 1);
        }
      }
    };
    await walk(inode.iBlock, view(inode.iBlock).getUint16(6, true));
    extents.sort((a, b) => a.logical - b.logical);
    return { extents, treeBlocks };
  }

  /** File contents in chunks; holes and uninitialized extents read as zeros. */
  async *chunks(inode: Ext4Inode): AsyncGenerator<Uint8Array> {
    const { extents } = await this.extents(inode);
    const bs = this.blockSize;
    for (let at = 0; at < inode.size; at += READ_CHUNK) {
      const n = Math.min(READ_CHUNK, inode.size - at);
      const out = new Uint8Array(n);
      for (const e of extents) {
        const s = Math.max(at, e.logical * bs);
        const end = Math.min(at + n, (e.logical + e.blocks) * bs);
        if (s >= end || e.uninitialized) continue;
        out.set(await readExact(this.read, e.physical * bs + (s - e.logical * bs), end - s), s - at);
      }
      yield out;
    }
  }

  async readDir(inode: Ext4Inode): Promise<Array<{ name: string; ino: number }>> {
    if ((inode.mode & S_IFMT) !== S_IFDIR) throw new Ext4Error(`inode ${inode.ino} is not a directory`);
    if (inode.size > 64 << 20) throw new Ext4Error(`directory inode ${inode.ino} is over 64 MiB`);
    const parts: Uint8Array[] = [];
    for await (const c of this.chunks(inode)) parts.push(c);
    const b = Buffer.concat(parts);
    const out: Array<{ name: string; ino: number }> = [];
    // Hashed (htree) directories keep their index in entries of inode 0, so a linear pass sees all names.
    for (let blk = 0; blk < b.length; blk += this.blockSize) {
      let at = blk;
      while (at + 8 <= blk + this.blockSize) {
        const ino = b.readUInt32LE(at);
        const recLen = b.readUInt16LE(at + 4);
        const nameLen = b[at + 6]!;
        if (recLen < 8 || at + recLen > blk + this.blockSize || 8 + nameLen > recLen) break;
        const name = b.toString('utf8', at + 8, at + 8 + nameLen);
        if (ino !== 0 && name !== '.' && name !== '..') out.push({ name, ino });
        at += recLen;
      }
    }
    return out;
  }

  /** Resolves a path without following symlinks (lstat semantics). */
  async lookup(path: string): Promise<Ext4Inode> {
    let cur = await this.inode(ROOT_INODE);
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.length > MAX_PATH_DEPTH) throw new Ext4Error(`path ${path} is too deep`);
    for (const p of parts) {
      const e = (await this.readDir(cur)).find((x) => x.name === p);
      if (!e) throw new Ext4Error(`${path}: no such file or directory`);
      cur = await this.inode(e.ino);
    }
    return cur;
  }

  /** Every entry under `root` (default "/"), depth first, in name order. */
  async *walk(root = '/'): AsyncGenerator<Ext4Entry> {
    const start = await this.lookup(root);
    const seen = new Set<number>([start.ino]);
    const visit = async function* (self: Ext4Map, dir: Ext4Inode, prefix: string, depth: number): AsyncGenerator<Ext4Entry> {
      if (depth > MAX_PATH_DEPTH) throw new Ext4Error(`directory tree deeper than ${MAX_PATH_DEPTH} at ${prefix}`);
      const list = (await self.readDir(dir)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const c of list) {
        const ino = await self.inode(c.ino);
        const path = `${prefix}/${c.name}`;
        const e: Ext4Entry = { path, ino: c.ino, mode: ino.mode, size: ino.size };
        const type = ino.mode & S_IFMT;
        if (type === S_IFREG && ino.flags & INODE_FLAG_INLINE) e.unsupported = 'inline data';
        else if (type === S_IFREG && !(ino.flags & INODE_FLAG_EXTENTS)) e.unsupported = 'block-mapped file';
        yield e;
        if (type === S_IFDIR && !seen.has(c.ino)) {
          seen.add(c.ino);
          yield* visit(self, ino, path, depth + 1);
        }
      }
    };
    yield* visit(this, start, root === '/' ? '' : root.replace(/\/+$/, ''), 0);
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

async function readExact(read: ReadAt, offset: number, length: number): Promise<Uint8Array> {
  const b = await read(offset, length);
  if (b.length !== length) throw new Ext4Error(`short read (${b.length} of ${length} bytes at ${offset})`);
  return b;
}
