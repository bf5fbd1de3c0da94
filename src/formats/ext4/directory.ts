// Linear directory blocks (ondisk/directory): entries of inode u32, rec_len u16, name_len u8,
// file_type u8 (name_len u16 without the FILETYPE feature), name. Hash-tree (htree) directories are
// read the same way: their index blocks look like one empty entry spanning the block.
import { Ext4Error } from './errors.ts';

export interface DirEntry {
  ino: number;
  name: string;
  /** 1 file, 2 dir, 3 chr, 4 blk, 5 fifo, 6 sock, 7 symlink; 0 unknown. */
  fileType: number;
}

export function parseDirBlock(block: Buffer, blockSize: number, hasFileType: boolean, inodesCount: number, out: DirEntry[]): void {
  let off = 0;
  while (off < block.length) {
    if (block.length - off < 8) throw new Ext4Error('directory entry header truncated');
    const ino = block.readUInt32LE(off);
    let recLen = block.readUInt16LE(off + 4);
    if (blockSize === 65536 && (recLen === 65535 || recLen === 0)) recLen = 65536;
    const nameLen = hasFileType ? block[off + 6] as number : block.readUInt16LE(off + 6);
    if (recLen < 8 || recLen % 4 !== 0 || recLen > block.length - off) throw new Ext4Error(`directory record length ${recLen} invalid at ${off}`);
    if (ino !== 0) {
      if (8 + nameLen > recLen) throw new Ext4Error(`directory name overruns its record at ${off}`);
      if (ino > inodesCount) throw new Ext4Error(`directory entry points at inode ${ino}, beyond the inode count`);
      const name = block.subarray(off + 8, off + 8 + nameLen).toString('utf8');
      if (nameLen === 0 || name.includes('/')) throw new Ext4Error(`directory entry name ${JSON.stringify(name)} invalid`);
      out.push({ ino, name, fileType: hasFileType ? block[off + 7] as number : 0 });
    }
    off += recLen;
  }
}
