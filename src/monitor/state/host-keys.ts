/**
 * The host's HPKE key pair and its certificate, in the monitor's state directory (0700):
 *
 *   hpke-private.pem   X25519 private key, PKCS#8 PEM (0600), readable by `openssl pkey`
 *   host.json          { version, hostId, hpkePublicKey (base64), createdAt }; written after the key,
 *                      so its presence marks a complete key pair
 *   host-cert.pem      the certificate the authority issued for the key (absent until enrolled)
 *   ca-cert.pem        the provider CA certificate pinned at enrollment: it verifies the authority's
 *                      IDS registration signatures (absent for hosts enrolled before it was kept)
 *
 * Loading re-derives the public key from the private key and checks that host.json and the
 * certificate name that same key, so a swapped or mixed-up file is refused rather than used.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { HOST_ID_PATTERN } from '../../formats/protocol/host-certificate.ts';
import { writePrivateFileAtomic } from '../../util/durable-file.ts';
import { generateHpkeKeyPair, hpkePublicKeyFromPrivate } from '../../crypto/hpke.ts';

export const HOST_PRIVATE_KEY_FILE = 'hpke-private.pem';
export const HOST_INFO_FILE = 'host.json';
export const HOST_CERTIFICATE_FILE = 'host-cert.pem';
export const CA_CERTIFICATE_FILE = 'ca-cert.pem';

export interface HostKeys {
  hostId: string;
  /** Raw 32-byte X25519 public key. */
  publicKey: Buffer;
  /** Raw 32-byte X25519 private key. */
  privateKey: Buffer;
  /** The authority's certificate for publicKey, once the host has enrolled. */
  certificatePem: string | undefined;
  /** The provider CA certificate pinned at enrollment. */
  caCertificatePem: string | undefined;
}

/** Host key state that is missing, unsafe or inconsistent. */
export class HostKeysError extends Error {
  readonly code: 'NO_KEYS' | 'EXISTS' | 'INSECURE' | 'CORRUPT' | 'MISMATCH';
  constructor(code: HostKeysError['code'], message: string) {
    super(message);
    this.name = 'HostKeysError';
    this.code = code;
  }
}

const hostInfoSchema = z.strictObject({
  version: z.literal(1),
  hostId: z.string().regex(HOST_ID_PATTERN),
  hpkePublicKey: z.string().regex(/^[A-Za-z0-9+/]{43}=$/),
  createdAt: z.iso.datetime(),
});

function rawX25519(key: KeyObject, part: 'd' | 'x'): Buffer {
  return Buffer.from(key.export({ format: 'jwk' })[part] ?? '', 'base64url');
}

/** Refuses a state directory or private key that other users could read or replace. */
async function checkPrivate(path: string, kind: 'dir' | 'file'): Promise<void> {
  const st = await stat(path);
  if ((st.mode & 0o077) !== 0) {
    throw new HostKeysError('INSECURE', `${path} is accessible to other users (mode ${(st.mode & 0o777).toString(8)}); it must be 0${kind === 'dir' ? '700' : '600'}`);
  }
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

/**
 * Creates a fresh key pair for `hostId` in `dir` (created 0700). Refuses when keys already exist,
 * unless `force`, which also drops the old key's certificate.
 */
export async function initHostKeys(dir: string, hostId: string, opts: { force?: boolean } = {}): Promise<HostKeys> {
  if (typeof hostId !== 'string' || !HOST_ID_PATTERN.test(hostId)) throw new Error(`host id must match ${HOST_ID_PATTERN}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const infoPath = join(dir, HOST_INFO_FILE);
  if (!opts.force && (await exists(infoPath))) throw new HostKeysError('EXISTS', `${dir} already holds host keys; use --force to replace them`);

  const pair = await generateHpkeKeyPair();
  const privateKey = createPrivateKey({
    key: { kty: 'OKP', crv: 'X25519', d: pair.privateKey.toString('base64url'), x: pair.publicKey.toString('base64url') },
    format: 'jwk',
  });
  // Old info and certificate go first: a crash part-way leaves "no keys", never a certificate for a key that is gone.
  await rm(infoPath, { force: true });
  await rm(join(dir, HOST_CERTIFICATE_FILE), { force: true });
  await writePrivateFileAtomic(join(dir, HOST_PRIVATE_KEY_FILE), privateKey.export({ format: 'pem', type: 'pkcs8' }).toString());
  const info: z.infer<typeof hostInfoSchema> = { version: 1, hostId, hpkePublicKey: pair.publicKey.toString('base64'), createdAt: new Date().toISOString() };
  await writePrivateFileAtomic(infoPath, `${JSON.stringify(info, null, 2)}\n`);
  await rm(join(dir, CA_CERTIFICATE_FILE), { force: true });
  return { hostId, publicKey: pair.publicKey, privateKey: pair.privateKey, certificatePem: undefined, caCertificatePem: undefined };
}

/** The public key a PEM certificate certifies, if it is an X25519 key. */
function certifiedX25519Key(certificatePem: string): Buffer | undefined {
  const key = new X509Certificate(certificatePem).publicKey;
  return key.asymmetricKeyType === 'x25519' ? rawX25519(key, 'x') : undefined;
}

export async function loadHostKeys(dir: string): Promise<HostKeys> {
  const infoPath = join(dir, HOST_INFO_FILE);
  let infoText: string;
  try {
    infoText = await readFile(infoPath, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new HostKeysError('NO_KEYS', `${dir} holds no host keys; run \`vmseal host init\` first`);
    throw err;
  }
  await checkPrivate(dir, 'dir');
  const keyPath = join(dir, HOST_PRIVATE_KEY_FILE);
  await checkPrivate(keyPath, 'file');

  let info: z.infer<typeof hostInfoSchema>;
  let privateKey: Buffer;
  let publicKey: Buffer;
  try {
    info = hostInfoSchema.parse(JSON.parse(infoText));
    const key = createPrivateKey(await readFile(keyPath, 'utf8'));
    if (key.asymmetricKeyType !== 'x25519') throw new Error(`private key is ${key.asymmetricKeyType}, not X25519`);
    privateKey = rawX25519(key, 'd');
    publicKey = hpkePublicKeyFromPrivate(privateKey);
  } catch (err) {
    throw new HostKeysError('CORRUPT', `unreadable host keys in ${dir}: ${(err as Error).message}`);
  }
  if (!publicKey.equals(Buffer.from(info.hpkePublicKey, 'base64'))) {
    throw new HostKeysError('MISMATCH', `${join(dir, HOST_INFO_FILE)} names a different public key than ${HOST_PRIVATE_KEY_FILE} holds`);
  }

  let certificatePem: string | undefined;
  try {
    certificatePem = await readFile(join(dir, HOST_CERTIFICATE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (certificatePem !== undefined) {
    let certified: Buffer | undefined;
    try {
      certified = certifiedX25519Key(certificatePem);
    } catch (err) {
      throw new HostKeysError('CORRUPT', `unreadable host certificate in ${dir}: ${(err as Error).message}`);
    }
    if (!certified?.equals(publicKey)) throw new HostKeysError('MISMATCH', `${HOST_CERTIFICATE_FILE} certifies a different key than the host holds`);
  }
  const caCertificatePem = await readFile(join(dir, CA_CERTIFICATE_FILE), 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  return { hostId: info.hostId, publicKey, privateKey, certificatePem, caCertificatePem };
}

/**
 * Stores the certificate for the host's current key. The caller has verified it against the CA; this
 * only refuses a certificate for another key.
 */
export async function saveHostCertificate(dir: string, certificatePem: string): Promise<void> {
  const keys = await loadHostKeys(dir);
  let certified: Buffer | undefined;
  try {
    certified = certifiedX25519Key(certificatePem);
  } catch (err) {
    throw new HostKeysError('CORRUPT', `not a certificate: ${(err as Error).message}`);
  }
  if (!certified?.equals(keys.publicKey)) throw new HostKeysError('MISMATCH', 'the certificate is for a different key than this host holds');
  await writePrivateFileAtomic(join(dir, HOST_CERTIFICATE_FILE), certificatePem);
}

/** Pins the provider CA certificate (the caller has checked it: fingerprint and the host certificate's chain). */
export async function saveCaCertificate(dir: string, caCertificatePem: string): Promise<void> {
  try {
    if (!new X509Certificate(caCertificatePem).ca) throw new Error('not a CA certificate');
  } catch (err) {
    throw new HostKeysError('CORRUPT', `not a CA certificate: ${(err as Error).message}`);
  }
  await writePrivateFileAtomic(join(dir, CA_CERTIFICATE_FILE), caCertificatePem);
}
