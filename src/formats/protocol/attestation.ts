/**
 * Remote attestation messages (ARCHITECTURE.md protocol 10).
 *
 * Verifier → monitor, relayed by the management plane (untrusted: it may alter anything, which the
 * quote's signature and nonce expose):
 *
 *   POST /v1/vms/:vmId/attest   { nonce, pcrs }  →  evidence
 *
 * `nonce` is 16..32 fresh random bytes (base64), used as the quote's qualifyingData (extraData).
 * `pcrs` maps a bank to the PCR indices to quote, e.g. { "sha256": [0,1,...,10] }.
 * The evidence (AttestationEvidenceWire):
 *   quote        TPMS_ATTEST bytes the AK signed (the content of TPM2B_ATTEST)
 *   signature    TPMT_SIGNATURE over `quote`
 *   akPublic     TPM2B_PUBLIC of the attestation key
 *   akCertChain  DER certificates, AK certificate first, then the host's vTPM CA certificate (issued by
 *                the provider CA); the provider CA itself is not sent, the verifier pins it
 *   pcrValues    bank → PCR index → value (hex), exactly the PCRs requested
 *   eventLog     the measured-launch TCG event log (crypto-agile, src/formats/tcg-eventlog.ts)
 *   imaLog       optional: the guest's binary_runtime_measurements (src/formats/ima.ts)
 * Binary fields are standard base64. Sizes are capped so a hostile relay cannot make the verifier
 * allocate more than a few tens of MiB.
 */
import { z } from 'zod';

export const MONITOR_ATTEST_ROUTE = '/v1/vms/:vmId/attest';

export const ATTEST_LIMITS = {
  minNonceBytes: 16,
  maxNonceBytes: 32,
  maxTpmStructBytes: 2048,
  maxCertBytes: 8192,
  maxChainLength: 4,
  maxEventLogBytes: 1 << 20,
  maxImaLogBytes: 32 << 20,
  maxPcrIndex: 23,
} as const;

/** Largest JSON evidence body: every field at its limit, base64-expanded, plus slack for the PCR map. */
export const MAX_EVIDENCE_JSON_BYTES = Math.ceil(((ATTEST_LIMITS.maxImaLogBytes + ATTEST_LIMITS.maxEventLogBytes + 4 * ATTEST_LIMITS.maxTpmStructBytes + ATTEST_LIMITS.maxChainLength * ATTEST_LIMITS.maxCertBytes) * 4) / 3) + 64 * 1024;

export const BANK_NAMES = ['sha1', 'sha256', 'sha384', 'sha512'] as const;
export type BankName = (typeof BANK_NAMES)[number];

/** Standard base64 of 1..maxBytes bytes, canonical, decoded to a Buffer. */
export function base64Blob(maxBytes: number, minBytes = 1) {
  return z
    .string()
    .max(4 * Math.ceil(maxBytes / 3))
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64')
    .transform((s, ctx): Buffer => {
      const b = Buffer.from(s, 'base64');
      if (b.toString('base64') !== s) {
        ctx.addIssue({ code: 'custom', message: 'is not canonical base64' });
        return z.NEVER;
      }
      if (b.length < minBytes || b.length > maxBytes) {
        ctx.addIssue({ code: 'custom', message: `must decode to ${minBytes}..${maxBytes} bytes` });
        return z.NEVER;
      }
      return b;
    });
}

const pcrIndex = z.number().int().min(0).max(ATTEST_LIMITS.maxPcrIndex);
const pcrIndices = z
  .array(pcrIndex)
  .min(1)
  .max(ATTEST_LIMITS.maxPcrIndex + 1)
  .refine((a) => new Set(a).size === a.length, 'PCR indices must be distinct');

/** bank → PCR indices. Banks are emitted (and quoted) in BANK_NAMES order. */
export const pcrRequestSchema = z
  .strictObject({ sha1: pcrIndices.optional(), sha256: pcrIndices.optional(), sha384: pcrIndices.optional(), sha512: pcrIndices.optional() })
  .refine((p) => BANK_NAMES.some((b) => p[b] !== undefined), 'at least one bank');
export type PcrRequest = z.infer<typeof pcrRequestSchema>;

export const attestRequestSchema = z.strictObject({
  nonce: base64Blob(ATTEST_LIMITS.maxNonceBytes, ATTEST_LIMITS.minNonceBytes),
  pcrs: pcrRequestSchema,
});
export type AttestRequest = z.infer<typeof attestRequestSchema>;

const BANK_SIZE: Record<BankName, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };
const bankValues = (bank: BankName) =>
  z
    .record(z.string().regex(/^(?:[0-9]|1[0-9]|2[0-3])$/, 'must be a PCR index 0..23'), z.string().regex(new RegExp(`^[0-9a-f]{${BANK_SIZE[bank] * 2}}$`), `must be a ${bank} value in lower-case hex`))
    .optional();

export const pcrValuesSchema = z
  .strictObject({ sha1: bankValues('sha1'), sha256: bankValues('sha256'), sha384: bankValues('sha384'), sha512: bankValues('sha512') });
export type PcrValuesWire = z.infer<typeof pcrValuesSchema>;

export const attestationEvidenceSchema = z.strictObject({
  quote: base64Blob(ATTEST_LIMITS.maxTpmStructBytes),
  signature: base64Blob(ATTEST_LIMITS.maxTpmStructBytes),
  akPublic: base64Blob(ATTEST_LIMITS.maxTpmStructBytes),
  akCertChain: z.array(base64Blob(ATTEST_LIMITS.maxCertBytes)).max(ATTEST_LIMITS.maxChainLength),
  pcrValues: pcrValuesSchema,
  eventLog: base64Blob(ATTEST_LIMITS.maxEventLogBytes),
  imaLog: base64Blob(ATTEST_LIMITS.maxImaLogBytes, 0).optional(),
});
/** Decoded evidence (Buffers). */
export type AttestationEvidence = z.output<typeof attestationEvidenceSchema>;
/** Evidence as it travels (base64 strings). */
export type AttestationEvidenceWire = z.input<typeof attestationEvidenceSchema>;

/** Encodes decoded evidence for the wire (what the monitor, or a test producer, sends). */
export function encodeEvidence(e: AttestationEvidence): AttestationEvidenceWire {
  const b64 = (b: Buffer) => b.toString('base64');
  return {
    quote: b64(e.quote),
    signature: b64(e.signature),
    akPublic: b64(e.akPublic),
    akCertChain: e.akCertChain.map(b64),
    pcrValues: e.pcrValues,
    eventLog: b64(e.eventLog),
    ...(e.imaLog !== undefined ? { imaLog: b64(e.imaLog) } : {}),
  };
}

// ---- Authority side: the tenant's calls to the authority's verifier --------------------------------

export const AUTHORITY_ATTEST_ENROLL_ROUTE = '/v1/attest/vms/:vmId';
export const AUTHORITY_ATTEST_ROUTE = '/v1/attest/vms/:vmId/attest';
export const AUTHORITY_ATTEST_HISTORY_ROUTE = '/v1/attest/vms/:vmId/history';

/** Largest enrollment body: a runtime policy with many digests. */
export const MAX_ENROLL_BODY_BYTES = 16 << 20;

/** Where the authority fetches evidence: the management plane's URL, or the monitor's socket as `unix:/path`. */
export const evidenceSourceSchema = z
  .string()
  .max(4096)
  .refine((s) => /^https?:\/\/[^\s]+$/.test(s) || /^unix:\/[^\0]*$/.test(s), 'must be an http(s) URL or unix:/path/to/socket');

export const launchReferencesSchema = z.strictObject({
  kernelSha256: z.string().regex(/^[0-9a-f]{64}$/),
  initrdSha256: z.string().regex(/^[0-9a-f]{64}$/),
  cmdline: z.string().max(4096).refine((s) => !/[\x00-\x1f\x7f]/.test(s), 'must not contain control characters'),
});
export type LaunchReferences = z.infer<typeof launchReferencesSchema>;

export const attestEnrollSchema = z.strictObject({
  source: evidenceSourceSchema,
  references: launchReferencesSchema,
  /** A Keylime runtime policy (JSON object); absent: no IMA check. */
  runtimePolicy: z.record(z.string(), z.unknown()).optional(),
  /** The tenant's webhook for revocation notices. */
  webhook: z.url({ protocol: /^https?$/ }).max(2048).optional(),
});
export type AttestEnroll = z.infer<typeof attestEnrollSchema>;

/** The canonical revocation notice body; signed as canonicalNoticeBytes(). */
export const revocationNoticeSchema = z.strictObject({
  vmId: z.string().regex(/^[0-9a-f]{32}$/),
  reason: z.string().max(2000),
  path: z.string().max(4096).nullable(),
  digest: z.string().max(200).nullable(),
  at: z.iso.datetime(),
  attestationId: z.number().int().positive(),
});
export type RevocationNotice = z.infer<typeof revocationNoticeSchema>;

export const signedNoticeSchema = z.strictObject({
  notice: revocationNoticeSchema,
  /** Ed25519 signature by the authority CA key over canonicalNoticeBytes(notice), base64. */
  signature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/),
});
export type SignedNotice = z.infer<typeof signedNoticeSchema>;

/** Canonical JSON: keys sorted, no whitespace (values are strings, numbers and null only). */
export function canonicalNoticeBytes(n: RevocationNotice): Buffer {
  const keys = ['at', 'attestationId', 'digest', 'path', 'reason', 'vmId'] as const;
  return Buffer.from(`{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(n[k])}`).join(',')}}`, 'utf8');
}

export const VERDICT_CODES = [
  'OK',
  'EVIDENCE_UNAVAILABLE',
  'MALFORMED',
  'AK_UNTRUSTED',
  'BAD_SIGNATURE',
  'BAD_MAGIC',
  'NOT_A_QUOTE',
  'NONCE_MISMATCH',
  'PCR_SELECTION_MISMATCH',
  'PCR_VALUES_MISMATCH',
  'PCR_DIGEST_MISMATCH',
  'EVENT_LOG_INVALID',
  'EVENT_LOG_REPLAY_MISMATCH',
  'KERNEL_MISMATCH',
  'INITRD_MISMATCH',
  'CMDLINE_MISMATCH',
  'UNEXPECTED_BOOT_EVENT',
  'IMA_LOG_MISSING',
  'IMA_LOG_INVALID',
  'IMA_REPLAY_MISMATCH',
  'BOOT_AGGREGATE_MISMATCH',
  'POLICY_VIOLATION',
] as const;
export type VerdictCode = (typeof VERDICT_CODES)[number];

export const attestVerdictSchema = z.strictObject({
  attestationId: z.number().int().positive(),
  vmId: z.string().regex(/^[0-9a-f]{32}$/),
  at: z.iso.datetime(),
  ok: z.boolean(),
  code: z.enum(VERDICT_CODES),
  reason: z.string().max(2000),
  path: z.string().max(4096).nullable(),
  digest: z.string().max(200).nullable(),
  pcrs: pcrValuesSchema,
  imaEntries: z.number().int().nonnegative().nullable(),
  notice: signedNoticeSchema.nullable(),
});
export type AttestVerdictWire = z.infer<typeof attestVerdictSchema>;

export const attestHistorySchema = z.strictObject({ vmId: z.string(), status: z.enum(['trusted', 'revoked', 'pending']), verdicts: z.array(attestVerdictSchema).max(1000) });
