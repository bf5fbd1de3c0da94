/**
 * Writes a directory tree described as data (directories, files, symlinks with modes). Both the
 * initramfs and the root filesystem are built this way, so their contents read as one table.
 */
import { chmod, lutimes, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export type TreeEntry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; content: string | Uint8Array }
  | { kind: 'symlink'; path: string; target: string };

/** `entries` paths are relative to `root`; parents are created as needed (mode 0755). */
export async function writeTree(root: string, entries: readonly TreeEntry[]): Promise<void> {
  for (const e of entries) {
    if (e.path.startsWith('/') || e.path.split('/').includes('..')) throw new Error(`tree path ${JSON.stringify(e.path)} escapes its root`);
    const p = join(root, e.path);
    await mkdir(dirname(p), { recursive: true, mode: 0o755 });
    if (e.kind === 'dir') {
      await mkdir(p, { recursive: true });
      await chmod(p, e.mode); // mkdir's mode is filtered by the umask
    } else if (e.kind === 'file') {
      await writeFile(p, e.content, { flag: 'wx' });
      await chmod(p, e.mode);
    } else {
      await symlink(e.target, p);
    }
  }
}

/** Every directory of the tree, implicit parents included, sorted so parents precede children. */
export function treeDirs(entries: readonly TreeEntry[]): string[] {
  const dirs = new Set<string>();
  for (const e of entries) {
    if (e.kind === 'dir') dirs.add(e.path);
    for (let d = dirname(e.path); d !== '.'; d = dirname(d)) dirs.add(d);
  }
  return [...dirs].sort();
}

/** Gives every entry (and the root) the same mtime, so archives of the tree are reproducible. */
export async function stampTree(root: string, paths: readonly string[], when: Date): Promise<void> {
  // Children first: touching an entry does not change its parent's mtime, but creating one did.
  for (const p of [...paths].reverse()) await lutimes(join(root, p), when, when);
  await lutimes(root, when, when);
}
