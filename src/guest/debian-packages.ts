/**
 * Debian packages for the guest's root filesystem, taken from the package archive (apt metadata,
 * apt-get download, dpkg-deb -x) and never from the host's installed files, so the guest depends
 * only on package versions. Used for tpm2-tools and the shared libraries it needs.
 */
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AptMetadataError, KernelDownloadError, parseControlStanza, parseDepends } from './kernel-package.ts';
import { runTool, ToolError } from './run-tool.ts';

export interface DebPackage {
  name: string;
  version: string;
}

export interface UnpackedPackage extends DebPackage {
  /** Where dpkg-deb -x unpacked it. */
  root: string;
  /** First alternative of each Depends and Pre-Depends entry: what the package was built against. */
  depends: string[];
}

const APT_TIMEOUT_MS = 60_000;
const DOWNLOAD_TIMEOUT_MS = 10 * 60_000;
const EXTRACT_TIMEOUT_MS = 5 * 60_000;
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
const DEBIAN_VERSION = /^[A-Za-z0-9.+~:-]+$/;

/** Every stanza of control-style output with several packages. */
export function parseControlStanzas(text: string): Array<Map<string, string>> {
  return text
    .split(/\n[ \t]*\n/)
    .filter((chunk) => chunk.trim() !== '')
    .map((chunk) => parseControlStanza(chunk));
}

/** First alternative of each relation in a Depends-style field. */
export function firstAlternatives(field: string | undefined): string[] {
  if (field === undefined || field.trim() === '') return [];
  return field.split(',').map((rel) => parseDepends(rel.split('|')[0]!)[0]!.name);
}

interface Candidate extends DebPackage {
  depends: string[];
}

/** The candidate version of each package, from local apt metadata, in one apt-cache call. */
async function candidates(names: readonly string[]): Promise<Candidate[]> {
  for (const n of names) if (!PACKAGE_NAME.test(n)) throw new AptMetadataError(`${JSON.stringify(n)} is not a Debian package name`);
  let text: string;
  try {
    text = (await runTool('apt-cache', ['show', '--no-all-versions', ...names], { timeoutMs: APT_TIMEOUT_MS })).stdout.toString('utf8');
  } catch (err) {
    if (err instanceof ToolError) throw new AptMetadataError(`apt-cache show ${names.join(' ')} failed: ${err.message}; run \`apt-get update\` first`);
    throw err;
  }
  const byName = new Map<string, Candidate>();
  for (const f of parseControlStanzas(text)) {
    const name = f.get('Package');
    const version = f.get('Version');
    if (name === undefined || version === undefined || !DEBIAN_VERSION.test(version)) continue;
    byName.set(name, { name, version, depends: [...firstAlternatives(f.get('Pre-Depends')), ...firstAlternatives(f.get('Depends'))] });
  }
  return names.map((n) => {
    const c = byName.get(n);
    if (!c) throw new AptMetadataError(`apt knows no installable package ${n}; run \`apt-get update\` first`);
    return c;
  });
}

/** Current candidate versions of `names` (for a build recipe; nothing is downloaded). */
export async function candidateVersions(names: readonly string[]): Promise<DebPackage[]> {
  return (await candidates(names)).map(({ name, version }) => ({ name, version }));
}

/**
 * Downloads the candidate versions of `names` into `dir` with one apt-get call (apt checks each
 * against the signed index), checks that each .deb is what was asked for and unpacks each into
 * its own directory under `dir`.
 */
export async function fetchPackages(names: readonly string[], dir: string): Promise<UnpackedPackage[]> {
  const wanted = await candidates(names);
  const downloads = join(dir, 'debs');
  await mkdir(downloads, { recursive: true });
  const before = new Set(await readdir(downloads));
  const sandbox = process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : [];
  try {
    await runTool('apt-get', [...sandbox, '-q', 'download', ...wanted.map((p) => `${p.name}=${p.version}`)], { cwd: downloads, timeoutMs: DOWNLOAD_TIMEOUT_MS });
  } catch (err) {
    if (err instanceof ToolError) throw new KernelDownloadError(`downloading ${names.join(' ')} failed: ${err.message}`);
    throw err;
  }
  const debs = (await readdir(downloads)).filter((f) => f.endsWith('.deb') && !before.has(f));
  const out: UnpackedPackage[] = [];
  for (const file of debs) {
    const deb = join(downloads, file);
    const f = parseControlStanza((await runTool('dpkg-deb', ['-f', deb, 'Package', 'Version'], { timeoutMs: APT_TIMEOUT_MS })).stdout.toString('utf8'));
    const p = wanted.find((w) => w.name === f.get('Package') && w.version === f.get('Version'));
    if (!p || out.some((o) => o.name === p.name)) throw new KernelDownloadError(`${file} is ${f.get('Package')} ${f.get('Version')}, which was not asked for`);
    const root = join(dir, 'unpacked', p.name);
    await mkdir(root, { recursive: true });
    await runTool('dpkg-deb', ['-x', deb, root], { timeoutMs: EXTRACT_TIMEOUT_MS });
    out.push({ ...p, root });
  }
  const absent = wanted.filter((w) => !out.some((o) => o.name === w.name));
  if (absent.length > 0) throw new KernelDownloadError(`apt-get download did not fetch ${absent.map((p) => p.name).join(' ')}`);
  return wanted.map((w) => out.find((o) => o.name === w.name)!);
}
