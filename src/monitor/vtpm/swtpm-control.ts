/**
 * The monitor's end of one swtpm's control channel: requests go out one at a time and each waits for the
 * fixed-size response its command has (swtpm-ctrl.ts).
 */
import { closeFd } from '../unix/fd-passing.ts';
import { NativeSocket } from './native-socket.ts';
import { SerialRequests } from './serial-requests.ts';
import { ctrlCommand } from './swtpm-ctrl.ts';

interface ControlRequest {
  message: Buffer;
  fds: number[];
  responseSize: number;
}

export class SwtpmControl {
  readonly #socket: NativeSocket;
  readonly #requests: SerialRequests<ControlRequest>;
  #buffer: Buffer = Buffer.alloc(0);

  /** Takes ownership of `fd`, connected to swtpm's --ctrl. */
  constructor(fd: number) {
    this.#requests = new SerialRequests({ send: (r) => this.#socket.send(r.message, r.fds), close: () => this.#socket.close() });
    this.#socket = new NativeSocket(fd, {
      onData: (data, fds) => {
        // swtpm never sends descriptors; any that come are closed rather than leaked.
        for (const f of fds) closeFd(f);
        this.#data(data);
      },
      onClose: (reason) => this.#requests.fail(new Error(`swtpm control channel: ${reason}`)),
    });
  }

  /** Sends command `code` with its request bytes (and fds), resolves with the `responseSize`-byte response. */
  request(code: number, request: Uint8Array, responseSize: number, fds: number[] = []): Promise<Buffer> {
    return this.#requests.submit({ message: ctrlCommand(code, request), fds, responseSize });
  }

  #data(d: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, d]);
    const p = this.#requests.inFlight;
    if (!p) return this.#requests.fail(new Error('swtpm control channel: unsolicited bytes'));
    if (this.#buffer.length < p.responseSize) return;
    if (this.#buffer.length > p.responseSize) return this.#requests.fail(new Error(`swtpm control channel: ${this.#buffer.length} bytes for a ${p.responseSize}-byte response`));
    const r = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    this.#requests.complete(r);
  }

  get failed(): boolean {
    return this.#requests.failed !== undefined;
  }

  close(): void {
    this.#requests.fail(new Error('swtpm control channel closed'));
  }
}
