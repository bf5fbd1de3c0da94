/**
 * monitor/api: HTTP over a unix socket (0660: the monitor user and the management plane's group). Every body is
 * validated with zod; a refusal answers 403 with its code (REDIRECT, REPLAY, TAMPER, BAD_KERNEL, and for
 * IDS registrations BAD_SIGNATURE, WRONG_VM, POLICY) after the monitor has logged it.
 */
import { realpath, stat, chmod, rm } from 'node:fs/promises';
import path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { z } from 'zod';
import { ProtocolError } from '../../formats/protocol/fields.ts';
import {
  alertsQuerySchema,
  commandRequestSchema,
  launchRequestSchema,
  vmIdParamsSchema,
  type ErrorResponseWire,
} from '../../formats/protocol/monitor-api.ts';
import { consoleFramesQuerySchema, consoleInputRequestSchema, consoleOpenRequestSchema, sessionIdHex } from '../../formats/protocol/console-frame.ts';
import { vmIdHex } from '../../formats/protocol/fields.ts';
import { idsRegisterRequestSchema, sessionIdHex as idsSessionIdHex } from '../../formats/protocol/ids-registration.ts';
import { MONITOR_ATTEST_ROUTE, attestRequestSchema } from '../../formats/protocol/attestation.ts';
import { UnknownIdsSessionError } from '../introspect/ids-sessions.ts';
import { attachIdsChannelStream } from './ids-channel-stream.ts';
import { RefusalError } from '../identity/refusal.ts';
import { UnknownVmError, type Monitor } from '../monitor.ts';

export interface MonitorApiOptions {
  monitor: Monitor;
  socketPath: string;
  /** The management plane's storage: image, sidecar, kernel and initrd paths must resolve inside it. */
  storageDir: string;
  logger?: boolean;
}

class BadRequest extends Error {}

const consoleParamsSchema = z.strictObject({ vmId: vmIdHex, sessionId: sessionIdHex });
// Built once: zod compiles an object schema on its first parse, which cost the IDS channel ~1 ms a frame when built per request.
const idsSessionParamsSchema = z.strictObject({ sessionId: idsSessionIdHex });

function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw new BadRequest(`${what}: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return r.data;
}

/** Resolves a path from the management plane and refuses anything outside its storage or not a regular file. */
async function storageFile(storageRoot: string, p: string, what: string): Promise<string> {
  let real: string;
  try {
    real = await realpath(p);
  } catch {
    throw new BadRequest(`${what} ${p} does not exist`);
  }
  if (!real.startsWith(storageRoot + path.sep)) throw new BadRequest(`${what} ${p} is outside the management storage`);
  if (!(await stat(real)).isFile()) throw new BadRequest(`${what} ${p} is not a regular file`);
  return real;
}

function sendError(reply: FastifyReply, err: unknown): FastifyReply {
  let status = 500;
  let body: ErrorResponseWire = { error: 'internal error', code: 'INTERNAL' };
  if (err instanceof RefusalError) [status, body] = [403, { error: err.message, code: err.code }];
  else if (err instanceof BadRequest || err instanceof ProtocolError) [status, body] = [400, { error: err.message, code: 'BAD_REQUEST' }];
  else if (err instanceof UnknownVmError || err instanceof UnknownIdsSessionError) [status, body] = [404, { error: err.message, code: 'NOT_FOUND' }];
  else if (err instanceof Error) body = { error: err.message, code: 'INTERNAL' };
  return reply.code(status).send(body);
}

export async function startMonitorApi(opts: MonitorApiOptions): Promise<FastifyInstance> {
  const { monitor } = opts;
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: 256 * 1024 });

  app.get('/v1/host', async () => ({ hostId: monitor.hostId, certificate: monitor.certificatePem }));

  app.post('/v1/vms', async (req, reply) => {
    try {
      const body = parse(launchRequestSchema, req.body, 'launch request');
      // Resolved per request: the management plane may create (or move) its storage after the monitor starts.
      const storageRoot = await realpath(opts.storageDir).catch(() => {
        throw new BadRequest(`the management storage ${opts.storageDir} does not exist`);
      });
      const files = {
        image: await storageFile(storageRoot, body.image, 'image'),
        sidecar: body.sidecar === undefined ? undefined : await storageFile(storageRoot, body.sidecar, 'sidecar'),
        kernel: await storageFile(storageRoot, body.kernel, 'kernel'),
        initrd: await storageFile(storageRoot, body.initrd, 'initrd'),
      };
      const r = await monitor.launch({ bundle: Buffer.from(body.bundle, 'base64'), ...files });
      return reply.code(201).send({ vmId: r.vmId, identityProof: r.identityProof.toString('base64') });
    } catch (err) {
      return sendError(reply, err);
    }
  });

  app.get('/v1/vms', async () => ({ vms: await monitor.list() }));

  app.post('/v1/vms/:vmId/commands', async (req, reply) => {
    try {
      const { vmId } = parse(vmIdParamsSchema, req.params, 'VM id');
      const { command } = parse(commandRequestSchema, req.body, 'command request');
      const result = await monitor.command(vmId, Buffer.from(command, 'base64'));
      return reply.send({ result: result.toString('base64') });
    } catch (err) {
      return sendError(reply, err);
    }
  });

  app.post('/v1/vms/:vmId/console', async (req, reply) => {
    try {
      const { vmId } = parse(vmIdParamsSchema, req.params, 'VM id');
      const { tenantNonce } = parse(consoleOpenRequestSchema, req.body, 'console request');
      return reply.code(201).send({ sessionId: monitor.openConsole(vmId, Buffer.from(tenantNonce, 'base64')) });
    } catch (err) {
      return sendError(reply, err);
    }
  });

  app.get('/v1/vms/:vmId/console/:sessionId/frames', async (req, reply) => {
    try {
      const { vmId, sessionId } = parse(consoleParamsSchema, req.params, 'console session');
      const { after, waitMs } = parse(consoleFramesQuerySchema, req.query, 'frames query');
      const frames = await monitor.consoleFrames(vmId, sessionId, after, waitMs);
      return reply.send({ frames: frames.map((f) => ({ seq: f.seq, frame: f.frame.toString('base64') })) });
    } catch (err) {
      return sendError(reply, err);
    }
  });

  app.post('/v1/vms/:vmId/console/:sessionId/input', async (req, reply) => {
    try {
      const { vmId, sessionId } = parse(consoleParamsSchema, req.params, 'console session');
      const { frame } = parse(consoleInputRequestSchema, req.body, 'console input');
      monitor.consoleInput(vmId, sessionId, Buffer.from(frame, 'base64'));
      return reply.send({ accepted: true });
    } catch (err) {
      return sendError(reply, err);
    }
  });

  // IDS channel (docs/ids.md): the host library relays the enclave's registration and sealed frames.
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.post('/v1/vms/:vmId/ids/sessions', async (req, reply) => {
    try {
      const { vmId } = parse(vmIdParamsSchema, req.params, 'VM id');
      const body = parse(idsRegisterRequestSchema, req.body, 'IDS registration');
      return reply.code(201).send(await monitor.idsRegister(vmId, body));
    } catch (err) {
      return sendError(reply, err);
    }
  });

  app.post('/v1/ids/sessions/:sessionId/reads', async (req, reply) => {
    try {
      const { sessionId } = parse(idsSessionParamsSchema, req.params, 'IDS session');
      if (!Buffer.isBuffer(req.body)) throw new BadRequest('IDS request frame must be application/octet-stream');
      const frame = await monitor.idsRead(sessionId, req.body);
      return reply.type('application/octet-stream').send(frame);
    } catch (err) {
      return sendError(reply, err);
    }
  });

  // Attestation (formats/protocol/attestation.ts): a nonce in, a quote out; nothing here needs trusting the caller.
  app.post(MONITOR_ATTEST_ROUTE, async (req, reply) => {
    try {
      const { vmId } = parse(vmIdParamsSchema, req.params, 'VM id');
      const body = parse(attestRequestSchema, req.body, 'attestation request');
      return reply.send(await monitor.attest(vmId, body));
    } catch (err) {
      return sendError(reply, err);
    }
  });

  app.get('/v1/alerts', async (req, reply) => {
    try {
      const { after } = parse(alertsQuerySchema, req.query, 'alerts query');
      return reply.send({ alerts: monitor.alerts.list(after) });
    } catch (err) {
      return sendError(reply, err);
    }
  });

  // The same reads as a stream of frames on one upgraded connection (ids-channel-stream.ts).
  attachIdsChannelStream(app, monitor, (err) => err instanceof UnknownVmError);

  await rm(opts.socketPath, { force: true });
  await app.listen({ path: opts.socketPath });
  // The management plane runs as another user in the socket's group: it may connect, nobody else may.
  await chmod(opts.socketPath, 0o660);
  return app;
}
