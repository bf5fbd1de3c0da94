/**
 * One TPM data channel: TPM commands in, responses out, one at a time (a TPM runs one command at a time, and
 * swtpm answers in order). Several users share a channel — the VM's own guest, the measured launch, another
 * VM's proxy reading a shared NV index — so `transact` queues.
 */
import { Socket } from 'node:net';
import { HEADER_SIZE } from '../../formats/tpm2/index.ts';
import { SerialRequests } from './serial-requests.ts';

/** swtpm's responses are at most its buffer size (4096); anything far above is a broken peer. */
const MAX_RESPONSE = 65536;

/** Something TPM commands can be sent to: a VM's swtpm. */
export interface TpmEndpoint {
  readonly name: string;
  transact(command: Buffer): Promise<Buffer>;
}

interface TpmRequest {
  command: Buffer;
  /** Sent inside an exclusive section. */
  exclusive: boolean;
}

export class TpmChannel implements TpmEndpoint {
  readonly #socket: Socket;
  readonly #requests: SerialRequests<TpmRequest>;
  #buffer: Buffer = Buffer.alloc(0);
  #exclusive = false;
  #exclusiveTail: Promise<void> = Promise.resolve();

  /** Takes ownership of `fd`, a connected stream socket to swtpm's data side. */
  constructor(
    fd: number,
    readonly name: string,
  ) {
    this.#socket = new Socket({ fd, readable: true, writable: true });
    this.#requests = new SerialRequests<TpmRequest>({
      send: (r) => this.#socket.write(r.command),
      close: () => this.#socket.destroy(),
      // Inside an exclusive section only its own commands go; the guest's wait.
      pick: (waiting) => (this.#exclusive ? waiting.findIndex((r) => r.exclusive) : 0),
    });
    this.#socket.on('data', (d: Buffer) => this.#data(d));
    this.#socket.on('error', (e) => this.#requests.fail(e));
    this.#socket.on('close', () => this.#requests.fail(new Error(`${name}: TPM channel closed`)));
  }

  transact(command: Buffer): Promise<Buffer> {
    return this.#requests.submit({ command, exclusive: false });
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
      return await fn({ name: this.name, transact: (command) => this.#requests.submit({ command, exclusive: true }) });
    } finally {
      this.#exclusive = false;
      release();
      this.#requests.next();
    }
  }

  #data(d: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? d : Buffer.concat([this.#buffer, d]);
    const fail = (msg: string) => this.#requests.fail(new Error(`${this.name}: ${msg}`));
    if (!this.#requests.inFlight) return fail(`${d.length} unsolicited bytes from the TPM`);
    if (this.#buffer.length < HEADER_SIZE) return;
    const size = this.#buffer.readUInt32BE(2);
    if (size < HEADER_SIZE || size > MAX_RESPONSE) return fail(`TPM response size ${size}`);
    if (this.#buffer.length < size) return;
    if (this.#buffer.length > size) return fail(`TPM sent ${this.#buffer.length - size} bytes past its response`);
    const response = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    this.#requests.complete(response);
  }

  close(): void {
    this.#requests.fail(new Error(`${this.name}: TPM channel closed`));
  }
}
