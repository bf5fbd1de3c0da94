import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { z } from 'zod';

/**
 * A QMP (QEMU Machine Protocol) client over an already connected stream socket.
 * QMP is newline-delimited JSON: a greeting, then `{"execute", "arguments", "id"}` commands
 * answered by `{"return"|"error", "id"}`, interleaved with asynchronous `{"event"}` messages.
 * Everything QEMU sends is validated; anything malformed closes the client with a
 * QmpProtocolError instead of being trusted or crashing the monitor.
 */

const DEFAULT_TIMEOUT_MS = 10_000;
/** query-qmp-schema, the largest reply QEMU sends, is a few hundred KiB; anything past this is hostile. */
const MAX_LINE_BYTES = 16 * 1024 * 1024;
/** Ids of timed-out commands whose late replies are dropped silently; bounded. */
const MAX_ABANDONED_IDS = 1024;

const greetingSchema = z.object({
  QMP: z.object({
    version: z.object({
      qemu: z.object({ major: z.number().int(), minor: z.number().int(), micro: z.number().int() }),
      package: z.string(),
    }),
    capabilities: z.array(z.string()),
  }),
});
const idSchema = z.string();
const errorReplySchema = z.object({
  error: z.object({ class: z.string(), desc: z.string() }),
  id: idSchema.optional(),
});
const eventSchema = z.object({
  // Upper-case only: the name is also used as an EventEmitter event and must never be 'error' or 'close'.
  event: z.string().regex(/^[A-Z][A-Z0-9_]*$/),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});
const COMMAND_NAME = /^[A-Za-z][A-Za-z0-9_-]*$/;

export type QmpGreeting = z.infer<typeof greetingSchema>['QMP'];

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** QEMU answered a command with `{"error": {"class", "desc"}}`. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP command '${command}' failed: ${errorClass}: ${desc}`);
  }
}

/** The peer sent something that is not valid QMP; the connection is closed. */
export class QmpProtocolError extends Error {
  override readonly name = 'QmpProtocolError';
}

/** The connection is closed (by us, by QEMU, or after a protocol error). */
export class QmpClosedError extends Error {
  override readonly name = 'QmpClosedError';
}

export class QmpTimeoutError extends Error {
  override readonly name = 'QmpTimeoutError';
}

export interface QmpOptions {
  /** Bound for the greeting plus capability negotiation. */
  timeoutMs?: number;
  /** Extra text for error messages, e.g. the tail of QEMU's stderr. */
  diagnostics?: () => string;
}

export interface ExecuteOptions {
  timeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Events: 'event' (QmpEvent) for every asynchronous event, plus one emission under the event's
 * own name ('STOP', 'RESUME', 'SHUTDOWN', ...); 'close' (Error: why) exactly once.
 */
export class QmpClient extends EventEmitter {
  private readonly pending = new Map<string, Pending>();
  private readonly abandoned = new Set<string>();
  private nextId = 1;
  private partial: Buffer[] = [];
  private partialBytes = 0;
  private closeReason: Error | null = null;
  private greetingSeen: QmpGreeting | null = null;
  private onGreeting: ((greeting: QmpGreeting) => void) | null = null;

  private constructor(
    private readonly socket: net.Socket,
    private readonly diagnostics: (() => string) | undefined,
  ) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(new QmpClosedError(`QMP socket error: ${err.message}`)));
    socket.on('close', () => this.shutdown(new QmpClosedError('QMP connection closed by the peer')));
  }

  /** Reads the greeting and negotiates capabilities on a connected socket. Destroys the socket on failure. */
  static async open(socket: net.Socket, opts: QmpOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const client = new QmpClient(socket, opts.diagnostics);
    let rejectGreeting: (reason: Error) => void = () => undefined;
    const greeting = new Promise<QmpGreeting>((resolve, reject) => {
      client.onGreeting = resolve;
      rejectGreeting = reject;
      client.once('close', reject);
    });
    const timer = setTimeout(
      () => client.shutdown(new QmpTimeoutError(client.withDiagnostics(`no QMP greeting within ${timeoutMs} ms`))),
      timeoutMs,
    );
    try {
      await greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (err) {
      client.close();
      throw err;
    } finally {
      clearTimeout(timer);
      client.off('close', rejectGreeting);
      client.onGreeting = null;
    }
  }

  /** QEMU's version and capabilities from the greeting. */
  get greeting(): QmpGreeting {
    if (!this.greetingSeen) throw new Error('QMP greeting not received yet');
    return this.greetingSeen;
  }

  get closed(): boolean {
    return this.closeReason !== null;
  }

  /**
   * Runs a command and resolves with its `return` value, validated by `schema` when given.
   * Rejects with QmpError (QEMU refused), QmpTimeoutError, QmpClosedError or QmpProtocolError.
   */
  execute(command: string, args?: Record<string, unknown>, opts?: ExecuteOptions): Promise<unknown>;
  execute<T>(command: string, args: Record<string, unknown> | undefined, opts: ExecuteOptions & { schema: z.ZodType<T> }): Promise<T>;
  async execute<T>(
    command: string,
    args?: Record<string, unknown>,
    opts: ExecuteOptions & { schema?: z.ZodType<T> } = {},
  ): Promise<unknown> {
    if (this.closeReason) throw this.closeReason;
    if (!COMMAND_NAME.test(command)) throw new TypeError(`invalid QMP command name ${JSON.stringify(command)}`);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const id = `vmseal-${this.nextId++}`;
    const line = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    const value = await new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.abandon(id);
        reject(new QmpTimeoutError(this.withDiagnostics(`QMP command '${command}' got no reply within ${timeoutMs} ms`)));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(`${line}\n`);
    });
    if (!opts.schema) return value;
    const parsed = opts.schema.safeParse(value);
    if (!parsed.success) {
      throw new QmpProtocolError(`reply to QMP command '${command}' has an unexpected shape: ${parsed.error.message}`);
    }
    return parsed.data;
  }

  /** The next event called `name` (matching `predicate`, if given) that arrives after this call. */
  waitForEvent(name: string, timeoutMs: number, predicate?: (event: QmpEvent) => boolean): Promise<QmpEvent> {
    if (this.closeReason) return Promise.reject(this.closeReason);
    return new Promise((resolve, reject) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.off(name, onEvent);
        this.off('close', onClose);
      };
      const onEvent = (event: QmpEvent): void => {
        let matches: boolean;
        try {
          matches = predicate ? predicate(event) : true;
        } catch (err) {
          finish();
          reject(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        if (!matches) return;
        finish();
        resolve(event);
      };
      const onClose = (reason: Error): void => {
        finish();
        reject(new QmpClosedError(`QMP closed while waiting for event ${name}: ${reason.message}`));
      };
      const timer = setTimeout(() => {
        finish();
        reject(new QmpTimeoutError(this.withDiagnostics(`no QMP event ${name} within ${timeoutMs} ms`)));
      }, timeoutMs);
      this.on(name, onEvent);
      this.once('close', onClose);
    });
  }

  /** Closes the connection; pending commands and event waits reject with QmpClosedError. Idempotent. */
  close(): void {
    this.shutdown(new QmpClosedError('QMP client closed'));
  }

  private withDiagnostics(message: string): string {
    const extra = this.diagnostics?.().trim();
    return extra ? `${message}\n${extra}` : message;
  }

  private abandon(id: string): void {
    this.abandoned.add(id);
    if (this.abandoned.size > MAX_ABANDONED_IDS) {
      const oldest = this.abandoned.values().next().value;
      if (oldest !== undefined) this.abandoned.delete(oldest);
    }
  }

  private shutdown(reason: Error): void {
    if (this.closeReason) return;
    this.closeReason = reason;
    this.socket.destroy();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(reason);
    }
    this.pending.clear();
    this.emit('close', reason);
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0 && !this.closeReason; nl = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, nl);
      const line = this.partial.length > 0 ? Buffer.concat([...this.partial, piece]) : piece;
      this.partial = [];
      this.partialBytes = 0;
      start = nl + 1;
      this.onLine(line.toString('utf8'));
    }
    if (this.closeReason || start >= chunk.length) return;
    this.partialBytes += chunk.length - start;
    if (this.partialBytes > MAX_LINE_BYTES) {
      this.shutdown(new QmpProtocolError(`QMP peer sent a line longer than ${MAX_LINE_BYTES} bytes`));
      return;
    }
    this.partial.push(chunk.subarray(start));
  }

  private onLine(line: string): void {
    const text = line.trim();
    if (text === '') return;
    const fail = (why: string): void => {
      const shown = text.length > 200 ? `${text.slice(0, 200)}...` : text;
      this.shutdown(new QmpProtocolError(`invalid QMP message (${why}): ${JSON.stringify(shown)}`));
    };
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      fail('not JSON');
      return;
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      fail('not a JSON object');
      return;
    }
    if (!this.greetingSeen) {
      const greeting = greetingSchema.safeParse(msg);
      if (!greeting.success) {
        fail('expected the QMP greeting');
        return;
      }
      this.greetingSeen = greeting.data.QMP;
      this.onGreeting?.(greeting.data.QMP);
      return;
    }
    if ('return' in msg) {
      const id = idSchema.safeParse((msg as { id?: unknown }).id);
      if (!id.success) {
        fail('reply without a string id');
        return;
      }
      this.settle(id.data, (p) => p.resolve((msg as { return: unknown }).return), fail);
    } else if ('error' in msg) {
      const reply = errorReplySchema.safeParse(msg);
      if (!reply.success || reply.data.id === undefined) {
        fail('malformed error reply');
        return;
      }
      const { class: errorClass, desc } = reply.data.error;
      this.settle(reply.data.id, (p) => p.reject(new QmpError(p.command, errorClass, desc)), fail);
    } else if ('event' in msg) {
      const parsed = eventSchema.safeParse(msg);
      if (!parsed.success) {
        fail('malformed event');
        return;
      }
      const event: QmpEvent = { event: parsed.data.event, data: parsed.data.data ?? {}, timestamp: parsed.data.timestamp };
      this.emit('event', event);
      this.emit(event.event, event);
    } else {
      fail('neither a reply nor an event');
    }
  }

  private settle(id: string, apply: (p: Pending) => void, fail: (why: string) => void): void {
    const p = this.pending.get(id);
    if (p) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      apply(p);
    } else if (this.abandoned.has(id)) {
      this.abandoned.delete(id);
    } else {
      fail(`reply to unknown id ${JSON.stringify(id)}`);
    }
  }
}
