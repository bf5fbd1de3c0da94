/**
 * What an NBD export serves: the plain file, the XTS-only and the sealed (XTS + integrity tree)
 * backends, and the write-protecting wrapper, all implement this contract.
 * Offsets and lengths reach a backend only after the server has checked them against
 * `size` and `blockSize`, so a backend may assume they are in range and aligned.
 */
export interface BlockSizes {
  /** Smallest unit a client may address; 1 for a plain file, 4096 for an encrypted disk. */
  min: number;
  preferred: number;
  /** Largest single request payload the server accepts. */
  max: number;
}

export interface BlockBackend {
  readonly size: number;
  readonly blockSizes: BlockSizes;
  readonly readOnly: boolean;
  /** Whether trim and write-zeroes are supported (advertised as NBD flags). */
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  /** Reads exactly `length` bytes at `offset` into `into` (which has room for them). */
  read(offset: number, length: number, into: Buffer): Promise<void>;
  /** `fua`: the data is durable before the promise resolves. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  close(): Promise<void>;
}

/** An error the NBD server maps to an errno reply by its `code` (EIO unless said otherwise). */
export function ioError(message: string, code = 'EIO'): Error {
  return Object.assign(new Error(message), { code });
}
