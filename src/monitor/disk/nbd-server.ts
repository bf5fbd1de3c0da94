/**
 * NBD server on a unix socket: fixed-newstyle handshake, then the transmission phase for
 * one of the named exports. Every connection is independent; a misbehaving client loses
 * its own connection and nothing else.
 *
 * Each connection reads into one reused buffer (net.Socket's `onread`) instead of a new
 * ArrayBuffer per read: at write speed those buffers are hundreds of MB/s of external memory,
 * which in a process of any size (the monitor's) makes V8 run a full mark-compact several
 * times a second. `onread` is only offered for sockets we construct, so connections are
 * accepted here (fd-passing addon, non-blocking accept on the event loop) rather than by
 * net.Server.
 */
import { createConnection, Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import { chmod, lstat, unlink } from 'node:fs/promises';
import { acceptConnection, closeFd, listenUnix, watchReadable, type ReadableWatch } from '../unix/fd-passing.ts';
import type { BlockBackend } from './backend.ts';
import { ExportTable } from './nbd-exports.ts';
import { HandshakeRefused, negotiate } from './nbd-handshake.ts';
import { PeerClosedError, SocketReader } from './nbd-socket-reader.ts';
import { emptyStats, type NbdLogger, type NbdServerStats } from './nbd-stats.ts';
import { DEFAULT_SESSION_LIMITS, TransmissionSession, type SessionLimits } from './nbd-transmission.ts';

export type { NbdLogger, NbdServerStats } from './nbd-stats.ts';

export interface NbdServerOptions {
  socketPath: string;
  /** Export name -> backend. The default export "" is the first entry unless one is named "". */
  exports: Map<string, BlockBackend>;
  logger?: NbdLogger;
  limits?: Partial<SessionLimits>;
}

/** How long close() lets clients take their last replies before cutting them off. */
const CLOSE_GRACE_MS = 2000;
/** Per-connection read buffer: one read takes up to this much (a few write payloads). */
const READ_BUFFER = 256 * 1024;

interface Connection {
  socket: Socket;
  /** Where received bytes go: the handshake reader, then the session. Valid only during the call. */
  sink: (chunk: Buffer) => void;
  session?: TransmissionSession;
}

export class NbdServer {
  /** Counters over all connections since construction. */
  readonly stats: NbdServerStats = emptyStats();
  readonly socketPath: string;
  readonly #exports: ExportTable;
  readonly #log: NbdLogger | undefined;
  readonly #limits: SessionLimits;
  readonly #connections = new Set<Connection>();
  #listenFd: number | undefined;
  #watch: ReadableWatch | undefined;
  #closing = false;

  constructor(options: NbdServerOptions) {
    this.socketPath = options.socketPath;
    this.#exports = new ExportTable(options.exports);
    this.#log = options.logger;
    this.#limits = { ...DEFAULT_SESSION_LIMITS, ...options.limits };
  }

  /** Connections currently open (handshaking or transmitting). */
  get activeConnections(): number {
    return this.#connections.size;
  }

  async listen(): Promise<void> {
    if (this.#listenFd !== undefined || this.#closing) throw new Error('NbdServer.listen() may be called once');
    await removeStaleSocket(this.socketPath);
    const fd = listenUnix(this.socketPath);
    this.#listenFd = fd;
    try {
      // The run directory is 0700 already; this keeps the socket private even if it is not.
      await chmod(this.socketPath, 0o600);
    } catch (err) {
      this.#stopListening();
      throw err;
    }
    this.#watch = watchReadable(fd, (status) => {
      if (status < 0) this.#log?.warn({ status }, 'NBD server socket poll error');
      this.#acceptPending();
    });
    this.#log?.info({ socket: this.socketPath, exports: this.#exports.list().map((e) => e.name) }, 'NBD server listening');
  }

  /** Stops accepting, lets in-flight requests finish, closes every connection, removes the socket. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const listening = this.#stopListening();
    const gone = [...this.#connections].map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.socket.destroyed) return resolve();
          c.socket.once('close', () => resolve());
          if (c.session) c.session.shutdown();
          else c.socket.destroy();
          setTimeout(() => c.socket.destroy(), CLOSE_GRACE_MS).unref();
        }),
    );
    await Promise.all(gone);
    if (listening) await unlink(this.socketPath).catch(() => undefined);
  }

  /** Returns whether the server was listening. */
  #stopListening(): boolean {
    this.#watch?.stop();
    this.#watch = undefined;
    const fd = this.#listenFd;
    this.#listenFd = undefined;
    if (fd === undefined) return false;
    closeFd(fd);
    return true;
  }

  #acceptPending(): void {
    for (;;) {
      const fd = this.#listenFd;
      if (fd === undefined) return;
      let conn: number | undefined;
      try {
        conn = acceptConnection(fd);
      } catch (err) {
        // EMFILE and the like: this attempt fails, the server keeps listening.
        this.#log?.warn({ err }, 'NBD accept failed');
        return;
      }
      if (conn === undefined) return;
      if (this.#closing) closeFd(conn);
      else this.#accept(conn);
    }
  }

  #accept(fd: number): void {
    let connection: Connection | undefined;
    const onread: OnReadOpts = {
      buffer: Buffer.allocUnsafe(READ_BUFFER),
      callback: (n, buf) => {
        connection?.sink(Buffer.from(buf.buffer, buf.byteOffset, n));
        return true;
      },
    };
    // Node's Socket constructor honours `onread` as connect() does; @types/node lists it only for connect.
    const opts: SocketConstructorOpts & { onread: OnReadOpts } = { fd, allowHalfOpen: true, readable: true, writable: true, onread };
    const socket = new Socket(opts);
    connection = { socket, sink: () => undefined };
    this.stats.connections++;
    this.#connections.add(connection);
    socket.on('error', (err) => this.#log?.debug({ err }, 'NBD connection error'));
    socket.on('close', () => this.#connections.delete(connection!));
    void this.#serve(connection);
  }

  async #serve(conn: Connection): Promise<void> {
    const { socket } = conn;
    const reader = new SocketReader(socket);
    conn.sink = (chunk) => reader.push(chunk);
    try {
      const chosen = await negotiate(socket, reader, this.#exports);
      if (!chosen || this.#closing || socket.destroyed) {
        socket.end();
        return;
      }
      const session = new TransmissionSession(socket, chosen.export, chosen.structuredReplies, this.stats, this.#log, this.#limits);
      conn.session = session;
      conn.sink = (chunk) => session.receive(chunk);
      session.start(reader.detach());
    } catch (err) {
      if (err instanceof HandshakeRefused) this.#log?.warn({ reason: err.message }, 'NBD handshake refused');
      else if (!(err instanceof PeerClosedError)) this.#log?.warn({ err }, 'NBD handshake failed');
      socket.destroy();
    }
  }
}

/**
 * A socket file left by a dead server is removed; a live server or any other kind of file at
 * the path is an error, never silently replaced.
 */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`${path}: another server is listening there`);
  await unlink(path);
}
