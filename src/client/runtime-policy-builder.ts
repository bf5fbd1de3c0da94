// Builds a Keylime-format runtime policy (the JSON that keylime_create_policy writes) from a guest's
// root file system read offline: the SHA-256 of every executable and shared library, keyed by its path.
// Symlinks are not listed: IMA logs the path of the file actually opened (d_path), i.e. the target.
import { createHash } from 'node:crypto';
import { Ext4, isRegular, type Inode } from '../formats/ext4/index.ts';

/** Paths whose contents change at run time or are not files; Python regexes anchored at the start. */
export const DEFAULT_EXCLUDES = ['/tmp/.*', '/proc/.*', '/sys/.*', '/dev/.*', '/run/.*', '/var/run/.*', '/var/log/.*', '/var/tmp/.*', '/var/cache/.*', '/lost\\+found/.*'];

const LIBRARY = /\.so(\.\d+)*$|\.ko(\.(xz|zst|gz))?$/;

export interface BuildPolicyOptions {
  /** Every regular file, not only executables and libraries (for IMA policies that measure reads, like tcb). */
  allFiles?: boolean;
  excludes?: string[];
  /** Files larger than this are skipped and reported (default 1 GiB). */
  maxFileBytes?: number;
  onFile?: (path: string) => void;
}

export interface KeylimePolicyJson {
  meta: { version: 1; generator: number; timestamp: string };
  release: number;
  digests: Record<string, string[]>;
  excludes: string[];
  keyrings: Record<string, string[]>;
  ima: { ignored_keyrings: string[]; log_hash_alg: 'sha1'; dm_policy: null };
  'ima-buf': Record<string, string[]>;
  'verification-keys': string;
}

export interface BuiltPolicy {
  policy: KeylimePolicyJson;
  files: number;
  skipped: string[];
}

const isExecutable = (i: Inode) => (i.mode & 0o111) !== 0;

export async function buildRuntimePolicy(fs: Ext4, opts: BuildPolicyOptions = {}): Promise<BuiltPolicy> {
  const excludes = opts.excludes ?? DEFAULT_EXCLUDES;
  const excluded = excludes.length ? new RegExp(`^(?:(${excludes.join(')|(')}))`) : null;
  const max = opts.maxFileBytes ?? 1024 ** 3;
  const digests: Record<string, string[]> = {};
  const skipped: string[] = [];
  let files = 0;
  for await (const { path, inode } of fs.walk('/')) {
    if (excluded?.test(path)) continue;
    if (!isRegular(inode) || !(opts.allFiles || isExecutable(inode) || LIBRARY.test(path))) continue;
    if (inode.size > max) {
      skipped.push(path);
      continue;
    }
    const h = createHash('sha256');
    for await (const c of fs.contents(inode)) h.update(c);
    digests[path] = [h.digest('hex')];
    files++;
    opts.onFile?.(path);
  }
  return {
    policy: {
      meta: { version: 1, generator: 0, timestamp: new Date().toISOString() },
      release: 0,
      digests,
      excludes,
      keyrings: {},
      ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: null },
      'ima-buf': {},
      'verification-keys': '',
    },
    files,
    skipped,
  };
}
