/**
 * Positioned whole-buffer I/O on raw descriptors with the callback fs API (cheaper per call than FileHandle).
 * A short read means the file shrank behind our back: an EIO error, never stale buffer bytes.
 */
import { ioError } from './backend.ts';
import { fdatasync, read, writev } from 'node:fs';

export function readFully(fd: number, into: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      read(fd, into, done, into.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(ioError(`unexpected end of file at ${position + done}`));
        done += n;
        if (done < into.length) step();
        else resolve();
      });
    };
    if (into.length === 0) resolve();
    else step();
  });
}

export function writeFully(fd: number, data: Buffer, position: number): Promise<void> {
  return writevFully(fd, [data], position);
}

/** Writes the buffers back to back from `position`, resuming after short writes. */
export function writevFully(fd: number, buffers: Buffer[], position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let bufs = buffers.filter((b) => b.length > 0);
    let pos = position;
    const step = (): void => {
      if (bufs.length === 0) return resolve();
      writev(fd, bufs, pos, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(ioError('write made no progress'));
        pos += n;
        while (n > 0 && bufs.length > 0) {
          const first = bufs[0]!;
          if (n >= first.length) {
            n -= first.length;
            bufs = bufs.slice(1);
          } else {
            bufs = [first.subarray(n), ...bufs.slice(1)];
            n = 0;
          }
        }
        step();
      });
    };
    step();
  });
}

export function fdatasyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}
