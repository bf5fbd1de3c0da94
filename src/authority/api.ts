/**
 * The authority's HTTP API, shared by its server and its clients (hosts enrolling, tenants pinning
 * the CA). All bodies are JSON; errors are `{ error, code }` with a 4xx/5xx status.
 *
 *   GET  /v1/ca                          -> { certificate }            the provider CA certificate (PEM)
 *   POST /v1/hosts/enroll                { hostId, hpkePublicKey, token, vtpmCaPublicKey? } -> { certificate, vtpmCaCertificate? }
 *   GET  /v1/hosts/:hostId/certificate   -> { hostId, certificate }    404 NO_CERTIFICATE if never enrolled
 *   GET  /v1/ids/authority-key           -> { publicKey, signature }   the IDS heartbeat HPKE key, signed by the CA
 *   POST /v1/ids/sign                    { header, sealedSessionKey, sealedHeartbeatKey } -> { signature }
 *                                        (src/formats/protocol/ids-registration.ts; docs/ids.md)
 */
import { z } from 'zod';
import { HOST_ID_PATTERN } from './ca.ts';
import { ENROLLMENT_TOKEN_PATTERN, type EnrollmentRefusalCode } from './enrollment-tokens.ts';
import type { IdsSignRefusalCode } from './ids-signing.ts';

export const CA_ROUTE = '/v1/ca';
export const ENROLL_ROUTE = '/v1/hosts/enroll';
export const HOST_CERTIFICATE_ROUTE = '/v1/hosts/:hostId/certificate';
export const IDS_AUTHORITY_KEY_ROUTE = '/v1/ids/authority-key';
export const IDS_SIGN_ROUTE = '/v1/ids/sign';

/** Requests are tiny; anything larger is refused before it is parsed. */
export const MAX_REQUEST_BYTES = 4096;
/** Responses carry at most a certificate or two. */
export const MAX_RESPONSE_BYTES = 65_536;
const MAX_PEM_CHARS = 16_384;

/** Standard base64 of exactly 32 bytes, in its one canonical spelling. */
const raw32Base64 = z
  .string()
  .regex(/^[A-Za-z0-9+/]{43}=$/, 'must be the base64 of 32 raw bytes')
  .refine((s) => Buffer.from(s, 'base64').toString('base64') === s, 'is not canonical base64');

export const hostIdSchema = z.string().regex(HOST_ID_PATTERN, 'must be 1..64 letters, digits, ".", "_" or "-", starting with a letter or digit');

export const enrollRequestSchema = z.strictObject({
  hostId: hostIdSchema,
  hpkePublicKey: raw32Base64,
  token: z.string().regex(ENROLLMENT_TOKEN_PATTERN, 'must be an enrollment token as printed by `vmseal authority enroll-host`'),
  /** The host's vTPM CA public key (SPKI PEM), certified as a CA below the root at the same time. */
  vtpmCaPublicKey: z.string().min(1).max(MAX_PEM_CHARS).optional(),
});

const pem = z.string().min(1).max(MAX_PEM_CHARS);
export const certificateResponseSchema = z.object({ certificate: pem });
export const enrollResponseSchema = z.object({ certificate: pem, vtpmCaCertificate: pem.optional() });

export type AuthorityErrorCode =
  | 'BAD_REQUEST' // malformed JSON, schema violation, unknown fields
  | 'BAD_KEY' // the HPKE public key is not a usable X25519 key
  | 'BODY_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'NOT_FOUND'
  | 'NO_CERTIFICATE'
  | 'INTERNAL'
  | EnrollmentRefusalCode
  | IdsSignRefusalCode;

export const errorResponseSchema = z.object({ error: z.string().max(1000), code: z.string().max(64) });
