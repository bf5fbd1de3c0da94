/**
 * A plain raw file served as a block device. Buffered I/O through the page cache (like
 * qemu-nbd's default cache=writeback); durability comes from fdatasync on flush and FUA.
 *
 * Trim is advertised and is a no-op: node cannot punch holes (no fallocate), and the spec
 * makes trim a hint the server may ignore, after which the client must not assume anything
 * about the trimmed bytes. Write-zeroes really writes zeroes, so the range reads back as zero.
 */
import { close, fdatasync, fstat, open, read, write } from 'node:fs';
import { promisify } from 'node:util';
import { ioError, type BlockBackend, type BlockSizes } from './backend.ts';

const openAsync = promisify(open);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(close);
const fdatasyncAsync = promisify(fdatasync);

/** Largest request payload we accept; the spec's recommended floor for servers (2^25). */
export const FILE_MAX_PAYLOAD = 32 * 1024 * 1024;
const ZERO_CHUNK = 1024 * 1024;
let zeroes: Buffer | undefined;

export interface FileBackendOptions {
  readOnly?: boolean;
}

export class FileBackend implements BlockBackend {
  readonly blockSizes: BlockSizes = { min: 1, preferred: 4096, max: FILE_MAX_PAYLOAD };
  readonly canTrim = true;
  readonly canWriteZeroes: boolean;
  #fd: number | undefined;
  #closing = false;
  #running = 0;
  #idle: (() => void) | undefined;

  private constructor(
    fd: number,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
  ) {
    this.#fd = fd;
    this.canWriteZeroes = !readOnly;
  }

  /** Opens an existing regular file; its current length is the export size. */
  static async open(path: string, options: FileBackendOptions = {}): Promise<FileBackend> {
    const readOnly = options.readOnly ?? false;
    const fd = await openAsync(path, readOnly ? 'r' : 'r+');
    try {
      const st = await fstatAsync(fd);
      if (!st.isFile()) throw ioError(`${path} is not a regular file`, 'EINVAL');
      return new FileBackend(fd, path, st.size, readOnly);
    } catch (err) {
      await closeAsync(fd);
      throw err;
    }
  }

  /**
   * Runs one operation on the descriptor. close() waits for running operations, so a closed
   * (and possibly reused) descriptor number is never read or written.
   */
  async #run<T>(writable: boolean, op: (fd: number) => Promise<T>): Promise<T> {
    const fd = this.#fd;
    if (fd === undefined || this.#closing) throw ioError(`${this.path} is closed`, 'EBADF');
    if (writable && this.readOnly) throw ioError(`${this.path} is open read-only`, 'EPERM');
    this.#running++;
    try {
      return await op(fd);
    } finally {
      if (--this.#running === 0) this.#idle?.();
    }
  }

  read(offset: number, length: number, into: Buffer): Promise<void> {
    return this.#run(false, (fd) => readAll(fd, into.subarray(0, length), offset, this.path));
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.#run(true, async (fd) => {
      await writeAll(fd, data, offset);
      if (fua) await fdatasyncAsync(fd);
    });
  }

  flush(): Promise<void> {
    return this.#run(false, (fd) => fdatasyncAsync(fd));
  }

  trim(_offset: number, _length: number, _fua: boolean): Promise<void> {
    return this.#run(true, async () => undefined);
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    return this.#run(true, async (fd) => {
      zeroes ??= Buffer.alloc(ZERO_CHUNK);
      for (let done = 0; done < length; done += ZERO_CHUNK) {
        await writeAll(fd, zeroes.subarray(0, Math.min(ZERO_CHUNK, length - done)), offset + done);
      }
      if (fua) await fdatasyncAsync(fd);
    });
  }

  /** Waits for running operations, then closes the file; later calls fail with EBADF. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#running > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd !== undefined) await closeAsync(fd);
  }
}

/** pread until `into` is full; callback fs avoids FileHandle's per-call overhead. */
function readAll(fd: number, into: Buffer, offset: number, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      read(fd, into, done, into.length - done, offset + done, (err, n) => {
        if (err) return reject(err);
        // Only a file shrunk behind our back ends early; never hand out stale buffer bytes.
        if (n === 0) return reject(ioError(`${path}: unexpected end of file at ${offset + done}`, 'EIO'));
        done += n;
        if (done < into.length) step();
        else resolve();
      });
    };
    if (into.length === 0) resolve();
    else step();
  });
}

function writeAll(fd: number, data: Buffer, offset: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      write(fd, data, done, data.length - done, offset + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(ioError('write made no progress', 'EIO'));
        done += n;
        if (done < data.length) step();
        else resolve();
      });
    };
    if (data.length === 0) resolve();
    else step();
  });
}
