/**
 * Bundles a program (the enclave, or a test probe run in the same sandbox) into ONE CommonJS file with
 * esbuild, so the enclave process needs to read exactly one file and its measurement covers all of its
 * code. Output is deterministic: same sources and esbuild version → same bytes.
 *
 * Cache: $VMSEAL_CACHE/enclave/ holds `bundle-<sha256>.cjs` and, per entry point, an index naming the
 * input files (from esbuild's metafile) with their hashes. When every input still hashes the same, the
 * cached bundle is used without running esbuild; its own hash is checked before it is returned.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, version as esbuildVersion } from 'esbuild';
import { z } from 'zod';
import { ensurePrivateDir, writePrivateFileAtomic } from '../../util/durable-file.ts';

/** The repository root: esbuild resolves from here and names inputs relative to it, whatever the cwd. */
export const SOURCE_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const ENCLAVE_ENTRY = join(SOURCE_ROOT, 'src', 'ids', 'enclave', 'enclave-main.ts');

export interface Bundle {
  path: string;
  bytes: Buffer;
  sha256: string;
}

const indexSchema = z.strictObject({
  esbuild: z.string(),
  bundle: z.string().regex(/^bundle-[0-9a-f]{64}\.cjs$/),
  inputs: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)),
});

export function defaultCacheDir(): string {
  return process.env.VMSEAL_CACHE || join(homedir(), '.cache', 'vmseal');
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function cachedBundle(dir: string, indexPath: string): Promise<Bundle | undefined> {
  let index: z.output<typeof indexSchema>;
  try {
    index = indexSchema.parse(JSON.parse(await readFile(indexPath, 'utf8')));
  } catch {
    return undefined;
  }
  if (index.esbuild !== esbuildVersion) return undefined;
  for (const [input, hash] of Object.entries(index.inputs)) {
    const bytes = await readFile(join(SOURCE_ROOT, input)).catch(() => undefined);
    if (!bytes || sha256(bytes) !== hash) return undefined;
  }
  const path = join(dir, index.bundle);
  const bytes = await readFile(path).catch(() => undefined);
  if (!bytes || `bundle-${sha256(bytes)}.cjs` !== index.bundle) return undefined;
  return { path, bytes, sha256: sha256(bytes) };
}

/** Returns the bundle of `entry` (default: the enclave), from the cache when its sources are unchanged. */
export async function bundleProgram(opts: { entry?: string; cacheDir?: string } = {}): Promise<Bundle> {
  const entry = resolve(opts.entry ?? ENCLAVE_ENTRY);
  const dir = join(opts.cacheDir ?? defaultCacheDir(), 'enclave');
  await ensurePrivateDir(dir);
  const indexPath = join(dir, `index-${sha256(Buffer.from(relative(SOURCE_ROOT, entry))).slice(0, 16)}.json`);
  const cached = await cachedBundle(dir, indexPath);
  if (cached) return cached;

  const result = await build({
    entryPoints: [entry],
    absWorkingDir: SOURCE_ROOT,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    write: false,
    metafile: true,
    legalComments: 'none',
    charset: 'utf8',
    logLevel: 'silent',
  });
  const out = result.outputFiles[0];
  if (!out || result.outputFiles.length !== 1) throw new Error(`esbuild produced ${result.outputFiles.length} files for ${entry}, expected one`);
  const bytes = Buffer.from(out.contents);
  const hash = sha256(bytes);
  const name = `bundle-${hash}.cjs`;
  const path = join(dir, name);
  await writePrivateFileAtomic(path, bytes);
  const inputs: Record<string, string> = {};
  for (const input of Object.keys(result.metafile.inputs)) inputs[input] = sha256(await readFile(join(SOURCE_ROOT, input)));
  await writePrivateFileAtomic(indexPath, JSON.stringify({ esbuild: esbuildVersion, bundle: name, inputs }));
  return { path, bytes, sha256: hash };
}
