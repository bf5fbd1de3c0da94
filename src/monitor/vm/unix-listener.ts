import net from 'node:net';

/**
 * A unix socket that accepts exactly one connection. The runner listens before spawning QEMU and
 * QEMU connects as a client (`-chardev socket,...,server=off`): QEMU's connect is synchronous at
 * startup, so there is no polling for a socket to appear and no window in which another process
 * could be served first (the socket lives in the 0700 run dir, and any second connection is dropped).
 */
export class OneShotListener {
  private readonly connection: Promise<net.Socket>;
  private settleClosed: ((err: Error) => void) | undefined;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly server: net.Server,
  ) {
    this.connection = new Promise<net.Socket>((resolve, reject) => {
      this.settleClosed = reject;
      server.on('connection', (socket) => {
        if (this.closed) {
          socket.destroy();
          return;
        }
        resolve(socket); // settles first, so close()'s rejection below is a no-op
        this.close();
      });
    });
    // Callers that never accept() must not see an unhandled rejection when the listener closes.
    this.connection.catch(() => undefined);
  }

  static listen(path: string): Promise<OneShotListener> {
    return new Promise((resolve, reject) => {
      const server = net.createServer();
      server.once('error', (err) => reject(new Error(`cannot listen on unix socket ${path}: ${err.message}`)));
      server.listen(path, () => {
        server.removeAllListeners('error');
        // Errors after listening (rare: e.g. EMFILE on accept) just mean no connection.
        server.on('error', () => undefined);
        resolve(new OneShotListener(path, server));
      });
    });
  }

  /** The first connection; rejects if the listener is closed before anyone connects. */
  accept(): Promise<net.Socket> {
    return this.connection;
  }

  /** Stops listening and removes the socket file (libuv unlinks it on close). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.close();
    this.settleClosed?.(new Error(`listener on ${this.path} closed before a connection arrived`));
  }
}
