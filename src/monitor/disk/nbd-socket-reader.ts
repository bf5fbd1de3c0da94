/**
 * Exact-length reads over a socket for the handshake phase, where messages are small and
 * arrive one at a time. Received bytes are handed in with push() (the server reads into one
 * reused buffer, see nbd-server.ts), so they are copied here. The transmission phase parses
 * the stream itself (see nbd-transmission.ts) and takes over whatever this reader has
 * buffered via detach().
 */
import type { Socket } from 'node:net';

/** More than any handshake message we read; beyond this the socket is paused. */
const MAX_BUFFERED = 256 * 1024;
const EMPTY = Buffer.alloc(0);

export class PeerClosedError extends Error {
  override readonly name = 'PeerClosedError';
}

interface Waiter {
  /** Bytes to return, or to drop when `skip`. */
  remaining: number;
  skip: boolean;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class SocketReader {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #waiter: Waiter | undefined;
  #ended: Error | undefined;
  readonly #socket: Socket;

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onEnd);
  }

  /** Resolves with exactly `n` bytes; rejects if the peer goes away first. */
  read(n: number): Promise<Buffer> {
    return this.#wait(n, false);
  }

  /** Drops the next `n` bytes without holding them in memory. */
  async skip(n: number): Promise<void> {
    await this.#wait(n, true);
  }

  /** Stops reading and hands over the bytes received but not yet consumed. */
  detach(): Buffer[] {
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('close', this.#onEnd);
    const rest = this.#chunks;
    this.#chunks = [];
    this.#buffered = 0;
    return rest;
  }

  #wait(n: number, skip: boolean): Promise<Buffer> {
    if (this.#waiter) return Promise.reject(new Error('SocketReader: one read at a time'));
    return new Promise<Buffer>((resolve, reject) => {
      this.#waiter = { remaining: n, skip, resolve, reject };
      this.#pump();
      if (this.#waiter) {
        if (this.#ended) this.#fail(this.#ended);
        else this.#socket.resume();
      }
    });
  }

  /** Bytes received; `chunk` may be reused by the caller once this returns. */
  push(chunk: Buffer): void {
    this.#chunks.push(Buffer.from(chunk));
    this.#buffered += chunk.length;
    this.#pump();
    if (this.#buffered > MAX_BUFFERED) this.#socket.pause();
  }

  #onEnd = (): void => {
    this.#ended ??= new PeerClosedError('peer closed the connection');
    this.#fail(this.#ended);
  };

  #fail(err: Error): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.reject(err);
  }

  #pump(): void {
    const w = this.#waiter;
    if (!w) return;
    if (w.skip) {
      const n = Math.min(w.remaining, this.#buffered);
      this.#take(n, false);
      w.remaining -= n;
      if (w.remaining > 0) return;
      this.#waiter = undefined;
      w.resolve(EMPTY);
    } else if (this.#buffered >= w.remaining) {
      this.#waiter = undefined;
      w.resolve(this.#take(w.remaining, true));
    }
  }

  /** Removes the first `n` buffered bytes, returning them when `keep`. */
  #take(n: number, keep: boolean): Buffer {
    const parts: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const head = this.#chunks[0]!;
      if (head.length <= left) {
        this.#chunks.shift();
        if (keep) parts.push(head);
        left -= head.length;
      } else {
        if (keep) parts.push(head.subarray(0, left));
        this.#chunks[0] = head.subarray(left);
        left = 0;
      }
    }
    this.#buffered -= n;
    return keep ? (parts.length === 1 ? parts[0]! : Buffer.concat(parts, n)) : EMPTY;
  }
}
