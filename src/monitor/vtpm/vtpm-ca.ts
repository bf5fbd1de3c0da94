/**
 * The host's vTPM CA: the key swtpm_localca signs each VM's EK certificate with. It lives in the host dir
 * next to the HPKE key (0600), made on first use. Its certificate is self-issued until the authority
 * certifies it (installVtpmCaCertificate); the key never changes, so EK certificates issued before stay valid.
 */
import 'reflect-metadata'; // @peculiar/x509 resolves its internals through tsyringe, which needs it first.
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, webcrypto } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export const VTPM_CA_KEY_FILE = 'vtpm-ca-key.pem';
export const VTPM_CA_CERT_FILE = 'vtpm-ca-cert.pem';
const VALIDITY_DAYS = 3650;
const DAY_MS = 86_400_000;
const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;

export interface VtpmCa {
  keyPath: string;
  certPath: string;
}

async function readIfExists(path: string): Promise<string | undefined> {
  return readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
}

/** The vTPM CA of the host whose keys are in `hostDir`, created (RSA-2048, self-issued) when missing. */
export async function ensureVtpmCa(hostDir: string, hostId: string): Promise<VtpmCa> {
  const keyPath = join(hostDir, VTPM_CA_KEY_FILE);
  const certPath = join(hostDir, VTPM_CA_CERT_FILE);
  let keyPem = await readIfExists(keyPath);
  if (keyPem === undefined) {
    // RSA because swtpm_cert (GnuTLS) signs EK certificates with it on every swtpm version Debian ships.
    keyPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    await writeFile(keyPath, keyPem, { mode: 0o600, flag: 'wx' }).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e; // made concurrently by another launch: use that one
      keyPem = await readFile(keyPath, 'utf8');
    });
  }
  if ((await readIfExists(certPath)) === undefined) {
    await writeFile(certPath, await selfIssued(keyPem!, hostId), { mode: 0o644, flag: 'wx' }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
  return { keyPath, certPath };
}

async function selfIssued(keyPem: string, hostId: string): Promise<string> {
  const priv = createPrivateKey(keyPem);
  const privateKey = await webcrypto.subtle.importKey('pkcs8', priv.export({ format: 'der', type: 'pkcs8' }), RSA, false, ['sign']);
  const publicKey = await webcrypto.subtle.importKey('spki', createPublicKey(priv).export({ format: 'der', type: 'spki' }), RSA, true, ['verify']);
  const now = Date.now();
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial.toString('hex'),
    name: [{ CN: [`vmseal vTPM CA ${hostId}`] }],
    keys: { privateKey, publicKey },
    signingAlgorithm: RSA,
    notBefore: new Date(now - 5 * 60_000),
    notAfter: new Date(now + VALIDITY_DAYS * DAY_MS),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
    ],
  });
  return cert.toString('pem');
}

/** The vTPM CA public key (SPKI PEM), for the authority to certify. */
export async function vtpmCaPublicKeyPem(ca: VtpmCa): Promise<string> {
  return createPublicKey(await readFile(ca.keyPath, 'utf8')).export({ format: 'pem', type: 'spki' }).toString();
}

/** Replaces the self-issued certificate with one for the same key (from the authority); refuses any other key. */
export async function installVtpmCaCertificate(ca: VtpmCa, certPem: string): Promise<void> {
  const cert = new x509.X509Certificate(certPem);
  const mine = createPublicKey(await readFile(ca.keyPath, 'utf8')).export({ format: 'der', type: 'spki' });
  if (!Buffer.from(cert.publicKey.rawData).equals(mine)) throw new Error('vTPM CA certificate is for another key');
  if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) throw new Error('vTPM CA certificate lacks the CA flag');
  await writeFile(ca.certPath, cert.toString('pem'), { mode: 0o644 });
}
