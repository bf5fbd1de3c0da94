/**
 * The host library's relay of channel frames to the monitor over one upgraded connection per
 * session (formats/protocol/ids-channel.ts, relay stream) rather than an HTTP request per frame.
 * It carries only sealed frames and sealed replies. A connection that breaks fails the exchanges
 * in flight; the next frame opens a new one.
 */
import { request } from 'node:http';
import type { Duplex } from 'node:stream';
import { MAX_FRAME_BYTES } from '../../formats/protocol/enclave-call.ts';
import { IDS_STREAM_PROTOCOL, IdsStreamDecoder, IdsStreamStatus, decodeIdsStreamReply, idsStreamPrefix } from '../../formats/protocol/ids-channel.ts';
import { IdsHostRequestError } from './http.ts';

const EXCHANGE_TIMEOUT_MS = 60_000;
/** The HTTP status the same refusal has on `POST …/reads`, so callers see one error either way. */
const HTTP_STATUS: Record<number, number> = { [IdsStreamStatus.refused]: 403, [IdsStreamStatus.badRequest]: 400, [IdsStreamStatus.notFound]: 404, [IdsStreamStatus.internal]: 500 };

interface Pending {
  resolve: (frame: Buffer) => void;
  reject: (err: Error) => void;
}

export class MonitorFrameStream {
  #socket: Promise<Duplex> | undefined;
  readonly #pending: Pending[] = [];
  #closed = false;

  constructor(
    private readonly monitorSocket: string,
    private readonly sessionId: () => string,
  ) {}

  /** Sends one request frame; resolves with the monitor's response frame. */
  async exchange(frame: Buffer): Promise<Buffer> {
    if (this.#closed) throw new IdsHostRequestError('the relay to the monitor is closed');
    const socket = await (this.#socket ??= this.#connect());
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => socket.destroy(new IdsHostRequestError(`no answer to a channel frame within ${EXCHANGE_TIMEOUT_MS} ms`)), EXCHANGE_TIMEOUT_MS);
      const done = <A extends unknown[]>(fn: (...a: A) => void) => (...a: A) => {
        clearTimeout(timer);
        fn(...a);
      };
      this.#pending.push({ resolve: done(resolve), reject: done(reject) });
      socket.cork();
      socket.write(idsStreamPrefix(frame.length));
      socket.write(frame);
      socket.uncork();
    });
  }

  close(): void {
    this.#closed = true;
    void this.#socket?.then((s) => s.destroy(), () => undefined);
  }

  #connect(): Promise<Duplex> {
    const path = `/v1/ids/sessions/${encodeURIComponent(this.sessionId())}/channel`;
    const connecting = new Promise<Duplex>((resolve, reject) => {
      const req = request({ socketPath: this.monitorSocket, method: 'GET', path, headers: { connection: 'Upgrade', upgrade: IDS_STREAM_PROTOCOL } });
      req.on('upgrade', (_res, socket, head) => {
        this.#serve(socket, head);
        resolve(socket);
      });
      req.on('response', (res) => {
        res.resume();
        reject(new IdsHostRequestError(`the monitor refused the channel stream: status ${res.statusCode}`, res.statusCode));
      });
      req.on('error', (err) => reject(new IdsHostRequestError(`channel stream: ${err.message}`)));
      req.end();
    });
    connecting.catch(() => (this.#socket = undefined));
    return connecting;
  }

  #serve(socket: Duplex, head: Buffer): void {
    const decoder = new IdsStreamDecoder(MAX_FRAME_BYTES);
    const fail = (err: Error): void => {
      this.#socket = undefined;
      for (const p of this.#pending.splice(0)) p.reject(err);
    };
    const receive = (chunk: Buffer): void => {
      let bodies: Buffer[];
      try {
        bodies = decoder.push(chunk);
      } catch (err) {
        socket.destroy(err as Error);
        return;
      }
      for (const body of bodies) {
        const p = this.#pending.shift();
        if (!p) {
          socket.destroy(new IdsHostRequestError('the monitor sent a reply nobody asked for'));
          return;
        }
        let reply: ReturnType<typeof decodeIdsStreamReply>;
        try {
          reply = decodeIdsStreamReply(body);
        } catch (err) {
          p.reject(err as Error);
          socket.destroy(err as Error);
          return;
        }
        if (reply.status === IdsStreamStatus.ok) p.resolve(reply.payload);
        else p.reject(refusal(reply.status, reply.payload));
      }
    };
    socket.on('data', receive);
    socket.on('error', (err) => fail(err instanceof IdsHostRequestError ? err : new IdsHostRequestError(`channel stream: ${err.message}`)));
    socket.on('close', () => fail(new IdsHostRequestError('the monitor closed the channel stream')));
    if (head.length > 0) receive(head);
  }
}

function refusal(status: IdsStreamStatus, payload: Buffer): IdsHostRequestError {
  let message = `status ${status}`;
  let code: string | undefined;
  try {
    const e = JSON.parse(payload.toString('utf8')) as { error?: unknown; code?: unknown };
    if (typeof e.error === 'string') message = e.error.slice(0, 500);
    if (typeof e.code === 'string') code = e.code.slice(0, 64);
  } catch {
    // not JSON: keep the status
  }
  return new IdsHostRequestError(`monitor refused a channel frame: ${message}`, HTTP_STATUS[status], code);
}
