import type { FileHandle } from 'node:fs/promises';

/** Reads exactly `length` bytes at `offset`, or fails naming what was being read. */
export async function readExactly(fh: FileHandle, offset: number, length: number, what: string): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) throw new Error(`${what}: image ends at ${offset + got}, needed ${length} bytes from ${offset}`);
    got += bytesRead;
  }
  return buf;
}
