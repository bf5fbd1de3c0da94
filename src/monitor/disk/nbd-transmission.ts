/**
 * One connection's transmission phase. Requests are parsed straight from the received chunks
 * (a 28-byte header buffer; write payloads copied once into pooled buffers), run concurrently
 * against the backend up to a bounded number and size in flight, and answered as they finish,
 * matched to their request by cookie. Adjoining reads and writes that are already here are
 * coalesced (see nbd-coalesce.ts). A chunk is the server's reused read buffer (nbd-server.ts):
 * whatever is still unparsed when receive() returns is copied.
 */
import type { Socket } from 'node:net';
import {
  NBD_REQUEST_MAGIC,
  NbdCmd,
  NbdCmdFlag,
  NbdErrno,
  NbdReplyFlag,
  OFFSET_DATA_HEADER_SIZE,
  REQUEST_HEADER_SIZE,
  SIMPLE_REPLY_HEADER_SIZE,
} from '../../formats/nbd/constants.ts';
import {
  decodeRequestHeader,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeSimpleReply,
  writeOffsetDataHeader,
  writeSimpleReplyHeader,
  type RequestHeader,
} from '../../formats/nbd/transmission.ts';
import { BufferPool } from './buffer-pool.ts';
import { ReadRun, WriteRun } from './nbd-coalesce.ts';
import type { NbdExport } from './nbd-exports.ts';
import { checkRequest, type Rejection } from './nbd-request-check.ts';
import type { NbdLogger, NbdServerStats } from './nbd-stats.ts';

export interface SessionLimits {
  /** Requests handed to the backend and not yet answered. */
  maxInflight: number;
  /** Payload bytes (read replies being filled, write payloads) held by those requests. */
  maxInflightBytes: number;
  /** Reply bytes queued in the socket before we stop taking new requests. */
  maxQueuedReplyBytes: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  maxInflight: 64,
  maxInflightBytes: 64 * 1024 * 1024,
  maxQueuedReplyBytes: 16 * 1024 * 1024,
};

/** A coalesced backend call covers at most this many bytes (and never more than the export's max payload). */
const RUN_BYTES = 256 * 1024;
const RUN_REQUESTS = 64;
const POOL_BYTES = 16 * 1024 * 1024;
const POOL_MAX_BUFFER = 4 * 1024 * 1024 + OFFSET_DATA_HEADER_SIZE;

const HEADER = 0;
const PAYLOAD = 1;
const DISCARD = 2;
const STOPPED = 3;
const EMPTY = Buffer.alloc(0);

/** Maps a backend failure to the NBD error the spec allows. */
function errnoOf(err: unknown): number {
  switch ((err as { code?: unknown } | null)?.code) {
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NbdErrno.EPERM;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdErrno.ENOSPC;
    case 'ENOMEM':
      return NbdErrno.ENOMEM;
    case 'EINVAL':
      return NbdErrno.EINVAL;
    default:
      return NbdErrno.EIO;
  }
}

export class TransmissionSession {
  readonly #socket: Socket;
  readonly #exp: NbdExport;
  readonly #structured: boolean;
  readonly #stats: NbdServerStats;
  readonly #log: NbdLogger | undefined;
  readonly #limits: SessionLimits;
  readonly #runBytes: number;
  readonly #pool = new BufferPool(POOL_BYTES, POOL_MAX_BUFFER);

  #state = HEADER;
  readonly #hdr = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  #hdrFill = 0;
  /** The write whose payload is being received or discarded. */
  #req: RequestHeader | undefined;
  #rejection: Rejection | null = null;
  /** The payload goes to its own buffer (#payload), or into #writeRun.buf at #runAt. */
  #payload: Buffer | undefined;
  #payloadFill = 0;
  #runAt = -1;
  #discardLeft = 0;
  #writeRun: WriteRun | undefined;
  #readRun: ReadRun | undefined;
  /** Range of the last write received, to spot sequential streams. */
  #lastWriteStart = -1;
  #lastWriteEnd = -1;

  /** Received chunks not yet parsed; #pos is the parse position in the first one. */
  #backlog: Buffer[] = [];
  #pos = 0;
  #processing = false;
  #paused = false;
  #inflight = 0;
  #inflightBytes = 0;
  #corked = false;
  #ending = false;
  #finished = false;
  #peerEnded = false;
  #closed = false;

  constructor(socket: Socket, exp: NbdExport, structuredReplies: boolean, stats: NbdServerStats, log: NbdLogger | undefined, limits: SessionLimits) {
    this.#socket = socket;
    this.#exp = exp;
    this.#structured = structuredReplies;
    this.#stats = stats;
    this.#log = log;
    this.#limits = limits;
    this.#runBytes = Math.min(RUN_BYTES, exp.blockSizes.max);
  }

  /** Takes over the socket; `leftover` is what the handshake received beyond its last option. */
  start(leftover: Buffer[]): void {
    const s = this.#socket;
    this.#backlog = leftover.filter((b) => b.length > 0);
    s.on('drain', () => this.#process());
    // The client sends nothing more: answer what it sent, then close.
    s.on('end', () => {
      this.#peerEnded = true;
      this.#process();
    });
    s.on('close', () => {
      this.#closed = true;
      this.#stopReading();
    });
    // The handshake reader may have paused the socket; #process pauses it again if need be.
    s.resume();
    this.#process();
  }

  /** Bytes received; `chunk` is only valid during this call. */
  receive(chunk: Buffer): void {
    if (this.#state === STOPPED || chunk.length === 0) return;
    this.#backlog.push(chunk);
    this.#process();
    // Held back (too much in flight): keep what is left of it, since the caller reuses its memory.
    const last = this.#backlog.length - 1;
    if (last >= 0 && this.#backlog[last] === chunk) {
      const from = last === 0 ? this.#pos : 0;
      this.#backlog[last] = Buffer.from(chunk.subarray(from));
      if (last === 0) this.#pos = 0;
    }
  }

  /** Stops taking requests, lets those received finish and be answered, then closes. */
  shutdown(): void {
    this.#stopReading();
    this.#ending = true;
    if (this.#inflight === 0) this.#finish();
  }

  /** Drops partial input; complete requests still waiting to be coalesced are run. */
  #stopReading(): void {
    this.#runAt = -1;
    this.#dispatchRuns();
    this.#state = STOPPED;
    this.#backlog = [];
    this.#payload = undefined;
    this.#req = undefined;
  }

  #finish(): void {
    if (this.#finished || this.#closed) return;
    this.#finished = true;
    this.#uncork();
    this.#socket.end(() => this.#socket.destroy());
  }

  /** A protocol violation we cannot answer (bad magic, garbage): drop this connection only. */
  #abort(why: string): void {
    this.#log?.warn({ export: this.#exp.name }, `NBD client dropped: ${why}`);
    this.#stopReading();
    this.#socket.destroy();
  }

  #blocked(): boolean {
    return (
      this.#inflight >= this.#limits.maxInflight ||
      this.#inflightBytes >= this.#limits.maxInflightBytes ||
      this.#socket.writableLength >= this.#limits.maxQueuedReplyBytes
    );
  }

  #process(): void {
    if (this.#processing) return;
    this.#processing = true;
    try {
      while (this.#backlog.length > 0) {
        // Only a new request is held back; a payload already begun is received in full.
        if (this.#state === HEADER && this.#hdrFill === 0 && this.#blocked()) {
          this.#dispatchRuns();
          if (!this.#paused) {
            this.#paused = true;
            this.#socket.pause();
          }
          return;
        }
        const chunk = this.#backlog[0]!;
        const pos = this.#step(chunk, this.#pos);
        if (pos >= chunk.length) {
          this.#backlog.shift();
          this.#pos = 0;
        } else this.#pos = pos;
      }
      // All received input is parsed: gathered requests go now (a write run waits for a payload half in).
      this.#dispatchRuns();
      if (this.#peerEnded) this.shutdown();
      else if (this.#paused && this.#state !== STOPPED) {
        this.#paused = false;
        this.#socket.resume();
      }
    } finally {
      this.#processing = false;
    }
  }

  /** Consumes one piece of `chunk` from `pos`; returns the new position. */
  #step(chunk: Buffer, pos: number): number {
    const avail = chunk.length - pos;
    switch (this.#state) {
      case HEADER: {
        if (this.#hdrFill === 0 && avail >= REQUEST_HEADER_SIZE) {
          this.#onHeader(chunk, pos);
          return pos + REQUEST_HEADER_SIZE;
        }
        const n = Math.min(REQUEST_HEADER_SIZE - this.#hdrFill, avail);
        chunk.copy(this.#hdr, this.#hdrFill, pos, pos + n);
        this.#hdrFill += n;
        if (this.#hdrFill === REQUEST_HEADER_SIZE) {
          this.#hdrFill = 0;
          this.#onHeader(this.#hdr, 0);
        }
        return pos + n;
      }
      case PAYLOAD:
        return this.#receivePayload(chunk, pos, avail);
      case DISCARD: {
        const n = Math.min(this.#discardLeft, avail);
        this.#discardLeft -= n;
        if (this.#discardLeft === 0) {
          this.#state = HEADER;
          this.#replyRejected(this.#req!, this.#rejection!);
        }
        return pos + n;
      }
      default:
        return chunk.length;
    }
  }

  #receivePayload(chunk: Buffer, pos: number, avail: number): number {
    const req = this.#req!;
    const need = req.length - this.#payloadFill;
    const n = Math.min(need, avail);
    if (this.#runAt >= 0) {
      const run = this.#writeRun!;
      chunk.copy(run.buf, this.#runAt + this.#payloadFill, pos, pos + n);
      this.#payloadFill += n;
      if (this.#payloadFill === req.length) {
        run.commit(req, this.#runAt, (req.flags & NbdCmdFlag.FUA) !== 0);
        this.#endPayload();
      }
      return pos + n;
    }
    this.#payload ??= this.#pool.take(req.length);
    chunk.copy(this.#payload, this.#payloadFill, pos, pos + n);
    this.#payloadFill += n;
    if (this.#payloadFill === req.length) {
      const data = this.#payload;
      this.#endPayload();
      void this.#write(req, data, true);
    }
    return pos + n;
  }

  #endPayload(): void {
    this.#state = HEADER;
    this.#payload = undefined;
    this.#payloadFill = 0;
    this.#runAt = -1;
  }

  #onHeader(buf: Buffer, at: number): void {
    if (buf.readUInt32BE(at) !== NBD_REQUEST_MAGIC) {
      this.#abort(`bad request magic 0x${buf.readUInt32BE(at).toString(16)}`);
      return;
    }
    const h = decodeRequestHeader(buf, at);
    const rejection = checkRequest(h, this.#exp, this.#structured);
    if (h.type === NbdCmd.WRITE) {
      // The payload follows the header whatever we think of the request; keep the stream in step.
      if (rejection && h.length > 0) {
        this.#state = DISCARD;
        this.#req = h;
        this.#rejection = rejection;
        this.#discardLeft = h.length;
      } else if (rejection) this.#replyRejected(h, rejection);
      else if (h.length === 0) void this.#write(h, EMPTY, false);
      else this.#startPayload(h);
    } else if (h.type === NbdCmd.DISC) this.shutdown();
    else if (rejection) this.#replyRejected(h, rejection);
    else if (h.type === NbdCmd.READ) this.#gatherRead(h);
    else {
      // A flush covers the writes answered before it; gathered ones go first all the same.
      if (h.type === NbdCmd.FLUSH) this.#dispatchRuns();
      void this.#run(h);
    }
  }

  /** Decides where a valid write's payload goes: the open run, a new run, or its own buffer. */
  #startPayload(h: RequestHeader): void {
    const end = h.offset + h.length;
    const sequential = h.offset === this.#lastWriteEnd || end === this.#lastWriteStart;
    this.#lastWriteStart = h.offset;
    this.#lastWriteEnd = end;
    this.#state = PAYLOAD;
    this.#req = h;
    this.#runAt = this.#writeRun ? this.#writeRun.place(h, RUN_REQUESTS) : -1;
    if (this.#runAt >= 0) return;
    this.#dispatchWriteRun();
    if (sequential && 2 * h.length <= this.#runBytes) {
      this.#writeRun = new WriteRun(h.offset, this.#pool.take(2 * this.#runBytes), this.#runBytes);
      this.#runAt = this.#writeRun.place(h, RUN_REQUESTS);
    }
  }

  #gatherRead(h: RequestHeader): void {
    if (h.length > 0 && this.#readRun?.add(h, this.#runBytes, RUN_REQUESTS)) return;
    this.#dispatchReadRun();
    if (h.length > 0 && 2 * h.length <= this.#runBytes) this.#readRun = new ReadRun(h);
    else void this.#read(h);
  }

  /** Sends gathered requests to the backend; a write run with a payload half received stays. */
  #dispatchRuns(): void {
    this.#dispatchReadRun();
    if (this.#runAt < 0) this.#dispatchWriteRun();
  }

  #dispatchReadRun(): void {
    const run = this.#readRun;
    this.#readRun = undefined;
    if (!run) return;
    if (run.requests.length === 1) void this.#read(run.requests[0]!);
    else void this.#readMany(run);
  }

  #dispatchWriteRun(): void {
    const run = this.#writeRun;
    this.#writeRun = undefined;
    if (!run) return;
    if (run.requests.length === 0) this.#pool.give(run.buf);
    else void this.#writeMany(run);
  }

  #begin(requests: number, bytes: number): void {
    this.#inflight += requests;
    this.#inflightBytes += bytes;
  }

  #end(requests: number, bytes: number): void {
    this.#inflight -= requests;
    this.#inflightBytes -= bytes;
    if (this.#ending) {
      if (this.#inflight === 0) this.#finish();
    } else if (this.#paused || this.#peerEnded) this.#process();
  }

  /** One read, answered from one buffer holding the reply header and the data after it. */
  async #read(h: RequestHeader): Promise<void> {
    this.#begin(1, h.length);
    try {
      if (h.length === 0) {
        this.#send(this.#structured ? encodeNoneChunk(h.cookie) : encodeSimpleReply(0, h.cookie));
        return;
      }
      const headerSize = this.#structured ? OFFSET_DATA_HEADER_SIZE : SIMPLE_REPLY_HEADER_SIZE;
      const reply = this.#pool.take(headerSize + h.length);
      try {
        await this.#exp.backend.read(h.offset, h.length, reply.subarray(headerSize));
      } catch (err) {
        this.#pool.give(reply);
        throw err;
      }
      this.#stats.reads++;
      this.#stats.bytesRead += h.length;
      this.#writeReadHeader(reply, 0, h);
      this.#send(reply, this.#returnToPool);
    } catch (err) {
      this.#replyFailed(h, err);
    } finally {
      this.#end(1, h.length);
    }
  }

  /** A run of adjoining reads: one backend read, then each reply points into that buffer. */
  async #readMany(run: ReadRun): Promise<void> {
    const n = run.requests.length;
    const length = run.hi - run.lo;
    this.#begin(n, length);
    try {
      const data = this.#pool.take(length);
      try {
        await this.#exp.backend.read(run.lo, length, data);
      } catch (err) {
        this.#pool.give(data);
        throw err;
      }
      this.#stats.reads += n;
      this.#stats.bytesRead += length;
      const headerSize = this.#structured ? OFFSET_DATA_HEADER_SIZE : SIMPLE_REPLY_HEADER_SIZE;
      const headers = Buffer.allocUnsafe(n * headerSize);
      run.requests.forEach((h, i) => {
        const at = i * headerSize;
        this.#writeReadHeader(headers, at, h);
        this.#send(headers.subarray(at, at + headerSize));
        const from = h.offset - run.lo;
        // Socket writes complete in order: once the last one is done, the buffer is free.
        this.#send(data.subarray(from, from + h.length), i === n - 1 ? () => this.#returnToPool(data) : undefined);
      });
    } catch (err) {
      for (const h of run.requests) this.#replyFailed(h, err);
    } finally {
      this.#end(n, length);
    }
  }

  #writeReadHeader(into: Buffer, at: number, h: RequestHeader): void {
    if (this.#structured) writeOffsetDataHeader(into, at, h.cookie, h.offset, h.length, NbdReplyFlag.DONE);
    else writeSimpleReplyHeader(into, at, 0, h.cookie);
  }

  /** `pooled`: `data` came from the pool and goes back once the backend is done with it. */
  async #write(h: RequestHeader, data: Buffer, pooled: boolean): Promise<void> {
    this.#begin(1, data.length);
    try {
      await this.#exp.backend.write(h.offset, data, (h.flags & NbdCmdFlag.FUA) !== 0);
      this.#stats.writes++;
      this.#stats.bytesWritten += data.length;
      this.#send(encodeSimpleReply(0, h.cookie));
    } catch (err) {
      this.#replyFailed(h, err);
    } finally {
      if (pooled) this.#pool.give(data);
      this.#end(1, data.length);
    }
  }

  /** A run of adjoining writes: one backend call, FUA for all if any asked, a reply for each. */
  async #writeMany(run: WriteRun): Promise<void> {
    const n = run.requests.length;
    const data = run.data();
    this.#begin(n, data.length);
    try {
      await this.#exp.backend.write(run.lo, data, run.fua);
      this.#stats.writes += n;
      this.#stats.bytesWritten += data.length;
      for (const h of run.requests) this.#send(encodeSimpleReply(0, h.cookie));
    } catch (err) {
      for (const h of run.requests) this.#replyFailed(h, err);
    } finally {
      this.#pool.give(run.buf);
      this.#end(n, data.length);
    }
  }

  /** Flush, trim and write-zeroes: no payload either way. */
  async #run(h: RequestHeader): Promise<void> {
    const b = this.#exp.backend;
    const fua = (h.flags & NbdCmdFlag.FUA) !== 0;
    this.#begin(1, 0);
    try {
      if (h.type === NbdCmd.FLUSH) {
        await b.flush();
        this.#stats.flushes++;
      } else if (h.type === NbdCmd.TRIM) {
        await b.trim(h.offset, h.length, fua);
        this.#stats.trims++;
      } else {
        await b.writeZeroes(h.offset, h.length, fua);
        this.#stats.writeZeroes++;
      }
      this.#send(encodeSimpleReply(0, h.cookie));
    } catch (err) {
      this.#replyFailed(h, err);
    } finally {
      this.#end(1, 0);
    }
  }

  #replyFailed(h: RequestHeader, err: unknown): void {
    const errno = errnoOf(err);
    this.#log?.warn({ export: this.#exp.name, type: h.type, offset: h.offset, length: h.length, err }, 'NBD request failed in the backend');
    this.#replyError(h, errno, `I/O failed (errno ${errno})`);
  }

  #replyRejected(h: RequestHeader, r: Rejection): void {
    this.#log?.debug({ export: this.#exp.name, errno: r.errno }, `NBD request refused: ${r.message}`);
    this.#replyError(h, r.errno, r.message);
  }

  /** With structured replies an error chunk carries a message (and is required for reads). */
  #replyError(h: RequestHeader, errno: number, message: string): void {
    this.#stats.errors++;
    this.#send(this.#structured ? encodeErrorChunk(h.cookie, errno, message) : encodeSimpleReply(errno, h.cookie));
  }

  /**
   * Replies finished in the same turn of the event loop go out in one writev. `written` runs
   * once the socket no longer needs `buf`.
   */
  #send(buf: Buffer, written?: (buf: Buffer) => void): void {
    if (this.#closed || this.#socket.writableEnded) return;
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      setImmediate(this.#uncork);
    }
    if (written) this.#socket.write(buf, () => written(buf));
    else this.#socket.write(buf);
  }

  #uncork = (): void => {
    if (!this.#corked) return;
    this.#corked = false;
    this.#socket.uncork();
  };

  #returnToPool = (buf: Buffer): void => {
    if (!this.#closed) this.#pool.give(buf);
  };
}
