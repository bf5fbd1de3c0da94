/**
 * manifest.json of a cached guest build: which artifacts are done, from which recipe. An
 * artifact counts as built only when its entry is here, its recipe matches and its file has the
 * recorded size; the manifest is rewritten atomically after each artifact lands.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writePrivateFileAtomic } from '../util/durable-file.ts';

/** systemMap is the kernel package's boot/System.map: an oracle for kernel symbol addresses. */
export const ARTIFACT_FILES = { kernel: 'vmlinuz', initrd: 'initrd.img', disk: 'disk.raw', systemMap: 'System.map' } as const;
export type ArtifactKind = keyof typeof ARTIFACT_FILES;
export const MANIFEST_FILE = 'manifest.json';

const artifactSchema = z.object({
  file: z.string(),
  bytes: z.number().int().nonnegative(),
  recipe: z.string(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
});

const manifestSchema = z.object({
  kernelVersion: z.string(),
  kernelPackage: z.object({ name: z.string(), version: z.string() }),
  cmdline: z.string(),
  modules: z.array(z.string()).optional(),
  /** Debian packages the disk's root filesystem takes files from, with their versions. */
  rootfsPackages: z.array(z.object({ name: z.string(), version: z.string() })).optional(),
  artifacts: z.object({
    kernel: artifactSchema.optional(),
    initrd: artifactSchema.optional(),
    disk: artifactSchema.optional(),
    systemMap: artifactSchema.optional(),
  }),
  updatedAt: z.string(),
});

export type Manifest = z.infer<typeof manifestSchema>;
export type ArtifactRecord = z.infer<typeof artifactSchema>;

/** The manifest in `dir`, or undefined when it is missing or not one of ours. */
export async function readManifest(dir: string): Promise<Manifest | undefined> {
  const text = await readFile(join(dir, MANIFEST_FILE), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const parsed = manifestSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the artifact is recorded with `recipe` (any recipe when undefined) and its file is intact. */
export async function artifactReady(dir: string, manifest: Manifest | undefined, kind: ArtifactKind, recipe?: string): Promise<boolean> {
  const record = manifest?.artifacts[kind];
  if (!record || record.file !== ARTIFACT_FILES[kind]) return false;
  if (recipe !== undefined && record.recipe !== recipe) return false;
  const st = await stat(join(dir, record.file)).catch(() => undefined);
  return st !== undefined && st.isFile() && st.size === record.bytes;
}

/** Writes `data` to `path` so that `path` is either absent/old or complete (0644: the cache is not secret). */
export function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  return writePrivateFileAtomic(path, data, 0o644);
}

export async function writeManifest(dir: string, manifest: Manifest): Promise<void> {
  await writeFileAtomic(join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
}
