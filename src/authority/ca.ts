/**
 * The provider CA: an Ed25519 root that certifies each host's X25519 HPKE key (the role of the
 * host-key certificate in Secure Execution). Certificate profile, checked by src/client/host-cert.ts:
 *
 *   root  self-signed, Ed25519, basicConstraints CA (critical, pathLen 1: a host's vTPM CA sits below it), keyUsage keyCertSign|cRLSign
 *         (critical), subjectKeyIdentifier; 10 years by default.
 *   host  subject CN = hostId, subject key X25519 (SPKI OID 1.3.101.110, 32 bytes), signed Ed25519 by the
 *         root, basicConstraints CA false (critical), keyUsage keyAgreement only (critical),
 *         extendedKeyUsage VMSEAL_HOST_HPKE_KEY_OID, authority/subject key identifiers, random serial.
 */
import 'reflect-metadata'; // @peculiar/x509 resolves its internals through tsyringe, which needs it first.
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes, webcrypto, type KeyObject } from 'node:crypto';

import { HOST_ID_PATTERN, VMSEAL_HOST_HPKE_KEY_OID } from '../formats/protocol/host-certificate.ts';

export { HOST_ID_PATTERN, VMSEAL_HOST_HPKE_KEY_OID };

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export const CA_DEFAULT_VALIDITY_DAYS = 3650;
export const HOST_MAX_VALIDITY_DAYS = 825;

const DAY_MS = 86_400_000;
// Certificates start a little in the past so a verifier whose clock lags slightly accepts them.
const BACKDATE_MS = 5 * 60_000;

export interface CaMaterial {
  certPem: string;
  privateKeyPem: string;
}

export interface HostCertificateRequest {
  hostId: string;
  /** The host's raw 32-byte X25519 HPKE public key. */
  hpkePublicKey: Uint8Array;
  validityDays: number;
  /** Issue time; the current time when omitted. */
  now?: Date;
}

/** A request the CA refuses, or CA material that is unusable. */
export class CaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CaError';
  }
}

function checkDays(days: number, max: number, what: string): void {
  if (!Number.isInteger(days) || days < 1 || days > max) throw new CaError(`${what} must be a whole number of days in 1..${max}`);
}

/** A positive 16-byte random serial (RFC 5280: at most 20 bytes); bit 6 set keeps the DER minimal. */
function randomSerial(): string {
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  return serial.toString('hex');
}

export async function createCa(opts: { commonName: string; validityDays?: number; now?: Date }): Promise<CaMaterial> {
  const commonName = opts.commonName;
  if (typeof commonName !== 'string' || commonName.length < 1 || commonName.length > 64 || /[\p{Cc}]/u.test(commonName)) {
    throw new CaError('CA common name must be 1..64 characters without control characters');
  }
  const days = opts.validityDays ?? CA_DEFAULT_VALIDITY_DAYS;
  checkDays(days, 36_500, 'CA validity');
  const now = opts.now ?? new Date();
  const keys = (await webcrypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [commonName] }],
    keys,
    signingAlgorithm: { name: 'Ed25519' },
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + days * DAY_MS),
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  return { certPem: cert.toString('pem'), privateKeyPem: createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString() };
}

function rawPublicKey(key: KeyObject): Buffer {
  return Buffer.from(key.export({ format: 'jwk' }).x ?? '', 'base64url');
}

/** Parses the CA material and checks that it is a CA whose private key belongs to its certificate. */
async function loadCa(ca: CaMaterial): Promise<{ cert: x509.X509Certificate; signingKey: CryptoKey }> {
  let cert: x509.X509Certificate;
  let privateKey: KeyObject;
  try {
    cert = new x509.X509Certificate(ca.certPem);
    privateKey = createPrivateKey(ca.privateKeyPem);
  } catch (err) {
    throw new CaError(`unreadable CA material: ${(err as Error).message}`);
  }
  if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) throw new CaError('CA certificate lacks the basicConstraints CA flag');
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new CaError('CA private key is not Ed25519');
  const certKey = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' });
  if (certKey.asymmetricKeyType !== 'ed25519' || !rawPublicKey(certKey).equals(rawPublicKey(createPublicKey(privateKey)))) {
    throw new CaError('CA private key does not match the CA certificate');
  }
  const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
  const signingKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
  return { cert, signingKey };
}

/** Checks that CA material is usable for issuing: a CA certificate with its matching Ed25519 key. */
export async function validateCaMaterial(ca: CaMaterial): Promise<void> {
  await loadCa(ca);
}

// RFC 8410 SubjectPublicKeyInfo header of an X25519 public key (id-X25519 is 1.3.101.110).
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

/**
 * Checks a host's raw X25519 HPKE public key: 32 bytes, and a trial key agreement with a throwaway key
 * succeeds. OpenSSL refuses points of small order (their shared secret is all zero, which RFC 9180
 * forbids), so a key that fails here could never receive a sealed bundle and must not be certified.
 */
export function checkHostHpkePublicKey(publicKey: Uint8Array): void {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) {
    throw new CaError('host HPKE public key must be 32 raw X25519 bytes');
  }
  try {
    const key = createPublicKey({ key: Buffer.concat([X25519_SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
    diffieHellman({ privateKey: generateKeyPairSync('x25519').privateKey, publicKey: key });
  } catch {
    throw new CaError('host HPKE public key is not a usable X25519 key (small-order point)');
  }
}

export async function issueHostCertificate(ca: CaMaterial, req: HostCertificateRequest): Promise<string> {
  if (typeof req.hostId !== 'string' || !HOST_ID_PATTERN.test(req.hostId)) {
    throw new CaError(`host id must match ${HOST_ID_PATTERN}`);
  }
  checkHostHpkePublicKey(req.hpkePublicKey);
  checkDays(req.validityDays, HOST_MAX_VALIDITY_DAYS, 'host certificate validity');
  const { cert: caCert, signingKey } = await loadCa(ca);
  const now = req.now ?? new Date();
  const notAfter = new Date(now.getTime() + req.validityDays * DAY_MS);
  if (notAfter > caCert.notAfter) throw new CaError('host certificate would outlive the CA certificate');
  if (now < caCert.notBefore) throw new CaError('CA certificate is not yet valid');

  let hostKey: CryptoKey;
  try {
    hostKey = await webcrypto.subtle.importKey('raw', req.hpkePublicKey, { name: 'X25519' }, true, []);
  } catch (err) {
    throw new CaError(`host HPKE public key is not an X25519 key: ${(err as Error).message}`);
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [req.hostId] }],
    issuer: caCert.subjectName,
    publicKey: hostKey,
    signingKey,
    signingAlgorithm: { name: 'Ed25519' },
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([VMSEAL_HOST_HPKE_KEY_OID], false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
      await x509.SubjectKeyIdentifierExtension.create(hostKey),
    ],
  });
  return cert.toString('pem');
}

/** Parses a vTPM CA public key (SPKI PEM): RSA 2048-8192 (what swtpm_cert signs with) or ECDSA P-256. */
export function checkVtpmCaPublicKey(publicKeyPem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: publicKeyPem, format: 'pem' });
  } catch (err) {
    throw new CaError(`vTPM CA public key is not a PEM public key: ${(err as Error).message}`);
  }
  const rsaBits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  const okRsa = key.asymmetricKeyType === 'rsa' && rsaBits >= 2048 && rsaBits <= 8192;
  const okEc = key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
  if (!okRsa && !okEc) throw new CaError('vTPM CA key must be RSA 2048-8192 or ECDSA P-256');
  return key;
}

/**
 * Certifies a host's vTPM CA (the key swtpm signs each VM's EK certificate with, and the monitor each AK
 * certificate): a CA of its own, one level below the root and allowed to issue only end-entity
 * certificates, named after the host so a verifier can tell which host vouches for a vTPM.
 */
export async function issueVtpmCaCertificate(
  ca: CaMaterial,
  req: { hostId: string; publicKeyPem: string; validityDays: number; now?: Date },
): Promise<string> {
  if (!HOST_ID_PATTERN.test(req.hostId)) throw new CaError(`host id must match ${HOST_ID_PATTERN}`);
  checkDays(req.validityDays, HOST_MAX_VALIDITY_DAYS, 'vTPM CA certificate validity');
  const key = checkVtpmCaPublicKey(req.publicKeyPem);
  const okRsa = key.asymmetricKeyType === 'rsa';
  const { cert: caCert, signingKey } = await loadCa(ca);
  const now = req.now ?? new Date();
  const notAfter = new Date(now.getTime() + req.validityDays * DAY_MS);
  if (notAfter > caCert.notAfter) throw new CaError('vTPM CA certificate would outlive the CA certificate');
  const spki = key.export({ format: 'der', type: 'spki' });
  const algorithm = okRsa ? { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } : { name: 'ECDSA', namedCurve: 'P-256' };
  const publicKey = await webcrypto.subtle.importKey('spki', spki, algorithm, true, ['verify']);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [`vmseal vTPM CA ${req.hostId}`] }],
    issuer: caCert.subjectName,
    publicKey,
    signingKey,
    signingAlgorithm: { name: 'Ed25519' },
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
    ],
  });
  return cert.toString('pem');
}
