/**
 * The authority's state directory (0700):
 *
 *   ca/key.pem                      the provider CA's Ed25519 private key (PKCS#8, 0600)
 *   ca/cert.pem                     the self-signed CA certificate; written last, so it marks a complete init
 *   enrollments/pending/<h>.json    one-time host enrollment tokens, named by the SHA-256 of the token
 *   enrollments/used/<h>.json       tokens already redeemed (kept as a record of who enrolled when)
 *   hosts/<hostId>.pem              the published certificate of each enrolled host
 *   ids/hpke-key.pem                the authority's X25519 key that IDS heartbeat keys are sealed to (0600);
 *                                   created at init, or on first open of an older directory
 *   ids/approvals/<id>.json         approved IDS measurements (src/authority/ids-approvals.ts)
 *   ids/sessions/<sessionId>        IDS session ids already signed for, so none is signed twice
 *
 * Files, not a database: every record is a whole file created or renamed atomically, so several
 * processes (`authority run` and `authority enroll-host`) can share the directory without locks.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createCa, validateCaMaterial, type CaMaterial } from './ca.ts';
import { generateHpkeKeyPair, hpkePublicKeyFromPrivate, type HpkeKeyPair } from '../crypto/hpke.ts';
import { createPrivateFile, ensurePrivateDir } from '../util/durable-file.ts';

export interface AuthorityPaths {
  dir: string;
  caKey: string;
  caCert: string;
  pendingTokens: string;
  usedTokens: string;
  hosts: string;
  idsKey: string;
  idsApprovals: string;
  idsSessions: string;
}

export interface Authority {
  paths: AuthorityPaths;
  ca: CaMaterial;
  /** SHA-256 of the CA certificate's DER, colon-separated upper-case hex (as `openssl x509 -fingerprint -sha256`). */
  caFingerprint: string;
  /** X25519 key pair for IDS heartbeat keys (HPKE); the CA signs its public half. */
  idsKey: HpkeKeyPair;
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
    idsKey: join(dir, 'ids', 'hpke-key.pem'),
    idsApprovals: join(dir, 'ids', 'approvals'),
    idsSessions: join(dir, 'ids', 'sessions'),
  };
}

export function certificateFingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256;
}

async function ensureLayout(paths: AuthorityPaths): Promise<void> {
  for (const dir of [paths.dir, join(paths.dir, 'ca'), join(paths.dir, 'enrollments'), paths.pendingTokens, paths.usedTokens, paths.hosts, join(paths.dir, 'ids'), paths.idsApprovals, paths.idsSessions]) {
    await ensurePrivateDir(dir);
  }
}

/** Loads the IDS key pair, creating it first if this directory predates it. */
async function loadIdsKey(paths: AuthorityPaths): Promise<HpkeKeyPair> {
  const pem = await readFile(paths.idsKey, 'utf8').catch(async (err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
    const pair = await generateHpkeKeyPair();
    const key = createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d: pair.privateKey.toString('base64url'), x: pair.publicKey.toString('base64url') }, format: 'jwk' });
    // createPrivateFile refuses to replace: of two processes opening at once, one key wins and both read it.
    await createPrivateFile(paths.idsKey, key.export({ format: 'pem', type: 'pkcs8' }).toString()).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    return readFile(paths.idsKey, 'utf8');
  });
  let privateKey: Buffer;
  try {
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType !== 'x25519') throw new Error(`key is ${key.asymmetricKeyType}, not X25519`);
    privateKey = Buffer.from(key.export({ format: 'jwk' }).d ?? '', 'base64url');
  } catch (err) {
    throw new AuthorityDirError(`${paths.idsKey}: ${(err as Error).message}`);
  }
  return { privateKey, publicKey: hpkePublicKeyFromPrivate(privateKey) };
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
  return { paths, ca, caFingerprint: certificateFingerprint(ca.certPem), idsKey: await loadIdsKey(paths) };
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
  return { paths, ca, caFingerprint: certificateFingerprint(ca.certPem), idsKey: await loadIdsKey(paths) };
}
