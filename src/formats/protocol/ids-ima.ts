/**
 * The IMA list on its way from a VM's IDS to the authority's verifier (ARCHITECTURE.md protocol 10). The
 * list needs no trusted path — the verifier replays it against the PCR 10 of a quote it checked — so the
 * untrusted host library carries it in the clear:
 *
 *   GET  /v1/ids/sessions/:sessionId/ima-request?after=SEQ&waitMs=MS  -> { seq } | 204 none within waitMs
 *        (the verifier wants a fresh list: the host library runs the enclave's `ima-log` check)
 *   POST /v1/ids/sessions/:sessionId/ima  { seq, entries, log }      -> { ok: true }
 *        (`log`: binary_runtime_measurements, base64, as src/formats/ima.ts parses it)
 */
import { z } from 'zod';
import { base64Blob, ATTEST_LIMITS } from './attestation.ts';

export const IDS_IMA_REQUEST_ROUTE = '/v1/ids/sessions/:sessionId/ima-request';
export const IDS_IMA_ROUTE = '/v1/ids/sessions/:sessionId/ima';
export const MAX_IMA_LONG_POLL_MS = 10_000;
/** Largest POST body: the list at its cap, base64-expanded, plus the envelope. */
export const MAX_IMA_BODY_BYTES = Math.ceil((ATTEST_LIMITS.maxImaLogBytes * 4) / 3) + 4096;

const seq = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

export const imaRequestQuerySchema = z.strictObject({
  after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  waitMs: z.coerce.number().int().min(0).max(MAX_IMA_LONG_POLL_MS).default(MAX_IMA_LONG_POLL_MS),
});
export const imaRequestSchema = z.strictObject({ seq });
export const imaUploadSchema = z.strictObject({ seq, entries: z.number().int().min(0).max(10_000_000), log: base64Blob(ATTEST_LIMITS.maxImaLogBytes, 0) });
export type ImaUploadWire = z.input<typeof imaUploadSchema>;
export const imaAcceptedSchema = z.strictObject({ ok: z.literal(true) });
