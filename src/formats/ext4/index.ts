export { Ext4, ROOT_INO, type WalkEntry, type WalkOptions } from './filesystem.ts';
export { Ext4Error, type ReadAt } from './errors.ts';
export { INODE_FLAG, isDir, isRegular, isSymlink, S_IFMT, type BlockRun, type Inode } from './inode.ts';
export type { DirEntry } from './directory.ts';
export type { Superblock } from './superblock.ts';
