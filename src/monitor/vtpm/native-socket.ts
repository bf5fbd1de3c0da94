/**
 * A unix stream socket held as a native fd (../unix/fd-passing.ts), for the two control channels that carry
 * descriptors: reads arrive through a readable watch with the fds that came with them, writes go out
 * with sendmsg. Used only for swtpm's tiny control messages; the TPM data path uses net.Socket.
 */
import { closeFd, receiveWithFds, sendWithFds, watchReadable, type ReadableWatch } from '../unix/fd-passing.ts';

const READ_CHUNK = 4096;

export interface NativeSocketEvents {
  onData(data: Buffer, fds: number[]): void;
  /** Peer closed or the socket failed; the fd is closed already. */
  onClose(reason: string): void;
}

export class NativeSocket {
  #watch: ReadableWatch | undefined;
  #closed = false;

  constructor(
    readonly fd: number,
    private readonly events: NativeSocketEvents,
  ) {
    this.#watch = watchReadable(fd, (status) => this.#readable(status));
  }

  get closed(): boolean {
    return this.#closed;
  }

  #readable(status: number): void {
    if (this.#closed) return;
    if (status < 0) return this.close(`poll error ${status}`);
    // Drain what is there: the watch is level-triggered, so one read per wake-up would be correct but slow.
    for (;;) {
      let m;
      try {
        m = receiveWithFds(this.fd, READ_CHUNK);
      } catch (err) {
        return this.close(err instanceof Error ? err.message : String(err));
      }
      if (m === null) return;
      if (m.data.length === 0) {
        for (const fd of m.fds) closeFd(fd);
        return this.close('peer closed');
      }
      if (m.truncated) {
        for (const fd of m.fds) closeFd(fd);
        return this.close('control message truncated (descriptors lost)');
      }
      this.events.onData(m.data, m.fds);
      if (this.#closed) return;
    }
  }

  send(data: Uint8Array, fds: number[] = []): void {
    if (this.#closed) throw new Error('socket is closed');
    sendWithFds(this.fd, data, fds);
  }

  close(reason = 'closed'): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch?.stop();
    this.#watch = undefined;
    closeFd(this.fd);
    this.events.onClose(reason);
  }
}
