/**
 * CA fingerprints as people compare them out of band: SHA-256 of the certificate's DER, written as
 * colon-separated upper-case hex (the form `openssl x509 -noout -fingerprint -sha256` prints).
 */
import { X509Certificate } from 'node:crypto';

export function caFingerprint(certificatePem: string): string {
  return new X509Certificate(certificatePem).fingerprint256;
}

/**
 * Reads a fingerprint typed or pasted by a person: 64 hex digits, with or without colons or spaces,
 * in any case, optionally prefixed "sha256:" or "SHA256 Fingerprint=" (openssl's output).
 */
export function parseFingerprint(text: string): string {
  const hex = text
    .trim()
    .replace(/^(sha256 fingerprint=|sha256:)/i, '')
    .replace(/[:\s]/g, '')
    .toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) throw new Error(`not a SHA-256 fingerprint (64 hex digits): ${JSON.stringify(text.slice(0, 120))}`);
  return hex.match(/../g)!.join(':');
}
