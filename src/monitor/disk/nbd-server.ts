/**
 * NBD server on a unix socket: fixed-newstyle handshake, then the transmission phase for
 * one of the named exports. Every connection is independent; a misbehaving client loses
 * its own connection and nothing else.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { chmod, lstat, unlink } from 'node:fs/promises';
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

interface Connection {
  socket: Socket;
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
  #server: Server | undefined;
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
    if (this.#server || this.#closing) throw new Error('NbdServer.listen() may be called once');
    await removeStaleSocket(this.socketPath);
    const server = createServer({ allowHalfOpen: true }, (socket) => this.#accept(socket));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // The run directory is 0700 already; this keeps the socket private even if it is not.
    await chmod(this.socketPath, 0o600);
    server.on('error', (err) => this.#log?.warn({ err }, 'NBD server socket error'));
    this.#log?.info({ socket: this.socketPath, exports: this.#exports.list().map((e) => e.name) }, 'NBD server listening');
  }

  /** Stops accepting, lets in-flight requests finish, closes every connection, removes the socket. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const server = this.#server;
    const stopped = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
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
    await Promise.all([stopped, ...gone]);
    if (server) await unlink(this.socketPath).catch(() => undefined);
  }

  #accept(socket: Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.stats.connections++;
    const conn: Connection = { socket };
    this.#connections.add(conn);
    socket.on('error', (err) => this.#log?.debug({ err }, 'NBD connection error'));
    socket.on('close', () => this.#connections.delete(conn));
    void this.#serve(conn);
  }

  async #serve(conn: Connection): Promise<void> {
    const { socket } = conn;
    const reader = new SocketReader(socket);
    try {
      const chosen = await negotiate(socket, reader, this.#exports);
      if (!chosen || this.#closing || socket.destroyed) {
        socket.end();
        return;
      }
      const session = new TransmissionSession(socket, chosen.export, chosen.structuredReplies, this.stats, this.#log, this.#limits);
      conn.session = session;
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
