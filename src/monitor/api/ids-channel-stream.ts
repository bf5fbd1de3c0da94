/**
 * The IDS relay stream (formats/protocol/ids-channel.ts): `GET /v1/ids/sessions/:sessionId/channel`
 * with `Upgrade: vmseal-ids-channel/1` turns the connection into a stream of channel frames, each
 * answered like `POST …/reads` (same monitor call, same refusals, logged the same way) without an
 * HTTP request per frame. The stream carries only sealed frames: it adds no trust, it saves the
 * per-request HTTP work and a connection. Frames are answered one at a time, in order.
 */
import type { Duplex } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { ProtocolError } from '../../formats/protocol/fields.ts';
import { IDS_STREAM_MAX_REQUEST_BYTES, IDS_STREAM_PROTOCOL, IdsStreamDecoder, IdsStreamStatus, idsStreamPrefix } from '../../formats/protocol/ids-channel.ts';
import { UnknownIdsSessionError } from '../introspect/ids-sessions.ts';
import { RefusalError } from '../identity/refusal.ts';

/** Frames read ahead of the one being answered before the stream stops reading. */
const MAX_WAITING_FRAMES = 16;
const CHANNEL_PATH = /^\/v1\/ids\/sessions\/([0-9a-f]{32})\/channel$/;

export interface IdsFrameReader {
  idsRead(sessionId: string, frame: Buffer): Promise<Buffer>;
}

/** Status and JSON body of a failed frame, as the HTTP route's status and body would say. */
function failure(err: unknown, isUnknownVm: (err: unknown) => boolean): [IdsStreamStatus, Buffer] {
  const json = (status: IdsStreamStatus, error: string, code: string): [IdsStreamStatus, Buffer] => [status, Buffer.from(JSON.stringify({ error, code }))];
  if (err instanceof RefusalError) return json(IdsStreamStatus.refused, err.message, err.code);
  if (err instanceof ProtocolError) return json(IdsStreamStatus.badRequest, err.message, 'BAD_REQUEST');
  if (err instanceof UnknownIdsSessionError || isUnknownVm(err)) return json(IdsStreamStatus.notFound, (err as Error).message, 'NOT_FOUND');
  return json(IdsStreamStatus.internal, err instanceof Error ? err.message : 'internal error', 'INTERNAL');
}

/** Serves the stream on `app`'s server; closing the app ends every stream (the server waits for them otherwise). */
export function attachIdsChannelStream(app: FastifyInstance, monitor: IdsFrameReader, isUnknownVm: (err: unknown) => boolean): void {
  const open = new Set<Duplex>();
  app.addHook('preClose', (done) => {
    for (const s of open) s.destroy();
    done();
  });
  app.server.on('upgrade', (req, socket: Duplex, head: Buffer) => {
    const m = CHANNEL_PATH.exec(req.url ?? '');
    if (req.method !== 'GET' || !m || String(req.headers.upgrade ?? '').toLowerCase() !== IDS_STREAM_PROTOCOL) {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const sessionId = m[1] as string;
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${IDS_STREAM_PROTOCOL}\r\n\r\n`);
    const decoder = new IdsStreamDecoder(IDS_STREAM_MAX_REQUEST_BYTES);
    let queue: Promise<void> = Promise.resolve();
    // Frames wait in order; a relay that sends faster than they are answered is paused, not buffered without bound.
    let waiting = 0;
    const answer = async (frame: Buffer): Promise<void> => {
      let status: IdsStreamStatus = IdsStreamStatus.ok;
      let body: Buffer;
      try {
        body = await monitor.idsRead(sessionId, frame);
      } catch (err) {
        [status, body] = failure(err, isUnknownVm);
      }
      if (socket.destroyed) return;
      socket.cork();
      socket.write(idsStreamPrefix(1 + body.length));
      socket.write(Buffer.of(status));
      socket.write(body);
      socket.uncork();
    };
    const receive = (chunk: Buffer): void => {
      let frames: Buffer[];
      try {
        frames = decoder.push(chunk);
      } catch {
        // A stream that lies about a length cannot be resynchronised.
        socket.destroy();
        return;
      }
      for (const f of frames) {
        waiting++;
        queue = queue.then(async () => {
          await answer(f);
          if (--waiting <= MAX_WAITING_FRAMES / 2 && socket.isPaused()) socket.resume();
        });
      }
      if (waiting > MAX_WAITING_FRAMES) socket.pause();
    };
    open.add(socket);
    socket.on('close', () => open.delete(socket));
    socket.on('error', () => socket.destroy());
    // The HTTP server's sockets are half-open: the host library's end closes ours.
    socket.on('end', () => socket.end());
    socket.on('data', receive);
    if (head.length > 0) receive(head);
  });
}
