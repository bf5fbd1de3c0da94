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
  /** Sent inside an exclusive section. */
  exclusive: boolean;
  resolve(r: Buffer): void;
  reject(e: Error): void;
}

export class TpmChannel implements TpmEndpoint {
  readonly #socket: Socket;
  readonly #queue: Pending[] = [];
  #inFlight: Pending | undefined;
  #buffer: Buffer = Buffer.alloc(0);
  #failed: Error | undefined;
  #exclusive = false;
  #exclusiveTail: Promise<void> = Promise.resolve();

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
    return this.#enqueue(command, false);
  }

  /**
   * Runs `fn` with the channel to itself: commands sent through the endpoint `fn` gets run back to back,
   * and everyone else's (the guest's) wait until `fn` settles. The monitor's attestation uses it so that no
   * guest command lands between its PCR_Read and Quote, or touches its transient AK handle.
   */
  async exclusive<T>(fn: (tpm: TpmEndpoint) => Promise<T>): Promise<T> {
    const previous = this.#exclusiveTail;
    let release!: () => void;
    this.#exclusiveTail = new Promise((r) => (release = r));
    await previous;
    this.#exclusive = true;
    try {
      return await fn({ name: this.name, transact: (c) => this.#enqueue(c, true) });
    } finally {
      this.#exclusive = false;
      release();
      this.#next();
    }
  }

  #enqueue(command: Buffer, exclusive: boolean): Promise<Buffer> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#queue.push({ command, exclusive, resolve, reject });
      this.#next();
    });
  }

  #next(): void {
    if (this.#inFlight || this.#failed) return;
    const i = this.#exclusive ? this.#queue.findIndex((q) => q.exclusive) : 0;
    if (i < 0) return;
    const p = this.#queue.splice(i, 1)[0];
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
