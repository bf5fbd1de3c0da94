/**
 * The heartbeat routes of the authority's HTTP service (formats/protocol/ids-heartbeat.ts), registered
 * on the server by `registerHeartbeatRoutes(app, service)`. Errors use the server's `{ error, code }`.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { z } from 'zod';
import {
  IDS_ALERTS_ROUTE,
  IDS_CHALLENGE_ROUTE,
  IDS_HEARTBEAT_ROUTE,
  alertsQuerySchema,
  challengeQuerySchema,
  heartbeatAnswerSchema,
  idsSessionParamsSchema,
} from '../formats/protocol/ids-heartbeat.ts';
import { HeartbeatRefusal, type HeartbeatService } from './heartbeat.ts';

const REFUSAL_STATUS: Record<HeartbeatRefusal['code'], number> = {
  UNKNOWN_SESSION: 404,
  STALE_CHALLENGE: 409,
  BAD_MAC: 403,
  SESSION_EXISTS: 409,
  TOO_MANY_SESSIONS: 503,
};

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
}

function refuse(reply: FastifyReply, err: unknown): FastifyReply {
  if (!(err instanceof HeartbeatRefusal)) throw err;
  return reply.code(REFUSAL_STATUS[err.code]).send({ error: err.message, code: err.code });
}

export function registerHeartbeatRoutes(app: FastifyInstance, service: HeartbeatService): void {
  app.addHook('onClose', async () => service.close());

  app.get(IDS_CHALLENGE_ROUTE, async (request, reply) => {
    const params = idsSessionParamsSchema.safeParse(request.params);
    const query = challengeQuerySchema.safeParse(request.query);
    if (!params.success) return reply.code(400).send({ error: issues(params.error), code: 'BAD_REQUEST' });
    if (!query.success) return reply.code(400).send({ error: issues(query.error), code: 'BAD_REQUEST' });
    try {
      const c = await service.challenge(params.data.sessionId, query.data.after, query.data.waitMs);
      if (!c) return reply.code(204).send();
      return { sessionId: c.sessionId, seq: c.seq, nonce: c.nonce.toString('base64') };
    } catch (err) {
      return refuse(reply, err);
    }
  });

  app.post(IDS_HEARTBEAT_ROUTE, async (request, reply) => {
    const params = idsSessionParamsSchema.safeParse(request.params);
    const body = heartbeatAnswerSchema.safeParse(request.body);
    if (!params.success) return reply.code(400).send({ error: issues(params.error), code: 'BAD_REQUEST' });
    if (!body.success) return reply.code(400).send({ error: issues(body.error), code: 'BAD_REQUEST' });
    try {
      await service.answer(params.data.sessionId, body.data.seq, body.data.status, body.data.mac);
      return { ok: true };
    } catch (err) {
      return refuse(reply, err);
    }
  });

  app.get(IDS_ALERTS_ROUTE, async (request, reply) => {
    const query = alertsQuerySchema.safeParse(request.query);
    if (!query.success) return reply.code(400).send({ error: issues(query.error), code: 'BAD_REQUEST' });
    return { alerts: await service.alerts(query.data.after, query.data.waitMs) };
  });
}
