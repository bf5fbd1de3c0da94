/**
 * The tenant's file-integrity baseline: path → SHA-256 of the contents, as a versioned JSON file.
 * Validated with zod on load (a baseline is external input); `diffBaseline` classifies a scan.
 */
import { z } from 'zod';

export const BASELINE_MAX_BYTES = 64 << 20;

export const baselineSchema = z.strictObject({
  v: z.literal(1),
  algorithm: z.literal('sha256'),
  /** "ext4" or "ntfs": a baseline taken on one file system is not compared with the other. */
  filesystem: z.enum(['ext4', 'ntfs']),
  createdAt: z.iso.datetime(),
  files: z.record(z.string().min(1).max(4096).startsWith('/'), z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lower-case hex digits')),
});
export type Baseline = z.output<typeof baselineSchema>;

export function parseBaseline(bytes: Uint8Array): Baseline {
  if (bytes.length > BASELINE_MAX_BYTES) throw new Error(`baseline: ${bytes.length} bytes is over the limit of ${BASELINE_MAX_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new Error('baseline: not valid JSON');
  }
  const r = baselineSchema.safeParse(json);
  if (!r.success) throw new Error(`baseline: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return r.data;
}

export interface BaselineDiff {
  added: string[];
  modified: string[];
  removed: string[];
}

/**
 * Compares scanned digests with a baseline. When `scope` is given (the paths the scan was limited
 * to), baseline files outside it are not reported as removed.
 */
export function diffBaseline(baseline: Baseline, scanned: ReadonlyMap<string, string>, scope?: (path: string) => boolean): BaselineDiff {
  const diff: BaselineDiff = { added: [], modified: [], removed: [] };
  for (const [path, digest] of scanned) {
    const old = baseline.files[path];
    if (old === undefined) diff.added.push(path);
    else if (old !== digest) diff.modified.push(path);
  }
  for (const path of Object.keys(baseline.files)) if (!scanned.has(path) && (!scope || scope(path))) diff.removed.push(path);
  diff.added.sort();
  diff.modified.sort();
  diff.removed.sort();
  return diff;
}

export function makeBaseline(filesystem: 'ext4' | 'ntfs', scanned: ReadonlyMap<string, string>, now = new Date()): Baseline {
  return { v: 1, algorithm: 'sha256', filesystem, createdAt: now.toISOString(), files: Object.fromEntries([...scanned].sort(([a], [b]) => (a < b ? -1 : 1))) };
}
