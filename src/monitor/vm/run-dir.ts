import { existsSync, rmSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/**
 * Private per-VM run directories: sockets and the guest-memory file live here, so the directory
 * is 0700 and its parent must not let anyone else rename or replace entries.
 */

/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_UNIX_SOCKET_PATH_BYTES = 107;
/** The longest file name placed in a run dir (sockets included). */
const LONGEST_ENTRY = 'console.sock';

/**
 * $XDG_RUNTIME_DIR/vmseal when set, else /dev/shm/vmseal-<uid>, else <tmpdir>/vmseal-<uid>.
 * Both preferred places are tmpfs: a MAP_SHARED guest-RAM file on a disk filesystem would be
 * written back to disk (slow, and guest memory would persist on the medium).
 */
export function defaultRunDirBase(): string {
  const uid = process.getuid?.() ?? 0;
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg) && existsSync(xdg)) return path.join(xdg, 'vmseal');
  if (existsSync('/dev/shm')) return path.join('/dev/shm', `vmseal-${uid}`);
  return path.join(os.tmpdir(), `vmseal-${uid}`);
}

/** Makes sure `base` is a real directory owned by us with no group/other access. */
async function ensurePrivateBase(base: string): Promise<void> {
  await mkdir(base, { recursive: true, mode: 0o700 });
  const st = await lstat(base);
  if (!st.isDirectory()) throw new Error(`run dir base ${base} is not a directory (symlinks are refused)`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new Error(`run dir base ${base} is owned by uid ${st.uid}, not by us (uid ${uid}); refusing to use it`);
  }
  if ((st.mode & 0o077) !== 0) await chmod(base, 0o700);
}

/** Creates a fresh 0700 run dir under `base` (default: `defaultRunDirBase()`). */
export async function createRunDir(base: string = defaultRunDirBase()): Promise<string> {
  const absBase = path.resolve(base);
  await ensurePrivateBase(absBase);
  const dir = await mkdtemp(path.join(absBase, 'vm-'));
  await chmod(dir, 0o700); // mkdtemp already uses 0700; make it explicit and umask-proof
  const longest = path.join(dir, LONGEST_ENTRY);
  if (Buffer.byteLength(longest) > MAX_UNIX_SOCKET_PATH_BYTES) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(
      `run dir ${dir} is too deep for unix sockets (${Buffer.byteLength(longest)} > ${MAX_UNIX_SOCKET_PATH_BYTES} bytes); use a shorter runDirBase`,
    );
  }
  return dir;
}

export async function removeRunDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** For process 'exit' hooks, where only synchronous work runs. */
export function removeRunDirSync(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
