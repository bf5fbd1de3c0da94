/**
 * The authority's state directory (0700):
 *
 *   ca/key.pem                      the provider CA's Ed25519 private key (PKCS#8, 0600)
 *   ca/cert.pem                     the self-signed CA certificate; written last, so it marks a complete init
 *   enrollments/pending/<h>.json    one-time host enrollment tokens, named by the SHA-256 of the token
 *   enrollments/used/<h>.json       tokens already redeemed (kept as a record of who enrolled when)
 *   hosts/<hostId>.pem              the published certificate of each enrolled host
 *
 * Files, not a database: every record is a whole file created or renamed atomically, so several
 * processes (`authority run` and `authority enroll-host`) can share the directory without locks.
 */
import { X509Certificate } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createCa, validateCaMaterial, type CaMaterial } from './ca.ts';
import { createPrivateFile, ensurePrivateDir } from '../util/durable-file.ts';

export interface AuthorityPaths {
  dir: string;
  caKey: string;
  caCert: string;
  pendingTokens: string;
  usedTokens: string;
  hosts: string;
}

export interface Authority {
  paths: AuthorityPaths;
  ca: CaMaterial;
  /** SHA-256 of the CA certificate's DER, colon-separated upper-case hex (as `openssl x509 -fingerprint -sha256`). */
  caFingerprint: string;
}

/** The authority directory is missing, incomplete or unusable. */
export class AuthorityDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthorityDirError';
  }
}

export function authorityPaths(dir: string): AuthorityPaths {
  return {
    dir,
    caKey: join(dir, 'ca', 'key.pem'),
    caCert: join(dir, 'ca', 'cert.pem'),
    pendingTokens: join(dir, 'enrollments', 'pending'),
    usedTokens: join(dir, 'enrollments', 'used'),
    hosts: join(dir, 'hosts'),
  };
}

export function certificateFingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256;
}

async function ensureLayout(paths: AuthorityPaths): Promise<void> {
  for (const dir of [paths.dir, join(paths.dir, 'ca'), join(paths.dir, 'enrollments'), paths.pendingTokens, paths.usedTokens, paths.hosts]) {
    await ensurePrivateDir(dir);
  }
}

/** Creates a new provider CA in `dir`, which must be absent or empty: an existing CA is never replaced. */
export async function initAuthority(dir: string, opts: { commonName?: string; validityDays?: number } = {}): Promise<Authority> {
  const existing = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  if (existing.length > 0) throw new AuthorityDirError(`${dir} is not empty; refusing to create a CA over existing state`);
  const paths = authorityPaths(dir);
  await ensureLayout(paths);
  const ca = await createCa({ commonName: opts.commonName ?? 'vmseal provider CA', ...(opts.validityDays !== undefined ? { validityDays: opts.validityDays } : {}) });
  await createPrivateFile(paths.caKey, ca.privateKeyPem);
  await createPrivateFile(paths.caCert, ca.certPem);
  return { paths, ca, caFingerprint: certificateFingerprint(ca.certPem) };
}

/** Opens an initialised authority directory and checks that its CA key and certificate belong together. */
export async function openAuthority(dir: string): Promise<Authority> {
  const paths = authorityPaths(dir);
  let ca: CaMaterial;
  try {
    ca = { certPem: await readFile(paths.caCert, 'utf8'), privateKeyPem: await readFile(paths.caKey, 'utf8') };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new AuthorityDirError(`${dir} holds no authority; run \`vmseal authority init --dir ${dir}\` first`);
    throw err;
  }
  try {
    await validateCaMaterial(ca);
  } catch (err) {
    throw new AuthorityDirError(`${dir}: ${(err as Error).message}`);
  }
  await ensureLayout(paths);
  return { paths, ca, caFingerprint: certificateFingerprint(ca.certPem) };
}
