/**
 * The authority's HTTP service: it publishes the provider CA and certifies host HPKE keys, but only
 * for a host that presents a one-time enrollment token issued for that host id. Every request body is
 * checked against a strict schema (unknown fields are refused) before anything is read from it, and
 * the token is consumed only after the key has passed its checks, so a refused request issues nothing.
 */
import { X509Certificate } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import type { z } from 'zod';
import {
  CA_ROUTE,
  ENROLL_ROUTE,
  HOST_CERTIFICATE_ROUTE,
  IDS_AUTHORITY_KEY_ROUTE,
  IDS_SIGN_ROUTE,
  MAX_REQUEST_BYTES,
  enrollRequestSchema,
  hostIdSchema,
  type AuthorityErrorCode,
} from './api.ts';
import type { Authority } from './authority-dir.ts';
import { CaError, HOST_MAX_VALIDITY_DAYS, checkHostHpkePublicKey, checkVtpmCaPublicKey, issueHostCertificate, issueVtpmCaCertificate } from './ca.ts';
import { EnrollmentRefusal, claimEnrollmentToken, type EnrollmentClaim } from './enrollment-tokens.ts';
import { publishHostCertificate, readHostCertificate } from './host-registry.ts';
import type { HeartbeatRegistry } from './heartbeat-registry.ts';
import { HeartbeatService } from './heartbeat.ts';
import { registerHeartbeatRoutes } from './heartbeat-routes.ts';
import { IdsSignRefusal, signIdsRegistration, signedAuthorityIdsKey } from './ids-signing.ts';
import { ProtocolError } from '../formats/protocol/fields.ts';
import { decodeIdsRegistrationBlobs, idsSignRequestSchema } from '../formats/protocol/ids-registration.ts';
import type { AttestService } from './attest/attest-service.ts';
import { registerAttestRoutes } from './attest/attest-routes.ts';
import { registerImaRoutes, type ImaInbox } from './attest/ima-inbox.ts';

export const DEFAULT_HOST_CERTIFICATE_DAYS = 365;

export type AuthorityLogLevel = 'silent' | 'warn' | 'info' | 'debug';

export interface AuthorityServerOptions {
  authority: Authority;
  /** Host certificate lifetime in days (at most HOST_MAX_VALIDITY_DAYS). */
  hostCertificateDays?: number;
  /** Logs go to stderr as pino JSON lines; refusals are logged at warn. Default 'silent'. */
  logLevel?: AuthorityLogLevel;
  /** The clock used for token expiry and certificate validity (tests move it). */
  now?: () => Date;
  /** Receives the heartbeat key of each signed IDS registration; without it, IDS registrations are refused. */
  heartbeats?: HeartbeatRegistry;
  /** The attestation verifier (src/authority/attest); without it the /v1/attest routes are absent. */
  attest?: AttestService;
  /** IMA lists from IDS sessions for the verifier (attest/ima-inbox.ts); without it those routes are absent. */
  imaInbox?: ImaInbox;
}

const STATUS: Record<AuthorityErrorCode, number> = {
  BAD_REQUEST: 400,
  BAD_KEY: 400,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  NOT_FOUND: 404,
  NO_CERTIFICATE: 404,
  INTERNAL: 500,
  TOKEN_UNKNOWN: 403,
  TOKEN_USED: 403,
  TOKEN_EXPIRED: 403,
  TOKEN_HOST_MISMATCH: 403,
  UNAPPROVED_IDS: 403,
  HOST_UNKNOWN: 403,
  STALE: 403,
  REPLAY: 403,
};

function sendError(reply: FastifyReply, code: AuthorityErrorCode, error: string): FastifyReply {
  return reply.code(STATUS[code]).send({ error, code });
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const where = issue.path.length > 0 ? issue.path.join('.') : 'body';
      return issue.code === 'unrecognized_keys' ? `unknown field(s): ${issue.keys.join(', ')}` : `${where}: ${issue.message}`;
    })
    .join('; ');
}

export function buildAuthorityServer(opts: AuthorityServerOptions): FastifyInstance {
  const { authority } = opts;
  const now = opts.now ?? (() => new Date());
  const validityDays = opts.hostCertificateDays ?? DEFAULT_HOST_CERTIFICATE_DAYS;
  if (!Number.isInteger(validityDays) || validityDays < 1 || validityDays > HOST_MAX_VALIDITY_DAYS) {
    throw new Error(`host certificate lifetime must be 1..${HOST_MAX_VALIDITY_DAYS} days`);
  }
  const level = opts.logLevel ?? 'silent';
  const app = Fastify({
    logger: level === 'silent' ? false : { level, stream: process.stderr },
    bodyLimit: MAX_REQUEST_BYTES,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    forceCloseConnections: true,
    return503OnClosing: true,
  });
  // JSON only: fastify would otherwise hand a text/plain body to the handlers as a string.
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return sendError(reply, 'BODY_TOO_LARGE', `request body exceeds ${MAX_REQUEST_BYTES} bytes`);
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return sendError(reply, 'UNSUPPORTED_MEDIA_TYPE', 'request body must be application/json');
    const status = err.statusCode ?? 500;
    if (status >= 400 && status < 500) return sendError(reply, 'BAD_REQUEST', err.message);
    request.log.error({ err }, 'request failed');
    return sendError(reply, 'INTERNAL', 'internal error');
  });
  app.setNotFoundHandler((request, reply) => sendError(reply, 'NOT_FOUND', `no such endpoint: ${request.method} ${request.url.slice(0, 200)}`));

  app.get(CA_ROUTE, async () => ({ certificate: authority.ca.certPem }));

  app.post(ENROLL_ROUTE, async (request, reply) => {
    const parsed = enrollRequestSchema.safeParse(request.body);
    if (!parsed.success) return sendError(reply, 'BAD_REQUEST', describeIssues(parsed.error));
    const { hostId, token } = parsed.data;
    const hpkePublicKey = Buffer.from(parsed.data.hpkePublicKey, 'base64');
    try {
      checkHostHpkePublicKey(hpkePublicKey);
      if (parsed.data.vtpmCaPublicKey !== undefined) checkVtpmCaPublicKey(parsed.data.vtpmCaPublicKey);
    } catch (err) {
      return sendError(reply, 'BAD_KEY', (err as Error).message);
    }

    let claim: EnrollmentClaim;
    try {
      claim = await claimEnrollmentToken(authority.paths, token, hostId, now());
    } catch (err) {
      if (!(err instanceof EnrollmentRefusal)) throw err;
      request.log.warn({ hostId, code: err.code }, 'enrollment refused');
      return sendError(reply, err.code, err.message);
    }

    let certificate: string;
    let vtpmCaCertificate: string | undefined;
    try {
      const issuedAt = now();
      certificate = await issueHostCertificate(authority.ca, { hostId, hpkePublicKey, validityDays, now: issuedAt });
      const vtpmKey = parsed.data.vtpmCaPublicKey;
      if (vtpmKey !== undefined) vtpmCaCertificate = await issueVtpmCaCertificate(authority.ca, { hostId, publicKeyPem: vtpmKey, validityDays, now: issuedAt });
      await publishHostCertificate(authority.paths, hostId, certificate);
      await claim.finish(new X509Certificate(certificate).serialNumber.toLowerCase(), issuedAt);
    } catch (err) {
      // The host did nothing wrong: give its token back so it can retry once the authority is fixed.
      await claim.release().catch((releaseErr: unknown) => request.log.error({ err: releaseErr }, 'could not release enrollment token'));
      if (err instanceof CaError) {
        request.log.error({ err, hostId }, 'CA refused to issue');
        return sendError(reply, 'INTERNAL', `the CA could not issue a certificate: ${err.message}`);
      }
      throw err;
    }
    request.log.info({ hostId, vtpmCa: vtpmCaCertificate !== undefined }, 'host enrolled');
    return { certificate, ...(vtpmCaCertificate !== undefined ? { vtpmCaCertificate } : {}) };
  });

  app.get<{ Params: { hostId: string } }>(HOST_CERTIFICATE_ROUTE, async (request, reply) => {
    const hostId = hostIdSchema.safeParse(request.params.hostId);
    if (!hostId.success) return sendError(reply, 'BAD_REQUEST', `host id ${describeIssues(hostId.error)}`);
    const certificate = await readHostCertificate(authority.paths, hostId.data);
    if (certificate === undefined) return sendError(reply, 'NO_CERTIFICATE', `host ${hostId.data} has no certificate`);
    return { hostId: hostId.data, certificate };
  });

  const idsKey = signedAuthorityIdsKey(authority);
  app.get(IDS_AUTHORITY_KEY_ROUTE, async () => ({ publicKey: idsKey.publicKey.toString('base64'), signature: idsKey.signature.toString('base64') }));

  app.post(IDS_SIGN_ROUTE, async (request, reply) => {
    const parsed = idsSignRequestSchema.safeParse(request.body);
    if (!parsed.success) return sendError(reply, 'BAD_REQUEST', describeIssues(parsed.error));
    let blobs;
    try {
      blobs = decodeIdsRegistrationBlobs(parsed.data);
    } catch (err) {
      if (err instanceof ProtocolError) return sendError(reply, 'BAD_REQUEST', err.message);
      throw err;
    }
    if (!opts.heartbeats) return sendError(reply, 'INTERNAL', 'this authority runs no heartbeat service, so it registers no IDS');
    try {
      const signature = await signIdsRegistration(authority, opts.heartbeats, blobs, now());
      request.log.info({ sessionId: blobs.header.sessionId, vmId: blobs.header.vmId, hostId: blobs.header.hostId }, 'IDS registration signed');
      return { signature: signature.toString('base64') };
    } catch (err) {
      if (!(err instanceof IdsSignRefusal)) throw err;
      request.log.warn({ code: err.code, measurement: blobs.header.measurement, vmId: blobs.header.vmId }, 'IDS registration refused');
      return sendError(reply, err.code, err.message);
    }
  });

  if (opts.heartbeats instanceof HeartbeatService) registerHeartbeatRoutes(app, opts.heartbeats);
  if (opts.attest) registerAttestRoutes(app, opts.attest);
  if (opts.imaInbox) registerImaRoutes(app, opts.imaInbox);

  return app;
}
