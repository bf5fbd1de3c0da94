/**
 * Agentless file integrity of a guest disk (seed 003's filter driver, from outside): the monitor
 * reads the decrypted disk, finds the ext4 or NTFS file system, hashes regular files (all, or the
 * listed paths and everything under listed directories) with SHA-256, compares with a baseline, and
 * emits an IMA-style measurement list. Files the readers cannot decode (NTFS compressed/encrypted,
 * ext4 inline-data or fscrypt-encrypted) are listed as unsupported, never silently skipped.
 */
import { createHash } from 'node:crypto';
import { diffBaseline, type Baseline, type BaselineDiff } from '../../formats/file-baseline.ts';
import { INODE_FLAG, isRegular } from '../../formats/ext4/index.ts';
import { openGuestVolume, type GuestVolume, type ReadAt } from './guest-volume.ts';
import { formatMeasurementList } from '../../formats/ima-ng-list.ts';

export interface ScanOptions {
  /** Limit the scan to these paths (files, or directories scanned recursively). */
  paths?: readonly string[];
  baseline?: Baseline;
  /** Refuse to go on past this many files (hostile trees). */
  maxFiles?: number;
}

export interface ScanResult {
  filesystem: 'ext4' | 'ntfs';
  /** Byte offset of the file system on the disk. */
  offset: number;
  files: Array<{ path: string; size: number; sha256: string }>;
  unsupported: Array<{ path: string; reason: string }>;
  /** Listed paths that do not exist. */
  missing: string[];
  bytesHashed: number;
  measurementList: string;
  diff?: BaselineDiff;
}

interface Candidate {
  path: string;
  size: number;
  unsupported?: string;
  chunks: () => AsyncIterable<Uint8Array>;
}

const DEFAULT_MAX_FILES = 1_000_000;

function inScope(paths: readonly string[] | undefined): (p: string) => boolean {
  if (!paths) return () => true;
  const roots = paths.map((p) => `/${p.split('/').filter(Boolean).join('/')}`);
  return (p) => roots.some((r) => r === '/' || p === r || p.startsWith(`${r}/`));
}

async function* candidates(vol: GuestVolume): AsyncGenerator<Candidate> {
  if (vol.kind === 'ntfs') {
    for (const e of vol.fs.walk()) {
      if (e.isDirectory) continue;
      yield { path: e.path, size: e.size, ...(e.unsupported ? { unsupported: e.unsupported } : {}), chunks: () => vol.fs.chunks(e) };
    }
    return;
  }
  const fs = vol.fs;
  for await (const { path, inode } of fs.walk()) {
    if (!isRegular(inode)) continue;
    const unsupported = inode.flags & INODE_FLAG.INLINE_DATA ? 'inline data' : inode.flags & INODE_FLAG.ENCRYPT ? 'encrypted (fscrypt)' : undefined;
    yield { path, size: inode.size, ...(unsupported ? { unsupported } : {}), chunks: () => fs.contents(inode) };
  }
}

/** Scans a disk (`read` over its decrypted bytes, `diskSize` long). */
export async function scanDisk(read: ReadAt, diskSize: number, options: ScanOptions = {}): Promise<ScanResult> {
  const vol = await openGuestVolume(read, diskSize);
  if (options.baseline && options.baseline.filesystem !== vol.kind) throw new Error(`baseline is for ${options.baseline.filesystem}, the disk holds ${vol.kind}`);
  const scope = inScope(options.paths);
  const maxFiles = options.maxFiles ?? DEFAULT_MAX_FILES;
  const result: ScanResult = { filesystem: vol.kind, offset: vol.offset, files: [], unsupported: [], missing: [], bytesHashed: 0, measurementList: '' };
  const seen = new Set<string>();
  // NTFS paths compare case-insensitively, as Windows does.
  const key = (p: string): string => (vol.kind === 'ntfs' ? p.toLowerCase() : p);
  const listed = (options.paths ?? []).map((p) => `/${p.split('/').filter(Boolean).join('/')}`);
  const ntfsScope = vol.kind === 'ntfs' ? inScope(listed.map((p) => p.toLowerCase())) : scope;
  for await (const c of candidates(vol)) {
    if (options.paths && !ntfsScope(key(c.path))) continue;
    if (seen.size >= maxFiles) throw new Error(`more than ${maxFiles} files to scan`);
    seen.add(key(c.path));
    if (c.unsupported) {
      result.unsupported.push({ path: c.path, reason: c.unsupported });
      continue;
    }
    const h = createHash('sha256');
    for await (const chunk of c.chunks()) {
      h.update(chunk);
      result.bytesHashed += chunk.length;
    }
    result.files.push({ path: c.path, size: c.size, sha256: h.digest('hex') });
  }
  for (const p of listed) if (![...seen].some((s) => s === key(p) || s.startsWith(`${key(p)}/`))) result.missing.push(p);
  result.measurementList = formatMeasurementList(result.files);
  if (options.baseline) {
    const scanned = new Map(result.files.map((f) => [f.path, f.sha256]));
    // A file that became unreadable (e.g. compressed since) is listed as unsupported, not as removed.
    const unreadable = new Set(result.unsupported.map((u) => u.path));
    result.diff = diffBaseline(options.baseline, scanned, (p) => !unreadable.has(p) && (!options.paths || ntfsScope(key(p))));
  }
  return result;
}
