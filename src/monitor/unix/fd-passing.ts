/**
 * Typed access to the fd-passing addon (native/fd_passing.c, built by node-gyp into build/Release with the
 * sector-crypto addon): the Unix-socket work Node's net module cannot do. The TPM proxy receives QEMU's data fd
 * (CMD_SET_DATAFD, SCM_RIGHTS) and hands swtpm one end of a socketpair; the NBD server accepts its connections
 * here so that each can read into one reused buffer (net.Socket's `onread`). Every fd is non-blocking;
 * readability comes from a uv_poll_t on Node's own loop, so nothing here blocks or needs a thread.
 */
import { loadNativeAddon } from '../../crypto/native-addon.ts';

export interface ReceivedMessage {
  /** Empty at end of stream. */
  data: Buffer;
  fds: number[];
  /** The kernel dropped descriptors (control buffer too small). */
  truncated: boolean;
}

export interface ReadableWatch {
  stop(): void;
}

interface Addon {
  socketpair(): [number, number];
  listenUnix(path: string): number;
  connectUnix(path: string): number;
  accept(fd: number): number;
  sendMsg(fd: number, data: Uint8Array, fds: number[]): number;
  recvMsg(fd: number, max: number): ReceivedMessage | null;
  close(fd: number): void;
  watchReadable(fd: number, callback: (status: number) => void): ReadableWatch;
}


let addon: Addon | undefined;

function load(): Addon {
  addon ??= loadNativeAddon<Addon>('fd_passing', 'fd-passing');
  return addon;
}

/** A connected AF_UNIX stream pair. */
export function socketPair(): [number, number] {
  return load().socketpair();
}

/** A listening unix socket at `path` (the caller owns the directory, hence who may connect). */
export function listenUnix(path: string): number {
  return load().listenUnix(path);
}

/** A connected unix socket to `path`. */
export function connectUnix(path: string): number {
  return load().connectUnix(path);
}

/** An accepted connection, or undefined when none is pending. */
export function acceptConnection(fd: number): number | undefined {
  const c = load().accept(fd);
  return c < 0 ? undefined : c;
}

/** Writes all of `data` (with `fds` attached to its first byte); a short write is an error: these messages are tiny. */
export function sendWithFds(fd: number, data: Uint8Array, fds: number[] = []): void {
  const n = load().sendMsg(fd, data, fds);
  if (n !== data.length) throw new Error(`sendmsg wrote ${n} of ${data.length} bytes (peer not reading)`);
}

/** Up to `max` bytes and any descriptors that came with them, or null when nothing is ready. */
export function receiveWithFds(fd: number, max: number): ReceivedMessage | null {
  return load().recvMsg(fd, max);
}

export function closeFd(fd: number): void {
  load().close(fd);
}

/** Calls `onReadable` whenever `fd` is readable or hung up (status < 0: a poll error). */
export function watchReadable(fd: number, onReadable: (status: number) => void): ReadableWatch {
  return load().watchReadable(fd, onReadable);
}
