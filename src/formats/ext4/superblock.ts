// ext4 superblock (1024 bytes at byte 1024) and group descriptors, per the kernel's
// Documentation/filesystems/ext4 (ondisk/super, ondisk/group_descr). Little-endian throughout.
import { Ext4Error } from './errors.ts';

export const EXT4_MAGIC = 0xef53;
export const SUPERBLOCK_OFFSET = 1024;

export const INCOMPAT = {
  COMPRESSION: 0x1,
  FILETYPE: 0x2,
  RECOVER: 0x4,
  JOURNAL_DEV: 0x8,
  META_BG: 0x10,
  EXTENTS: 0x40,
  BIT64: 0x80,
  MMP: 0x100,
  FLEX_BG: 0x200,
  EA_INODE: 0x400,
  DIRDATA: 0x1000,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;

// What this reader understands. RECOVER (a journal to replay) is read as is: the last checkpointed
// state, which is what an offline reader sees; callers that need more run e2fsck first.
const SUPPORTED_INCOMPAT = INCOMPAT.FILETYPE | INCOMPAT.RECOVER | INCOMPAT.EXTENTS | INCOMPAT.BIT64 | INCOMPAT.MMP
  | INCOMPAT.FLEX_BG | INCOMPAT.EA_INODE | INCOMPAT.CSUM_SEED | INCOMPAT.LARGEDIR | INCOMPAT.META_BG;

export interface Superblock {
  inodesCount: number;
  blocksCount: number;
  firstDataBlock: number;
  blockSize: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  revLevel: number;
  featureCompat: number;
  featureIncompat: number;
  featureRoCompat: number;
  descSize: number;
  firstMetaBg: number;
  groupCount: number;
  uuid: string;
  volumeName: string;
}

export function parseSuperblock(b: Uint8Array): Superblock {
  if (b.length < 1024) throw new Ext4Error('superblock truncated');
  const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (v.readUInt16LE(56) !== EXT4_MAGIC) throw new Ext4Error('not an ext2/3/4 file system (bad superblock magic)');
  const logBlock = v.readUInt32LE(24);
  if (logBlock > 6) throw new Ext4Error(`block size 2^${10 + logBlock} out of range`);
  const blockSize = 1024 << logBlock;
  const revLevel = v.readUInt32LE(76);
  const featureIncompat = revLevel >= 1 ? v.readUInt32LE(96) : 0;
  const unsupported = featureIncompat & ~SUPPORTED_INCOMPAT;
  if (unsupported) {
    const names = Object.entries(INCOMPAT).filter(([, bit]) => unsupported & bit).map(([n]) => n);
    throw new Ext4Error(`unsupported incompatible features: ${names.join(', ') || `0x${unsupported.toString(16)}`}`);
  }
  const is64 = (featureIncompat & INCOMPAT.BIT64) !== 0;
  const blocksCount = v.readUInt32LE(4) + (is64 ? v.readUInt32LE(0x150) * 2 ** 32 : 0);
  const blocksPerGroup = v.readUInt32LE(32);
  const inodesPerGroup = v.readUInt32LE(40);
  const inodesCount = v.readUInt32LE(0);
  const firstDataBlock = v.readUInt32LE(20);
  const inodeSize = revLevel >= 1 ? v.readUInt16LE(88) : 128;
  const descSize = is64 ? v.readUInt16LE(254) : 32;
  if (blocksPerGroup === 0 || blocksPerGroup > blockSize * 8) throw new Ext4Error(`blocks per group ${blocksPerGroup} invalid`);
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw new Ext4Error(`inodes per group ${inodesPerGroup} invalid`);
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) throw new Ext4Error(`inode size ${inodeSize} invalid`);
  if (is64 && (descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0)) throw new Ext4Error(`descriptor size ${descSize} invalid`);
  if (blocksCount <= firstDataBlock) throw new Ext4Error('block count smaller than the first data block');
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (inodesCount > groupCount * inodesPerGroup) throw new Ext4Error('inode count exceeds the groups');
  const uuid = v.subarray(104, 120).toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
  const nameEnd = v.subarray(120, 136).indexOf(0);
  return {
    inodesCount, blocksCount, firstDataBlock, blockSize, blocksPerGroup, inodesPerGroup, inodeSize, revLevel,
    featureCompat: v.readUInt32LE(92), featureIncompat, featureRoCompat: revLevel >= 1 ? v.readUInt32LE(100) : 0,
    descSize, firstMetaBg: v.readUInt32LE(260), groupCount, uuid,
    volumeName: v.subarray(120, nameEnd < 0 ? 136 : 120 + nameEnd).toString('utf8'),
  };
}

/** Byte offset of group `g`'s descriptor (classic layout or META_BG). */
export function groupDescriptorOffset(sb: Superblock, g: number): number {
  const perBlock = sb.blockSize / sb.descSize;
  const gdtStart = sb.firstDataBlock + 1;
  if ((sb.featureIncompat & INCOMPAT.META_BG) === 0 || Math.floor(g / perBlock) < sb.firstMetaBg) {
    return gdtStart * sb.blockSize + g * sb.descSize;
  }
  // META_BG: each meta group's descriptors live in the first block of that meta group (+1 if it holds a superblock backup).
  const metaGroup = Math.floor(g / perBlock);
  const firstGroup = metaGroup * perBlock;
  const block = sb.firstDataBlock + firstGroup * sb.blocksPerGroup + (hasSuperblockBackup(sb, firstGroup) ? 1 : 0);
  return block * sb.blockSize + (g % perBlock) * sb.descSize;
}

function hasSuperblockBackup(sb: Superblock, g: number): boolean {
  const SPARSE_SUPER = 0x1;
  if (g <= 1 || (sb.featureRoCompat & SPARSE_SUPER) === 0) return true;
  for (const p of [3, 5, 7]) {
    let n = p;
    while (n < g) n *= p;
    if (n === g) return true;
  }
  return false;
}

/** The inode table block of a group, from its descriptor bytes. */
export function inodeTableBlock(sb: Superblock, desc: Uint8Array): number {
  const v = Buffer.from(desc.buffer, desc.byteOffset, desc.byteLength);
  const lo = v.readUInt32LE(8);
  const hi = sb.descSize >= 64 ? v.readUInt32LE(0x28) : 0;
  const block = lo + hi * 2 ** 32;
  if (block === 0 || block >= sb.blocksCount) throw new Ext4Error(`inode table block ${block} outside the file system`);
  return block;
}
