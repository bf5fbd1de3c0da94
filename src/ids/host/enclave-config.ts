/**
 * Builds an enclave configuration from what the authority publishes: its CA certificate (checked
 * against the fingerprint the operator was given, when one is) and its CA-signed IDS key, plus the
 * kernel profile's hash and the checks. The result is what gets measured and approved.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { z } from 'zod';
import type { EnclaveConfig } from '../../formats/protocol/enclave-call.ts';
import { idsAuthorityKeyResponseSchema } from '../../formats/protocol/ids-registration.ts';
import { parseEnclaveConfig } from '../enclave/loader.ts';
import { jsonCall } from './http.ts';

export interface EnclaveConfigInput {
  authorityUrl: URL;
  /** The CA's SHA-256 fingerprint as `vmseal authority init` printed it; omitted only where the caller already trusts the URL. */
  caFingerprint?: string;
  /** The kernel profile's exact text (its hash is configured, the enclave checks it at init). */
  profileText: string;
  checks: Record<string, Record<string, unknown>>;
  /** Benchmark configuration (b) only. */
  benchPlainChannel?: boolean;
}

export async function fetchEnclaveConfig(input: EnclaveConfigInput): Promise<EnclaveConfig> {
  const target = { url: input.authorityUrl };
  const ca = await jsonCall(target, 'GET', '/v1/ca', z.object({ certificate: z.string().max(16_384) }));
  const key = await jsonCall(target, 'GET', '/v1/ids/authority-key', idsAuthorityKeyResponseSchema);
  if (!ca || !key) throw new Error('the authority sent no CA certificate or IDS key');
  if (input.caFingerprint !== undefined) {
    const fp = new X509Certificate(ca.certificate).fingerprint256;
    if (fp.toUpperCase() !== input.caFingerprint.toUpperCase()) throw new Error(`the authority's CA has fingerprint ${fp}, not ${input.caFingerprint}`);
  }
  return parseEnclaveConfig({
    version: 1,
    authorityCaCert: ca.certificate,
    authorityHpkePublicKey: key.publicKey,
    authorityKeySignature: key.signature,
    profileSha256: createHash('sha256').update(input.profileText, 'utf8').digest('hex'),
    checks: input.checks,
    ...(input.benchPlainChannel === true ? { benchPlainChannel: true } : {}),
  });
}
