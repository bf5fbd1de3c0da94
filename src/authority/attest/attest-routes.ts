/**
 * The attestation routes of the authority's HTTP service (formats/protocol/attestation.ts):
 *
 *   PUT  /v1/attest/vms/:vmId           AttestEnroll → { vmId, status }   (source, references, policy, webhook)
 *   POST /v1/attest/vms/:vmId/attest    {} → AttestVerdict                 (one attestation, committed first)
 *   GET  /v1/attest/vms/:vmId/history   → { vmId, status, verdicts }       (newest first)
 *
 * Errors use the server's `{ error, code }`.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { AUTHORITY_ATTEST_ENROLL_ROUTE, AUTHORITY_ATTEST_HISTORY_ROUTE, AUTHORITY_ATTEST_ROUTE, MAX_ENROLL_BODY_BYTES, attestEnrollSchema } from '../../formats/protocol/attestation.ts';
import { AttestRefusal, type AttestService } from './attest-service.ts';

const params = z.strictObject({ vmId: z.string().regex(/^[0-9a-f]{32}$/, 'must be a VM id (32 lower-case hex digits)') });
const historyQuery = z.strictObject({ limit: z.coerce.number().int().min(1).max(1000).default(100) });

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
}

export function registerAttestRoutes(app: FastifyInstance, service: AttestService): void {
  app.addHook('onClose', async () => service.close());

  app.put(AUTHORITY_ATTEST_ENROLL_ROUTE, { bodyLimit: MAX_ENROLL_BODY_BYTES }, async (request, reply) => {
    const p = params.safeParse(request.params);
    if (!p.success) return reply.code(400).send({ error: issues(p.error), code: 'BAD_REQUEST' });
    const body = attestEnrollSchema.safeParse(request.body);
    if (!body.success) return reply.code(400).send({ error: issues(body.error), code: 'BAD_REQUEST' });
    try {
      return { vmId: p.data.vmId, status: service.enroll(p.data.vmId, body.data) };
    } catch (err) {
      if (err instanceof AttestRefusal) return reply.code(400).send({ error: err.message, code: err.code });
      throw err;
    }
  });

  app.post(AUTHORITY_ATTEST_ROUTE, async (request, reply) => {
    const p = params.safeParse(request.params);
    if (!p.success) return reply.code(400).send({ error: issues(p.error), code: 'BAD_REQUEST' });
    try {
      return await service.attest(p.data.vmId);
    } catch (err) {
      if (err instanceof AttestRefusal) return reply.code(404).send({ error: err.message, code: err.code });
      throw err;
    }
  });

  app.get(AUTHORITY_ATTEST_HISTORY_ROUTE, async (request, reply) => {
    const p = params.safeParse(request.params);
    const q = historyQuery.safeParse(request.query);
    if (!p.success) return reply.code(400).send({ error: issues(p.error), code: 'BAD_REQUEST' });
    if (!q.success) return reply.code(400).send({ error: issues(q.error), code: 'BAD_REQUEST' });
    const status = service.status(p.data.vmId);
    if (!status) return reply.code(404).send({ error: `VM ${p.data.vmId} is not enrolled for attestation`, code: 'NOT_ENROLLED' });
    return { vmId: p.data.vmId, status, verdicts: service.history(p.data.vmId, q.data.limit) };
  });
}
