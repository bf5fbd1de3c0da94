/** A malformed, hostile or unsupported ext2/3/4 file system. */
export class Ext4Error extends Error {
  override readonly name = 'Ext4Error';
}

/** Reads `length` bytes at byte `offset` of the file system (a partition, an image, a decrypted disk). */
export type ReadAt = (offset: number, length: number) => Promise<Uint8Array>;
