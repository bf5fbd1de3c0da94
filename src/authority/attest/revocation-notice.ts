/**
 * Signed revocation notices: Ed25519 by the authority's CA key over the canonical JSON of
 * {at, attestationId, digest, path, reason, vmId} (formats/protocol/attestation.ts). The tenant checks
 * one offline against the CA certificate it pinned.
 */
import { X509Certificate, createPrivateKey, sign, verify } from 'node:crypto';
import { canonicalNoticeBytes, signedNoticeSchema, type RevocationNotice, type SignedNotice } from '../../formats/protocol/attestation.ts';

export function signNotice(notice: RevocationNotice, caPrivateKeyPem: string): SignedNotice {
  const key = createPrivateKey(caPrivateKeyPem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error('the CA key is not Ed25519');
  return { notice, signature: sign(null, canonicalNoticeBytes(notice), key).toString('base64') };
}

/** Parses and checks a notice (any JSON value) against the CA certificate; throws with the reason. */
export function verifyNotice(value: unknown, caCertificatePem: string): SignedNotice {
  const parsed = signedNoticeSchema.safeParse(value);
  if (!parsed.success) throw new Error(`not a revocation notice: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
  const key = new X509Certificate(caCertificatePem).publicKey;
  if (key.asymmetricKeyType !== 'ed25519') throw new Error('the CA certificate does not hold an Ed25519 key');
  if (!verify(null, canonicalNoticeBytes(parsed.data.notice), key, Buffer.from(parsed.data.signature, 'base64'))) {
    throw new Error('the revocation notice signature does not verify with this CA');
  }
  return parsed.data;
}
