/**
 * tpm2-tools for the guest, with exactly the shared libraries it loads. The libraries are found
 * the way the dynamic loader finds them (PT_INTERP, then DT_NEEDED of every object, by soname in
 * the multiarch library directories), but inside unpacked Debian packages: a soname no package
 * fetched so far holds pulls in the Depends of the packages in use, until every name resolves.
 */
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { EM_X86_64, parseElf, readDynamic } from '../formats/elf.ts';
import { fetchPackages, type DebPackage, type UnpackedPackage } from './debian-packages.ts';
import type { TreeEntry } from './file-tree.ts';

/** tpm2-tools itself, and the TCTI that talks to the kernel's resource manager (/dev/tpmrm0). */
export const TPM_TOOLS_PACKAGES = ['tpm2-tools', 'libtss2-tcti-device0'] as const;

/** TCTI the tools use in the guest (TPM2TOOLS_TCTI): the in-kernel resource manager. */
export const GUEST_TPM_TCTI = 'device:/dev/tpmrm0';

/** libtss2-tctildr dlopens the TCTI named by TPM2TOOLS_TCTI, so no DT_NEEDED leads to it. */
const DLOPENED = [{ pkg: 'libtss2-tcti-device0', path: 'usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0' }];

/** Where glibc's loader looks on Debian amd64 when there is no ld.so.cache. */
const LIBRARY_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib', 'usr/lib'];
const MAX_SYMLINK_HOPS = 8;
const MAX_ROUNDS = 12;

export interface PackagedFiles {
  /** Files and symlinks at their package paths, sorted by path. */
  entries: TreeEntry[];
  /** The packages the entries came from. */
  packages: DebPackage[];
}

function isElf(b: Uint8Array): boolean {
  return b.length >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

/** A package-relative path, refused if it leaves the package root. */
function relPath(p: string): string {
  const n = normalize(p).replace(/^\/+/, '');
  if (n === '' || n === '.' || n.split('/').includes('..')) throw new Error(`path ${JSON.stringify(p)} escapes the package root`);
  return n;
}

/**
 * The tpm2 multi-call binary, its tpm2_* names, the device TCTI and their shared-library closure,
 * from packages unpacked under `workDir`.
 */
export async function gatherTpmTools(workDir: string, report: (msg: string) => void): Promise<PackagedFiles> {
  const fetched = new Map<string, UnpackedPackage>();
  const fetch = async (names: string[]) => {
    report(`fetching ${names.join(' ')}`);
    for (const p of await fetchPackages(names, workDir)) fetched.set(p.name, p);
  };
  await fetch([...TPM_TOOLS_PACKAGES]);

  const entries = new Map<string, TreeEntry>();
  const used = new Set<string>();
  const elfQueue: Array<{ path: string; bytes: Uint8Array }> = [];

  const owner = async (path: string, prefer?: UnpackedPackage): Promise<UnpackedPackage | undefined> => {
    for (const p of prefer ? [prefer, ...fetched.values()] : fetched.values()) {
      if (await lstat(join(p.root, path)).then(() => true, () => false)) return p;
    }
    return undefined;
  };

  /** Adds `path` (from `pkg`, else any fetched package) and what its symlinks lead to. */
  const add = async (path: string, pkg: UnpackedPackage | undefined, hops = 0): Promise<void> => {
    if (entries.has(path)) return;
    const from = await owner(path, pkg);
    if (!from) throw new Error(`/${path} is in none of the fetched packages (${[...fetched.keys()].join(' ')})`);
    used.add(from.name);
    const full = join(from.root, path);
    const st = await lstat(full);
    if (st.isSymbolicLink()) {
      if (hops >= MAX_SYMLINK_HOPS) throw new Error(`/${path}: too many levels of symbolic links`);
      const target = await readlink(full);
      entries.set(path, { kind: 'symlink', path, target });
      await add(relPath(target.startsWith('/') ? target : join(dirname(path), target)), from, hops + 1);
    } else if (st.isFile()) {
      const bytes = await readFile(full);
      entries.set(path, { kind: 'file', path, mode: st.mode & 0o755, content: bytes });
      if (isElf(bytes)) elfQueue.push({ path, bytes });
    } else {
      throw new Error(`/${path} in ${from.name} is neither a file nor a symbolic link`);
    }
  };

  const tools = fetched.get('tpm2-tools')!;
  const bin = join(tools.root, 'usr/bin');
  const names = (await readdir(bin)).filter((n) => n === 'tpm2' || n.startsWith('tpm2_')).sort();
  if (!names.includes('tpm2')) throw new Error('tpm2-tools ships no /usr/bin/tpm2 multi-call binary');
  for (const n of names) await add(`usr/bin/${n}`, tools);
  for (const d of DLOPENED) await add(d.path, fetched.get(d.pkg));

  /** A soname is looked up in the library directories; the interpreter is a path. */
  interface Need {
    name: string;
    isPath: boolean;
    by: string;
  }
  let pending: Need[] = [];
  for (let round = 0; ; round++) {
    const unresolved: Need[] = [];
    const resolve = async (need: Need) => {
      if (!need.isPath && need.name.includes('/')) throw new Error(`${need.by} needs ${JSON.stringify(need.name)}, a path rather than a soname`);
      for (const p of need.isPath ? [relPath(need.name)] : LIBRARY_DIRS.map((d) => `${d}/${need.name}`)) {
        if (entries.has(p)) return;
        if (await owner(p)) return add(p, undefined);
      }
      unresolved.push(need);
    };
    for (const need of pending) await resolve(need);
    while (elfQueue.length > 0) {
      const { path, bytes } = elfQueue.shift()!;
      const elf = parseElf(bytes);
      if (elf.machine !== EM_X86_64) throw new Error(`/${path} is not an x86-64 object`);
      const dyn = readDynamic(elf);
      if (dyn.interpreter !== undefined) await resolve({ name: dyn.interpreter, isPath: true, by: `/${path}` });
      for (const name of dyn.needed) await resolve({ name, isPath: false, by: `/${path}` });
    }
    if (unresolved.length === 0) break;
    const next = [...new Set([...used].flatMap((n) => fetched.get(n)!.depends))].filter((n) => !fetched.has(n)).sort();
    if (next.length === 0 || round >= MAX_ROUNDS) {
      throw new Error(`no fetched package provides ${unresolved.map((u) => `${u.name} (needed by ${u.by})`).join(', ')}`);
    }
    await fetch(next);
    pending = unresolved;
  }

  return {
    entries: [...entries.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
    packages: [...used].sort().map((n) => ({ name: n, version: fetched.get(n)!.version })),
  };
}
