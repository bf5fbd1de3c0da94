/**
 * The IDS enclave's end of the IDS channel: a MemorySource whose every batch goes out as one request
 * frame through an untrusted transport (the host library) and comes back as one response frame bound
 * to that request. The first failed exchange ends the channel: the monitor's seq and ours may then
 * differ, and a relay that tampers once gets no second try on the same session.
 */
import {
  IdsChannelError,
  deriveIdsChannelKeys,
  openIdsResponse,
  sealIdsRequest,
  type IdsChannelKeys,
  type IdsChannelMode,
} from '../../crypto/ids-channel.ts';
import { decodeReadResults, encodeReadOps } from '../../formats/protocol/ids-channel.ts';
import type { MemorySource, ReadOp, ReadResult } from '../../formats/protocol/ids-read.ts';

export type FrameTransport = (frame: Buffer) => Promise<Buffer>;

export interface SealedChannelOptions {
  sessionId: string;
  sessionKey: Buffer;
  transport: FrameTransport;
  /** 'plain' only for the benchmark's configuration (b); the monitor must be built for it too. */
  mode?: IdsChannelMode;
}

export class SealedChannelClient implements MemorySource {
  readonly #keys: IdsChannelKeys;
  readonly #mode: IdsChannelMode;
  readonly #transport: FrameTransport;
  #seq = 0;
  #broken: Error | undefined;
  /** Exchanges run one at a time, in seq order. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(opts: SealedChannelOptions) {
    this.#keys = deriveIdsChannelKeys(opts.sessionKey, Buffer.from(opts.sessionId, 'hex'));
    this.#mode = opts.mode ?? 'sealed';
    this.#transport = opts.transport;
  }

  /** Seq of the last request sent. */
  get seq(): number {
    return this.#seq;
  }

  read(ops: readonly ReadOp[]): Promise<ReadResult[]> {
    const run = this.#queue.then(() => this.#exchange(ops));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #exchange(ops: readonly ReadOp[]): Promise<ReadResult[]> {
    if (this.#broken) throw new IdsChannelError('MALFORMED', `IDS channel closed after a failed exchange: ${this.#broken.message}`);
    const plaintext = encodeReadOps(ops);
    const seq = ++this.#seq;
    const request = sealIdsRequest(this.#keys, this.#mode, seq, plaintext);
    try {
      const response = await this.#transport(request);
      const results = decodeReadResults(openIdsResponse(this.#keys, this.#mode, seq, request, response));
      if (results.length !== ops.length) throw new IdsChannelError('MALFORMED', `IDS response holds ${results.length} results for ${ops.length} ops`);
      return results;
    } catch (err) {
      this.#broken = err as Error;
      throw err;
    }
  }
}
