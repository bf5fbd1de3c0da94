/**
 * The check of a host certificate before anything is sealed to the host's key, by the tenant client
 * and by the IDS enclave alike. The certificate usually arrives through the management plane, so
 * nothing in it is trusted until its signature chains to the pinned CA root (the tenant's from
 * `vmseal tenant init`, the enclave's from its configuration); intermediate certificates are never accepted.
 *
 * Order: the pinned root is checked first (a self-signed Ed25519 CA), then the host certificate's
 * signature against it, and only then the fields of the now-authenticated certificate: validity dates,
 * not-a-CA, keyUsage keyAgreement, the vmseal host-key extended key usage, an X25519 key of 32 bytes,
 * and the subject CN (the host id). Signatures, the CA flag and extended key usage are read by OpenSSL
 * (node:crypto X509Certificate); keyUsage bits, dates and the subject name by @peculiar/x509, from the
 * same DER bytes.
 */
import 'reflect-metadata'; // @peculiar/x509 resolves its internals through tsyringe, which needs it first.
import * as x509 from '@peculiar/x509';
import { X509Certificate as OpenSslCertificate } from 'node:crypto';
import { HOST_ID_PATTERN, VMSEAL_HOST_HPKE_KEY_OID } from '../formats/protocol/host-certificate.ts';

export type HostCertificateErrorCode =
  | 'MALFORMED' // not exactly one well-formed certificate, or a subject outside the profile
  | 'BAD_ROOT' // the pinned root is not a valid self-signed Ed25519 CA at this time
  | 'BAD_SIGNATURE' // not issued and signed by the pinned root
  | 'NOT_YET_VALID'
  | 'EXPIRED'
  | 'WRONG_PURPOSE' // a CA certificate, or keyUsage / extended key usage other than a vmseal host HPKE key
  | 'WRONG_KEY' // subject key is not a 32-byte X25519 key
  | 'HOST_MISMATCH'; // subject CN differs from the expected host id

export class HostCertificateError extends Error {
  readonly code: HostCertificateErrorCode;
  constructor(code: HostCertificateErrorCode, message: string) {
    super(message);
    this.name = 'HostCertificateError';
    this.code = code;
  }
}

export interface VerifiedHostCertificate {
  hostId: string;
  /** Raw 32-byte X25519 HPKE public key, safe to seal to. */
  hpkePublicKey: Buffer;
  notAfter: Date;
  serialNumber: string;
}

export interface VerifyHostCertificateOptions {
  now?: Date;
  expectedHostId?: string;
}

const MAX_PEM_CHARS = 16_384;
const PEM_RE = /^\s*-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE-----\s*$/;

interface ParsedCertificate {
  openssl: OpenSslCertificate;
  fields: x509.X509Certificate;
}

/** Length of the DER element at the start of `der` (header included), or -1 if unreadable. */
function derElementLength(der: Buffer): number {
  if (der.length < 2 || der[0] !== 0x30) return -1;
  const first = der[1]!;
  if (first < 0x80) return 2 + first;
  const n = first & 0x7f;
  if (n < 1 || n > 4 || der.length < 2 + n) return -1;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + der[2 + i]!;
  return 2 + n + len;
}

function parsePem(pem: string, what: string): ParsedCertificate {
  const fail = (why: string): never => {
    throw new HostCertificateError(what === 'pinned CA root' ? 'BAD_ROOT' : 'MALFORMED', `${what}: ${why}`);
  };
  if (typeof pem !== 'string' || pem.length > MAX_PEM_CHARS) fail('not a PEM string of reasonable size');
  const m = PEM_RE.exec(pem);
  if (!m) fail('must be exactly one PEM CERTIFICATE block');
  const b64 = m![1]!.replace(/[\r\n]/g, '');
  const der = Buffer.from(b64, 'base64');
  if (der.length === 0 || der.toString('base64') !== b64) fail('invalid base64');
  if (derElementLength(der) !== der.length) fail('DER certificate has a bad length or trailing bytes');
  try {
    return { openssl: new OpenSslCertificate(der), fields: new x509.X509Certificate(der) };
  } catch (err) {
    return fail(`unparseable certificate: ${(err as Error).message}`);
  }
}

function keyUsages(cert: x509.X509Certificate): number | undefined {
  return cert.getExtension(x509.KeyUsagesExtension)?.usages;
}

function checkRoot(root: ParsedCertificate, now: Date): void {
  const bad = (why: string): never => {
    throw new HostCertificateError('BAD_ROOT', `pinned CA root ${why}`);
  };
  if (root.openssl.publicKey.asymmetricKeyType !== 'ed25519') bad('does not have an Ed25519 key');
  const constraints = root.fields.getExtension(x509.BasicConstraintsExtension);
  if (!root.openssl.ca || !constraints?.ca) bad('is not a CA (basicConstraints CA flag missing)');
  const usages = keyUsages(root.fields);
  if (usages === undefined || (usages & x509.KeyUsageFlags.keyCertSign) === 0) bad('may not sign certificates (keyUsage lacks keyCertSign)');
  if (!root.openssl.checkIssued(root.openssl) || !root.openssl.verify(root.openssl.publicKey)) bad('is not validly self-signed');
  if (now < root.fields.notBefore || now > root.fields.notAfter) bad(`is outside its validity period (${root.fields.notBefore.toISOString()} .. ${root.fields.notAfter.toISOString()})`);
}

export function verifyHostCertificate(
  certPem: string,
  pinnedCaPem: string,
  opts: VerifyHostCertificateOptions = {},
): VerifiedHostCertificate {
  const now = opts.now ?? new Date();
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new TypeError('verifyHostCertificate: now must be a valid Date');
  const root = parsePem(pinnedCaPem, 'pinned CA root');
  checkRoot(root, now);
  const host = parsePem(certPem, 'host certificate');

  // Trust first: nothing else in the certificate is read until the pinned root's signature covers it.
  if (!host.openssl.checkIssued(root.openssl) || !host.openssl.verify(root.openssl.publicKey)) {
    throw new HostCertificateError('BAD_SIGNATURE', 'host certificate is not signed by the pinned CA root');
  }

  const { notBefore, notAfter } = host.fields;
  if (now < notBefore) throw new HostCertificateError('NOT_YET_VALID', `host certificate is valid only from ${notBefore.toISOString()}`);
  if (now > notAfter) throw new HostCertificateError('EXPIRED', `host certificate expired at ${notAfter.toISOString()}`);

  if (host.openssl.ca || host.fields.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw new HostCertificateError('WRONG_PURPOSE', 'host certificate is a CA certificate');
  }
  const usages = keyUsages(host.fields);
  const forbidden = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign;
  if (usages === undefined || (usages & x509.KeyUsageFlags.keyAgreement) === 0 || (usages & forbidden) !== 0) {
    throw new HostCertificateError('WRONG_PURPOSE', 'host certificate keyUsage must allow keyAgreement and not certificate signing');
  }
  // OpenSSL reads the extended key usage: @peculiar/x509 mangles OID arcs above 2^53, as 2.25 ones are.
  const eku = host.openssl.keyUsage ?? [];
  if (!eku.includes(VMSEAL_HOST_HPKE_KEY_OID)) {
    throw new HostCertificateError('WRONG_PURPOSE', 'host certificate is not marked as a vmseal host HPKE key');
  }

  const key = host.openssl.publicKey;
  if (key.asymmetricKeyType !== 'x25519') {
    throw new HostCertificateError('WRONG_KEY', `host key is ${key.asymmetricKeyType ?? 'unknown'}, not X25519`);
  }
  const hpkePublicKey = Buffer.from(key.export({ format: 'jwk' }).x ?? '', 'base64url');
  if (hpkePublicKey.length !== 32) throw new HostCertificateError('WRONG_KEY', 'host X25519 key is not 32 bytes');

  const subject = host.fields.subjectName.toJSON();
  const cn = subject.length === 1 && Object.keys(subject[0]!).length === 1 ? subject[0]!['CN'] : undefined;
  const hostId = cn?.length === 1 ? cn[0]! : '';
  if (!HOST_ID_PATTERN.test(hostId)) throw new HostCertificateError('MALFORMED', 'host certificate subject must be a single CN holding a host id');
  if (opts.expectedHostId !== undefined && hostId !== opts.expectedHostId) {
    throw new HostCertificateError('HOST_MISMATCH', `certificate is for host ${JSON.stringify(hostId)}, expected ${JSON.stringify(opts.expectedHostId)}`);
  }
  return { hostId, hpkePublicKey, notAfter, serialNumber: host.fields.serialNumber };
}

/**
 * The raw Ed25519 public key of a pinned CA root, after the same checks as for host certificates:
 * what verifies the CA's other signatures (IDS registrations, the authority's IDS key).
 */
export function pinnedCaPublicKey(pinnedCaPem: string, opts: { now?: Date } = {}): Buffer {
  const root = parsePem(pinnedCaPem, 'pinned CA root');
  checkRoot(root, opts.now ?? new Date());
  return Buffer.from(root.openssl.publicKey.export({ format: 'jwk' }).x ?? '', 'base64url');
}
