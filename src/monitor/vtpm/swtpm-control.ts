/**
 * The monitor's end of one swtpm's control channel: requests go out one at a time and each waits for the
 * fixed-size response its command has (swtpm-ctrl.ts).
 */
import { closeFd } from './fd-passing.ts';
import { NativeSocket } from './native-socket.ts';
import { ctrlCommand } from './swtpm-ctrl.ts';

interface Pending {
  message: Buffer;
  fds: number[];
  responseSize: number;
  resolve(r: Buffer): void;
  reject(e: Error): void;
}

export class SwtpmControl {
  readonly #socket: NativeSocket;
  readonly #queue: Pending[] = [];
  #inFlight: Pending | undefined;
  #buffer: Buffer = Buffer.alloc(0);
  #failed: Error | undefined;

  /** Takes ownership of `fd`, connected to swtpm's --ctrl. */
  constructor(fd: number) {
    this.#socket = new NativeSocket(fd, {
      onData: (data, fds) => {
        // swtpm never sends descriptors; any that come are closed rather than leaked.
        for (const f of fds) closeFd(f);
        this.#data(data);
      },
      onClose: (reason) => this.#fail(new Error(`swtpm control channel: ${reason}`)),
    });
  }

  /** Sends command `code` with its request bytes (and fds), resolves with the `responseSize`-byte response. */
  request(code: number, request: Uint8Array, responseSize: number, fds: number[] = []): Promise<Buffer> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#queue.push({ message: ctrlCommand(code, request), fds, responseSize, resolve, reject });
      this.#next();
    });
  }

  #next(): void {
    if (this.#inFlight || this.#failed) return;
    const p = this.#queue.shift();
    if (!p) return;
    this.#inFlight = p;
    try {
      this.#socket.send(p.message, p.fds);
    } catch (err) {
      this.#fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #data(d: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, d]);
    const p = this.#inFlight;
    if (!p) return this.#fail(new Error('swtpm control channel: unsolicited bytes'));
    if (this.#buffer.length < p.responseSize) return;
    if (this.#buffer.length > p.responseSize) return this.#fail(new Error(`swtpm control channel: ${this.#buffer.length} bytes for a ${p.responseSize}-byte response`));
    const r = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    this.#inFlight = undefined;
    p.resolve(r);
    this.#next();
  }

  #fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    const all = [...(this.#inFlight ? [this.#inFlight] : []), ...this.#queue.splice(0)];
    this.#inFlight = undefined;
    for (const p of all) p.reject(e);
    this.#socket.close();
  }

  get failed(): boolean {
    return this.#failed !== undefined;
  }

  close(): void {
    this.#fail(new Error('swtpm control channel closed'));
  }
}
