// A read-only ext2/3/4 reader over a ReadAt function: path lookup, file contents (streamed), symlinks,
// and a recursive walk. Every pointer is bounds-checked and every traversal bounded (extent depth,
// visited-block sets, symlink hops, directory loops), so a hostile image yields Ext4Error, not a hang.
import { Ext4Error, type ReadAt } from './errors.ts';
import { parseDirBlock, type DirEntry } from './directory.ts';
import { blockRuns, INODE_FLAG, isDir, isSymlink, MAX_LOGICAL_BLOCKS, parseInode, type BlockRun, type BlockSource, type Inode } from './inode.ts';
import { groupDescriptorOffset, INCOMPAT, inodeTableBlock, parseSuperblock, SUPERBLOCK_OFFSET, type Superblock } from './superblock.ts';

export const ROOT_INO = 2;
const MAX_SYMLINK_HOPS = 40; // the kernel's MAXSYMLINKS
const MAX_DIR_BYTES = 256 * 1024 * 1024;
// Blocks per read while streaming a file: large reads keep per-call overhead small next to hashing.
const CHUNK_BLOCKS = 1024;

export interface WalkEntry {
  path: string;
  inode: Inode;
}

export interface WalkOptions {
  /** Stop with an error after this many entries (default 10 million). */
  maxEntries?: number;
  maxDepth?: number;
}

export class Ext4 {
  private readonly blocks: BlockSource;

  private constructor(private readonly read: ReadAt, readonly sb: Superblock) {
    this.blocks = { blockSize: sb.blockSize, blocksCount: sb.blocksCount, readBlock: (b) => this.readBlocks(b, 1) };
  }

  static async open(read: ReadAt): Promise<Ext4> {
    const sb = parseSuperblock(await readExact(read, SUPERBLOCK_OFFSET, 1024));
    return new Ext4(read, sb);
  }

  private async readBlocks(block: number, count: number): Promise<Buffer> {
    if (block + count > this.sb.blocksCount) throw new Ext4Error(`block ${block}+${count} outside the file system`);
    return readExact(this.read, block * this.sb.blockSize, count * this.sb.blockSize);
  }

  /** Byte offset of inode `ino`'s slot in its group's inode table (`sb.inodeSize` bytes long). */
  async inodeLocation(ino: number): Promise<number> {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.sb.inodesCount) throw new Ext4Error(`inode ${ino} out of range`);
    const group = Math.floor((ino - 1) / this.sb.inodesPerGroup);
    const index = (ino - 1) % this.sb.inodesPerGroup;
    const desc = await readExact(this.read, groupDescriptorOffset(this.sb, group), this.sb.descSize);
    const table = inodeTableBlock(this.sb, desc);
    const off = table * this.sb.blockSize + index * this.sb.inodeSize;
    if (off + this.sb.inodeSize > this.sb.blocksCount * this.sb.blockSize) throw new Ext4Error(`inode ${ino} outside the file system`);
    return off;
  }

  async inode(ino: number): Promise<Inode> {
    return parseInode(ino, await readExact(this.read, await this.inodeLocation(ino), this.sb.inodeSize));
  }

  /** The block runs of an inode's data (for write protection and scanning). */
  runs(inode: Inode): Promise<BlockRun[]> {
    return blockRuns(inode, this.blocks);
  }

  /**
   * The blocks that hold the inode's block mapping rather than its data: extent-tree index and leaf
   * nodes, or ext2/3 indirect blocks; sorted. Empty when the whole map fits in the inode.
   */
  async mapBlocks(inode: Inode): Promise<number[]> {
    const out: number[] = [];
    await blockRuns(inode, this.blocks, out);
    return out;
  }

  /**
   * Streams a file's bytes in order, holes as zeros, exactly `inode.size` bytes. The next read is
   * issued before a chunk is yielded, so it runs while the consumer (typically hashing) works on the
   * current one.
   */
  async *contents(inode: Inode): AsyncGenerator<Buffer> {
    const bs = this.sb.blockSize;
    if (inode.size > MAX_LOGICAL_BLOCKS * bs) throw new Ext4Error(`inode ${inode.ino}: size ${inode.size} beyond the ext4 maximum`);
    const runs = await this.runs(inode);
    const chunks = chunkPlan(runs, bs, inode.size);
    const fetch = (c: Chunk): Promise<Buffer> => {
      if (c.block === null) return Promise.resolve(Buffer.alloc(c.bytes));
      const p = this.readBlocks(c.block, Math.ceil(c.bytes / bs)).then((d) => (d.length === c.bytes ? d : d.subarray(0, c.bytes)));
      // Awaited below; this only keeps a prefetch the consumer never asks for from being unhandled.
      p.catch(() => undefined);
      return p;
    };
    let next = chunks.next();
    let pending = next.done ? null : fetch(next.value);
    while (pending) {
      const current = pending;
      next = chunks.next();
      pending = next.done ? null : fetch(next.value);
      yield await current;
    }
  }

  /** A whole file; refuses files larger than `maxBytes` (default 256 MiB) before reading. */
  async readFile(inode: Inode, maxBytes = 256 * 1024 * 1024): Promise<Buffer> {
    if (inode.size > maxBytes) throw new Ext4Error(`inode ${inode.ino} is ${inode.size} bytes, over the ${maxBytes}-byte limit`);
    const parts: Buffer[] = [];
    for await (const c of this.contents(inode)) parts.push(c);
    return Buffer.concat(parts);
  }

  async readlink(inode: Inode): Promise<string> {
    if (!isSymlink(inode)) throw new Ext4Error(`inode ${inode.ino} is not a symlink`);
    if (inode.size > 4096) throw new Ext4Error(`symlink ${inode.ino} target too long`);
    // Fast symlinks keep the target in i_block (ext4_inode_is_fast_symlink).
    if (inode.size < 60 && !(inode.flags & (INODE_FLAG.EXTENTS | INODE_FLAG.INLINE_DATA))) return inode.iBlock.subarray(0, inode.size).toString('utf8');
    return (await this.readFile(inode, 4096)).toString('utf8');
  }

  async readdir(inode: Inode): Promise<DirEntry[]> {
    if (!isDir(inode)) throw new Ext4Error(`inode ${inode.ino} is not a directory`);
    if (inode.size > MAX_DIR_BYTES) throw new Ext4Error(`directory ${inode.ino} is ${inode.size} bytes`);
    const bs = this.sb.blockSize;
    const hasType = (this.sb.featureIncompat & INCOMPAT.FILETYPE) !== 0;
    const out: DirEntry[] = [];
    for (const r of await this.runs(inode)) {
      for (let i = 0; i < r.length && (r.logical + i) * bs < inode.size; i++) {
        parseDirBlock(await this.readBlocks(r.physical + i, 1), bs, hasType, this.sb.inodesCount, out);
      }
    }
    return out;
  }

  /** Resolves an absolute path; symlinks in the middle are followed, the last one only if `follow`. */
  async lookup(path: string, follow = false): Promise<Inode> {
    if (!path.startsWith('/')) throw new Ext4Error(`path ${JSON.stringify(path)} is not absolute`);
    let hops = 0;
    const resolve = async (start: Inode, parts: string[], stack: Inode[]): Promise<Inode> => {
      let cur = start;
      const dirs = [...stack];
      for (let i = 0; i < parts.length; i++) {
        const name = parts[i] as string;
        if (name === '' || name === '.') continue;
        if (name === '..') {
          cur = dirs.pop() ?? (await this.inode(ROOT_INO));
          continue;
        }
        const entry = (await this.readdir(cur)).find((e) => e.name === name);
        if (!entry) throw new Ext4Error(`${path}: ${name} not found`);
        const next = await this.inode(entry.ino);
        const last = i === parts.length - 1;
        if (isSymlink(next) && (!last || follow)) {
          if (++hops > MAX_SYMLINK_HOPS) throw new Ext4Error(`${path}: too many levels of symbolic links`);
          const target = await this.readlink(next);
          const root = await this.inode(ROOT_INO);
          const rest = parts.slice(i + 1);
          return target.startsWith('/') ? resolve(root, [...target.split('/'), ...rest], []) : resolve(cur, [...target.split('/'), ...rest], dirs);
        }
        if (!last && !isDir(next)) throw new Ext4Error(`${path}: ${name} is not a directory`);
        dirs.push(cur);
        cur = next;
      }
      return cur;
    };
    return resolve(await this.inode(ROOT_INO), path.split('/'), []);
  }

  /** Every entry below `path` (depth first, sorted by name), without following symlinks. */
  async *walk(path = '/', opts: WalkOptions = {}): AsyncGenerator<WalkEntry> {
    const maxEntries = opts.maxEntries ?? 10_000_000;
    const maxDepth = opts.maxDepth ?? 4096;
    const start = await this.lookup(path);
    const onPath = new Set<number>();
    let count = 0;
    const self = this;
    async function* visit(dir: Inode, prefix: string, depth: number): AsyncGenerator<WalkEntry> {
      if (depth > maxDepth) throw new Ext4Error(`${prefix}: deeper than ${maxDepth} levels`);
      if (onPath.has(dir.ino)) throw new Ext4Error(`${prefix}: directory loop (inode ${dir.ino})`);
      onPath.add(dir.ino);
      const entries = (await self.readdir(dir)).filter((e) => e.name !== '.' && e.name !== '..').sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const e of entries) {
        if (++count > maxEntries) throw new Ext4Error(`more than ${maxEntries} entries`);
        const inode = await self.inode(e.ino);
        const p = `${prefix === '/' ? '' : prefix}/${e.name}`;
        yield { path: p, inode };
        if (isDir(inode)) yield* visit(inode, p, depth + 1);
      }
      onPath.delete(dir.ino);
    }
    yield* visit(start, path === '/' ? '/' : path.replace(/\/+$/, ''), 0);
  }
}

/** One read of a file's stream: `bytes` from `block` on, or zeros for a hole (block null). */
interface Chunk {
  block: number | null;
  bytes: number;
}

function* chunkPlan(runs: readonly BlockRun[], bs: number, size: number): Generator<Chunk> {
  let pos = 0; // bytes planned
  const zerosTo = function* (upto: number): Generator<Chunk> {
    while (pos < upto) {
      const n = Math.min(upto - pos, CHUNK_BLOCKS * bs);
      pos += n;
      yield { block: null, bytes: n };
    }
  };
  for (const r of runs) {
    const start = r.logical * bs;
    if (start >= size) break;
    yield* zerosTo(start);
    for (let done = 0; done < r.length && pos < size; done += CHUNK_BLOCKS) {
      const bytes = Math.min(Math.min(CHUNK_BLOCKS, r.length - done) * bs, size - pos);
      pos += bytes;
      yield { block: r.physical + done, bytes };
    }
  }
  yield* zerosTo(size);
}

async function readExact(read: ReadAt, offset: number, length: number): Promise<Buffer> {
  const b = await read(offset, length);
  if (b.length !== length) throw new Ext4Error(`short read at ${offset} (${b.length} of ${length} bytes)`);
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}
