/**
 * The authority's heartbeat routes (ARCHITECTURE.md protocol 8), shared by the authority, the IDS host
 * library and the CLI:
 *
 *   GET  /v1/ids/sessions/:sessionId/challenge?after=SEQ&waitMs=MS  -> { sessionId, seq, nonce } | 204 none within waitMs
 *   POST /v1/ids/sessions/:sessionId/heartbeat  { seq, status, mac } -> { ok: true }
 *   GET  /v1/ids/alerts?after=ID&waitMs=MS                          -> { alerts: [...] } (ids above `after`)
 *
 * The answer's MAC is crypto/heartbeat-mac.ts over the challenge's nonce and seq.
 */
import { z } from 'zod';
import { base64Bytes } from './fields.ts';
import { sessionIdHex } from './ids-registration.ts';

export const IDS_CHALLENGE_ROUTE = '/v1/ids/sessions/:sessionId/challenge';
export const IDS_HEARTBEAT_ROUTE = '/v1/ids/sessions/:sessionId/heartbeat';
export const IDS_ALERTS_ROUTE = '/v1/ids/alerts';
/** A long poll holds the request at most this long. */
export const MAX_LONG_POLL_MS = 10_000;

export const idsSessionParamsSchema = z.strictObject({ sessionId: sessionIdHex });

const seqField = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const counterQuery = z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const waitQuery = z.coerce.number().int().min(0).max(MAX_LONG_POLL_MS);

export const challengeQuerySchema = z.strictObject({ after: counterQuery.default(0), waitMs: waitQuery.default(MAX_LONG_POLL_MS) });
export const challengeSchema = z.strictObject({ sessionId: sessionIdHex, seq: seqField, nonce: base64Bytes(16) });
export type ChallengeWire = z.input<typeof challengeSchema>;

export const heartbeatAnswerSchema = z.strictObject({ seq: seqField, status: z.number().int().min(0).max(255), mac: base64Bytes(32) });
export type HeartbeatAnswerWire = z.input<typeof heartbeatAnswerSchema>;
export const heartbeatAcceptedSchema = z.strictObject({ ok: z.literal(true) });

export const HEARTBEAT_ALERT_KINDS = ['MISSED_HEARTBEAT', 'BAD_HEARTBEAT'] as const;
export const heartbeatAlertSchema = z.strictObject({
  id: z.number().int().min(1),
  kind: z.enum(HEARTBEAT_ALERT_KINDS),
  sessionId: sessionIdHex,
  vmId: z.string().max(64),
  hostId: z.string().max(64),
  measurement: z.string().max(64),
  /** The last challenge answered correctly, and when the answer arrived (null: never). */
  lastGoodSeq: z.number().int().min(0).nullable(),
  lastGoodAt: z.iso.datetime().nullable(),
  /** When the authority raised the alert. */
  at: z.iso.datetime(),
  detail: z.string().max(500),
});
export type HeartbeatAlert = z.output<typeof heartbeatAlertSchema>;

export const alertsQuerySchema = z.strictObject({ after: counterQuery.default(0), waitMs: waitQuery.default(0) });
export const alertsResponseSchema = z.strictObject({ alerts: z.array(heartbeatAlertSchema).max(100_000) });
