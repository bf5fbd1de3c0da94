/**
 * One TPM data channel: TPM commands in, responses out, one at a time (a TPM runs one command at a time, and
 * swtpm answers in order). Several users share a channel — the VM's own guest, the measured launch, another
 * VM's proxy reading a shared NV index — so `transact` queues.
 */
import { Socket } from 'node:net';
import { HEADER_SIZE } from '../../formats/tpm2/index.ts';

/** swtpm's responses are at most its buffer size (4096); anything far above is a broken peer. */
const MAX_RESPONSE = 65536;

/** Something TPM commands can be sent to: a VM's swtpm. */
export interface TpmEndpoint {
  readonly name: string;
  transact(command: Buffer): Promise<Buffer>;
}

interface Pending {
  command: Buffer;
  resolve(r: Buffer): void;
  reject(e: Error): void;
}

export class TpmChannel implements TpmEndpoint {
  readonly #socket: Socket;
  readonly #queue: Pending[] = [];
  #inFlight: Pending | undefined;
  #buffer: Buffer = Buffer.alloc(0);
  #failed: Error | undefined;

  /** Takes ownership of `fd`, a connected stream socket to swtpm's data side. */
  constructor(
    fd: number,
    readonly name: string,
  ) {
    this.#socket = new Socket({ fd, readable: true, writable: true });
    this.#socket.on('data', (d: Buffer) => this.#data(d));
    this.#socket.on('error', (e) => this.#fail(e));
    this.#socket.on('close', () => this.#fail(new Error(`${name}: TPM channel closed`)));
  }

  transact(command: Buffer): Promise<Buffer> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#queue.push({ command, resolve, reject });
      this.#next();
    });
  }

  #next(): void {
    if (this.#inFlight || this.#failed) return;
    const p = this.#queue.shift();
    if (!p) return;
    this.#inFlight = p;
    this.#socket.write(p.command);
  }

  #data(d: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? d : Buffer.concat([this.#buffer, d]);
    if (!this.#inFlight) return this.#fail(new Error(`${this.name}: ${d.length} unsolicited bytes from the TPM`));
    if (this.#buffer.length < HEADER_SIZE) return;
    const size = this.#buffer.readUInt32BE(2);
    if (size < HEADER_SIZE || size > MAX_RESPONSE) return this.#fail(new Error(`${this.name}: TPM response size ${size}`));
    if (this.#buffer.length < size) return;
    if (this.#buffer.length > size) return this.#fail(new Error(`${this.name}: TPM sent ${this.#buffer.length - size} bytes past its response`));
    const p = this.#inFlight;
    const response = this.#buffer;
    this.#inFlight = undefined;
    this.#buffer = Buffer.alloc(0);
    p.resolve(response);
    this.#next();
  }

  #fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    const all = [...(this.#inFlight ? [this.#inFlight] : []), ...this.#queue.splice(0)];
    this.#inFlight = undefined;
    for (const p of all) p.reject(e);
    this.#socket.destroy();
  }

  close(): void {
    this.#fail(new Error(`${this.name}: TPM channel closed`));
  }
}
