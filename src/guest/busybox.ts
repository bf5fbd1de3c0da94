/**
 * The busybox binary both the initramfs and the root filesystem are made of, taken from the
 * installed busybox-static package. It must be static: the guest has no C library.
 */
import { readFile } from 'node:fs/promises';
import { EM_X86_64, parseElf, PT_INTERP } from '../formats/elf.ts';
import { runTool } from './run-tool.ts';

export interface Busybox {
  path: string;
  /** Debian version of busybox-static. */
  version: string;
  /** Applet paths relative to /, e.g. "bin/sh", "sbin/init". */
  applets: string[];
}

const PACKAGE = 'busybox-static';
const APPLET_PATH = /^[a-z0-9_[][a-z0-9_.[/-]*$/;

export async function findBusybox(): Promise<Busybox> {
  let version: string;
  try {
    version = (await runTool('dpkg-query', ['-W', '-f=${Version}', PACKAGE], { timeoutMs: 30_000 })).stdout.toString('utf8').trim();
  } catch {
    throw new Error(`${PACKAGE} is not installed: apt-get install ${PACKAGE} (or run scripts/setup.sh)`);
  }
  const files = (await runTool('dpkg', ['-L', PACKAGE], { timeoutMs: 30_000 })).stdout.toString('utf8').split('\n');
  const path = files.find((f) => f.endsWith('/bin/busybox'));
  if (!path) throw new Error(`${PACKAGE} ${version} ships no /bin/busybox`);

  const elf = parseElf(await readFile(path));
  if (elf.machine !== EM_X86_64) throw new Error(`${path} is not an x86-64 binary`);
  if (elf.segments.some((s) => s.type === PT_INTERP)) throw new Error(`${path} is dynamically linked; the guest needs a static busybox`);

  const listed = (await runTool(path, ['--list-full'], { timeoutMs: 30_000 })).stdout.toString('utf8');
  const applets = listed
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && l !== 'bin/busybox');
  for (const a of applets) {
    if (!APPLET_PATH.test(a) || a.split('/').includes('..')) throw new Error(`busybox lists a suspicious applet path ${JSON.stringify(a)}`);
  }
  return { path, version, applets };
}
