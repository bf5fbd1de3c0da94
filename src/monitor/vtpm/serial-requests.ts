/**
 * Requests over a channel whose peer answers one request at a time, in order (swtpm's data and control
 * sockets): the waiting queue, the one request in flight, and the failure that ends the channel, rejecting
 * everything still waiting. Framing the bytes is the channel's job; this is only the bookkeeping.
 */
interface Entry<R> {
  request: R;
  resolve(r: Buffer): void;
  reject(e: Error): void;
}

export interface SerialRequestsOptions<R> {
  /** Puts `request` on the wire; a throw fails the channel. */
  send(request: R): void;
  /** The channel failed: close the transport (called once). */
  close(): void;
  /** Which waiting request goes next (an index into `waiting`, or -1 for none yet); default the first. */
  pick?(waiting: readonly R[]): number;
}

export class SerialRequests<R> {
  readonly #o: SerialRequestsOptions<R>;
  readonly #queue: Array<Entry<R>> = [];
  #inFlight: Entry<R> | undefined;
  #failed: Error | undefined;

  constructor(o: SerialRequestsOptions<R>) {
    this.#o = o;
  }

  /** Queues `request`; resolves with its response, rejects when the channel fails first. */
  submit(request: R): Promise<Buffer> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#queue.push({ request, resolve, reject });
      this.next();
    });
  }

  /** The request whose response is awaited, if any. */
  get inFlight(): R | undefined {
    return this.#inFlight?.request;
  }

  get failed(): Error | undefined {
    return this.#failed;
  }

  /** Sends the next request the picker allows, unless one is in flight (call again when the picker would choose differently). */
  next(): void {
    if (this.#inFlight || this.#failed) return;
    const i = this.#o.pick ? this.#o.pick(this.#queue.map((e) => e.request)) : 0;
    const entry = i < 0 ? undefined : this.#queue.splice(i, 1)[0];
    if (!entry) return;
    this.#inFlight = entry;
    try {
      this.#o.send(entry.request);
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** The in-flight request's response arrived whole. */
  complete(response: Buffer): void {
    const entry = this.#inFlight;
    if (!entry) return;
    this.#inFlight = undefined;
    entry.resolve(response);
    this.next();
  }

  /** Ends the channel: everything in flight or waiting is rejected with `e`, now and for later submits. */
  fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    const all = [...(this.#inFlight ? [this.#inFlight] : []), ...this.#queue.splice(0)];
    this.#inFlight = undefined;
    for (const entry of all) entry.reject(e);
    this.#o.close();
  }
}
