/**
 * The Debian cloud kernel: resolve the image package behind the linux-image-cloud-amd64
 * metapackage (apt metadata only, no network), download it with apt-get (which verifies it
 * against the signed package index) and unpack it with dpkg-deb, which needs no root.
 */
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool, ToolError } from './run-tool.ts';

export const KERNEL_METAPACKAGE = 'linux-image-cloud-amd64';

export interface KernelPackage {
  /** e.g. linux-image-6.1.0-56-cloud-amd64 */
  name: string;
  /** Debian version, e.g. 6.1.192-2 */
  version: string;
  /** `uname -r` of the kernel, e.g. 6.1.0-56-cloud-amd64; it names the cache directory. */
  kernelVersion: string;
}

export interface ExtractedKernel {
  vmlinuz: string;
  config: string;
  modulesDir: string;
}

/** apt cannot answer: no package lists, no apt at all. The caller may fall back to a cached build. */
export class AptMetadataError extends Error {
  override name = 'AptMetadataError';
}

/** The package could not be fetched (network, mirror). The caller may fall back to a cached build. */
export class KernelDownloadError extends Error {
  override name = 'KernelDownloadError';
}

const IMAGE_PACKAGE = /^linux-image-(\d[A-Za-z0-9.+~-]*)$/;
const DEBIAN_VERSION = /^[A-Za-z0-9.+~:-]+$/;
const APT_TIMEOUT_MS = 60_000;
const DOWNLOAD_TIMEOUT_MS = 15 * 60_000;
const EXTRACT_TIMEOUT_MS = 5 * 60_000;
const UPDATE_HINT = 'run `apt-get update` (or scripts/setup.sh) first';

/** Fields of the first stanza of Debian control-style output (apt-cache show). */
export function parseControlStanza(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  let last: string | undefined;
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      if (fields.size > 0) break;
      continue;
    }
    if (/^\s/.test(line)) {
      if (last !== undefined) fields.set(last, `${fields.get(last)}\n${line.trim()}`);
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    last = line.slice(0, colon);
    fields.set(last, line.slice(colon + 1).trim());
  }
  return fields;
}

export interface Dependency {
  name: string;
  /** Set when the dependency pins an exact version, as `(= VERSION)`. */
  exactVersion?: string;
}

/** The packages of a Depends field, alternatives flattened. */
export function parseDepends(depends: string): Dependency[] {
  const out: Dependency[] = [];
  for (const part of depends.split(/[,|]/)) {
    const m = /^\s*([^\s(:]+)(?::\S+)?\s*(?:\(\s*(=|<<|<=|>=|>>)\s*([^)\s]+)\s*\))?\s*$/.exec(part);
    if (!m) throw new AptMetadataError(`cannot parse the dependency ${JSON.stringify(part.trim())}`);
    out.push(m[2] === '=' ? { name: m[1]!, exactVersion: m[3]! } : { name: m[1]! });
  }
  return out;
}

/** The candidate stanza of `pkg`, or of its version `version`. */
async function aptShow(pkg: string, version?: string): Promise<Map<string, string>> {
  let out: Buffer;
  try {
    const arg = version === undefined ? pkg : `${pkg}=${version}`;
    ({ stdout: out } = await runTool('apt-cache', ['show', '--no-all-versions', arg], { timeoutMs: APT_TIMEOUT_MS }));
  } catch (err) {
    if (err instanceof ToolError) {
      const why = /No packages found|Unable to locate/.test(err.stderr) ? `apt knows no package ${pkg}: the package lists are empty or stale` : err.message;
      throw new AptMetadataError(`${why}; ${UPDATE_HINT}`);
    }
    throw err;
  }
  const fields = parseControlStanza(out.toString('utf8'));
  if (fields.get('Package') !== pkg || (version !== undefined && fields.get('Version') !== version)) {
    throw new AptMetadataError(`apt-cache show ${pkg} ${version ?? ''} returned another package's stanza; ${UPDATE_HINT}`);
  }
  return fields;
}

/**
 * The image package the metapackage currently points at, from local apt metadata. One
 * apt-cache call (it rebuilds its cache in memory each time on Debian images, ~1.5 s): the
 * metapackage pins the image's exact version.
 */
export async function resolveKernelPackage(): Promise<KernelPackage> {
  const meta = await aptShow(KERNEL_METAPACKAGE);
  const images = parseDepends(meta.get('Depends') ?? '').filter((d) => IMAGE_PACKAGE.test(d.name));
  if (images.length !== 1) {
    throw new AptMetadataError(`${KERNEL_METAPACKAGE} should depend on exactly one linux-image-VERSION package, found: ${images.map((d) => d.name).join(', ') || 'none'}`);
  }
  const { name, exactVersion } = images[0]!;
  const version = exactVersion ?? (await aptShow(name)).get('Version') ?? '';
  if (!DEBIAN_VERSION.test(version)) throw new AptMetadataError(`${name} has a malformed version ${JSON.stringify(version)}`);
  return { name, version, kernelVersion: IMAGE_PACKAGE.exec(name)![1]! };
}

/** Download size of the package, from apt metadata. */
export async function kernelPackageSize(pkg: KernelPackage): Promise<number> {
  const fields = await aptShow(pkg.name, pkg.version);
  const size = Number(fields.get('Size'));
  if (!Number.isSafeInteger(size) || size <= 0) throw new AptMetadataError(`${pkg.name} ${pkg.version} has a malformed Size field`);
  return size;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isFile()) total += (await stat(join(dir, e.name)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/** Downloads the package into `dir` (which should be empty) and returns the .deb path. */
export async function downloadKernelPackage(
  pkg: KernelPackage,
  sizeBytes: number,
  dir: string,
  onTransfer?: (doneBytes: number, totalBytes: number) => void,
): Promise<string> {
  // As root, apt drops to the _apt user for downloads, which cannot write a private temp dir.
  const sandbox = process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : [];
  const poll = onTransfer
    ? setInterval(() => {
        dirBytes(dir).then((n) => onTransfer(Math.min(n, sizeBytes), sizeBytes), () => {});
      }, 250)
    : undefined;
  try {
    await runTool('apt-get', [...sandbox, '-q', 'download', `${pkg.name}=${pkg.version}`], { cwd: dir, timeoutMs: DOWNLOAD_TIMEOUT_MS });
  } catch (err) {
    if (err instanceof ToolError) throw new KernelDownloadError(`downloading ${pkg.name} ${pkg.version} failed: ${err.message}`);
    throw err;
  } finally {
    clearInterval(poll);
  }
  onTransfer?.(sizeBytes, sizeBytes);
  const debs = (await readdir(dir)).filter((f) => f.endsWith('.deb'));
  if (debs.length !== 1) throw new KernelDownloadError(`apt-get download left ${debs.length} .deb files in ${dir}, expected 1`);
  const deb = join(dir, debs[0]!);
  const { stdout } = await runTool('dpkg-deb', ['-f', deb, 'Package', 'Version'], { timeoutMs: APT_TIMEOUT_MS });
  const fields = parseControlStanza(stdout.toString('utf8'));
  if (fields.get('Package') !== pkg.name || fields.get('Version') !== pkg.version) {
    throw new KernelDownloadError(`${deb} is ${fields.get('Package')} ${fields.get('Version')}, expected ${pkg.name} ${pkg.version}`);
  }
  return deb;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Unpacks the package under `dir` and locates the kernel, its config and its modules. */
export async function extractKernelPackage(deb: string, dir: string, kernelVersion: string): Promise<ExtractedKernel> {
  await runTool('dpkg-deb', ['-x', deb, dir], { timeoutMs: EXTRACT_TIMEOUT_MS });
  const vmlinuz = join(dir, 'boot', `vmlinuz-${kernelVersion}`);
  const config = join(dir, 'boot', `config-${kernelVersion}`);
  // Debian moved modules from /lib to /usr/lib with the merged-/usr layout.
  const candidates = [join(dir, 'lib', 'modules', kernelVersion), join(dir, 'usr', 'lib', 'modules', kernelVersion)];
  const modulesDir = (await Promise.all(candidates.map(exists))).findIndex(Boolean);
  if (!(await exists(vmlinuz))) throw new Error(`${deb} has no /boot/vmlinuz-${kernelVersion}`);
  if (!(await exists(config))) throw new Error(`${deb} has no /boot/config-${kernelVersion}`);
  if (modulesDir < 0) throw new Error(`${deb} has no /lib/modules/${kernelVersion}`);
  await checkBzImage(vmlinuz);
  return { vmlinuz, config, modulesDir: candidates[modulesDir]! };
}

/**
 * The package holding the kernel's real System.map: the image package ships a one-line
 * placeholder, the -dbg package of the same build (same source version) has the map.
 */
export function debugPackageOf(pkg: KernelPackage): KernelPackage {
  return { ...pkg, name: `${pkg.name}-dbg` };
}

/** A real System.map has thousands of symbols; the placeholder has one. */
const MIN_SYSTEM_MAP_SYMBOLS = 1000;
const SYSTEM_MAP_LINE = /^[0-9a-f]{16} [A-Za-z] \S+$/;

/**
 * Unpacks only /usr/lib/debug/boot/System.map-VERSION of the -dbg package into `dir` (the
 * package is 1.7 GB unpacked; tar stops reading once it has the member, which comes early)
 * and checks that it is a real map: `nm` lines, with _text.
 */
export async function extractSystemMap(deb: string, dir: string, kernelVersion: string): Promise<string> {
  const member = `./usr/lib/debug/boot/System.map-${kernelVersion}`;
  await runTool('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --occurrence=1 "$3"', 'sh', deb, dir, member], { timeoutMs: EXTRACT_TIMEOUT_MS });
  const path = join(dir, member);
  if (!(await exists(path))) throw new Error(`${deb} has no ${member.slice(1)}`);
  const lines = (await readFile(path, 'latin1')).split('\n').filter((l) => l !== '');
  const bad = lines.find((l) => !SYSTEM_MAP_LINE.test(l));
  if (bad !== undefined) throw new Error(`${path} is not a System.map: ${JSON.stringify(bad.slice(0, 80))}`);
  if (lines.length < MIN_SYSTEM_MAP_SYMBOLS || !lines.some((l) => l.endsWith(' _text'))) throw new Error(`${path} is a placeholder, not the kernel's symbol map`);
  return path;
}

/** The x86 boot protocol puts "HdrS" at 0x202 of every bzImage. */
async function checkBzImage(path: string): Promise<void> {
  const file = await open(path, 'r');
  const head = Buffer.alloc(4);
  try {
    await file.read(head, 0, 4, 0x202);
  } finally {
    await file.close();
  }
  if (head.toString('latin1') !== 'HdrS') throw new Error(`${path} is not an x86 bzImage (no "HdrS" at 0x202)`);
}
