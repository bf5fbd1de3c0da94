/**
 * The management plane (UNTRUSTED): stores tenants' images, sidecars and boot files, and relays
 * sealed launch bundles and sealed commands to the monitor. It is written the way a provider would
 * write it; nothing the tenant relies on depends on it behaving.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import Fastify, { type FastifyInstance } from 'fastify';
import { z } from 'zod';
import { callMonitor } from './monitor-client.ts';

export interface MgmtOptions {
  storageDir: string;
  monitorSocket: string;
  port: number;
  host?: string;
  logger?: boolean;
  /** Largest upload accepted, in bytes. */
  maxUploadBytes?: number;
}

export const STORED_KINDS = ['image', 'sidecar', 'kernel', 'initrd'] as const;
export type StoredKind = (typeof STORED_KINDS)[number];

const nameSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'must be 1-63 of a-z 0-9 . _ -');
const objectParams = z.strictObject({ kind: z.enum(STORED_KINDS), name: nameSchema });
const launchBody = z.strictObject({
  bundle: z.string().max(128 * 1024),
  image: nameSchema,
  kernel: nameSchema,
  initrd: nameSchema,
});
const vmParams = z.strictObject({ vmId: z.string().regex(/^[0-9a-f]{32}$/) });
const commandBody = z.strictObject({ command: z.string().max(16 * 1024) });

/** Where the management plane keeps an object: <storage>/<kind>s/<name>. */
export function storedPath(storageDir: string, kind: StoredKind, name: string): string {
  return path.join(storageDir, `${kind}s`, name);
}

export async function startMgmt(opts: MgmtOptions): Promise<FastifyInstance> {
  const storage = path.resolve(opts.storageDir);
  for (const kind of STORED_KINDS) await mkdir(path.join(storage, `${kind}s`), { recursive: true });
  const maxUpload = opts.maxUploadBytes ?? 64 * 1024 ** 3;
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: 1024 * 1024 });
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  const bad = (msg: string) => ({ error: msg, code: 'BAD_REQUEST' as const });
  const relay = async (reply: import('fastify').FastifyReply, method: 'GET' | 'POST', url: string, body?: unknown) => {
    const r = await callMonitor(opts.monitorSocket, method, url, body);
    return reply.code(r.status).send(r.body);
  };

  app.get('/v1/host', (_req, reply) => relay(reply, 'GET', '/v1/host'));

  // Uploads stream to a temp name and are renamed once complete, so a cut upload never stands in for an object.
  app.put('/v1/objects/:kind/:name', async (req, reply) => {
    const p = objectParams.safeParse(req.params);
    if (!p.success) return reply.code(400).send(bad(p.error.issues.map((i) => i.message).join('; ')));
    if (req.headers['content-type'] !== 'application/octet-stream') return reply.code(415).send(bad('upload as application/octet-stream'));
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (!Number.isFinite(declared) || declared > maxUpload) return reply.code(413).send(bad(`content-length required, at most ${maxUpload}`));
    const dest = storedPath(storage, p.data.kind, p.data.name);
    const tmp = `${dest}.upload-${process.pid}-${Date.now()}`;
    try {
      await pipeline(req.body as NodeJS.ReadableStream, createWriteStream(tmp, { mode: 0o640 }));
      if ((await stat(tmp)).size !== declared) throw new Error('upload ended early');
      await rename(tmp, dest);
    } catch (err) {
      await rm(tmp, { force: true });
      return reply.code(400).send(bad(`upload failed: ${err instanceof Error ? err.message : String(err)}`));
    }
    return reply.code(201).send({ kind: p.data.kind, name: p.data.name, bytes: declared });
  });

  app.post('/v1/vms', async (req, reply) => {
    const b = launchBody.safeParse(req.body);
    if (!b.success) return reply.code(400).send(bad(b.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')));
    // An XTS-only disk has no sidecar; one stored under the image's name goes along (the bundle says which it needs).
    const sidecar = storedPath(storage, 'sidecar', b.data.image);
    const haveSidecar = await stat(sidecar).then(
      (st) => st.isFile(),
      () => false,
    );
    return relay(reply, 'POST', '/v1/vms', {
      bundle: b.data.bundle,
      image: storedPath(storage, 'image', b.data.image),
      ...(haveSidecar ? { sidecar } : {}),
      kernel: storedPath(storage, 'kernel', b.data.kernel),
      initrd: storedPath(storage, 'initrd', b.data.initrd),
    });
  });

  app.get('/v1/vms', (_req, reply) => relay(reply, 'GET', '/v1/vms'));

  app.post('/v1/vms/:vmId/commands', async (req, reply) => {
    const p = vmParams.safeParse(req.params);
    const b = commandBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('expected /v1/vms/<32 hex>/commands with {"command": base64}'));
    return relay(reply, 'POST', `/v1/vms/${p.data.vmId}/commands`, b.data);
  });

  // Attestation: the verifier's nonce in, the monitor's quote out; a relay can delay or spoil it, not forge it.
  app.post('/v1/vms/:vmId/attest', async (req, reply) => {
    const p = vmParams.safeParse(req.params);
    if (!p.success) return reply.code(400).send(bad('expected /v1/vms/<32 hex>/attest'));
    return relay(reply, 'POST', `/v1/vms/${p.data.vmId}/attest`, req.body);
  });

  // The sealed console: the management plane sees numbered opaque frames, nothing more.
  const sessionParams = z.strictObject({ vmId: z.string().regex(/^[0-9a-f]{32}$/), sessionId: z.string().regex(/^[0-9a-f]{32}$/) });
  app.post('/v1/vms/:vmId/console', async (req, reply) => {
    const p = vmParams.safeParse(req.params);
    if (!p.success) return reply.code(400).send(bad('expected /v1/vms/<32 hex>/console'));
    return relay(reply, 'POST', `/v1/vms/${p.data.vmId}/console`, req.body);
  });
  app.get('/v1/vms/:vmId/console/:sessionId/frames', async (req, reply) => {
    const p = sessionParams.safeParse(req.params);
    if (!p.success) return reply.code(400).send(bad('expected /v1/vms/<32 hex>/console/<32 hex>/frames'));
    const q = req.query as Record<string, unknown>;
    const num = (v: unknown, dflt: number) => (typeof v === 'string' && /^\d{1,15}$/.test(v) ? v : String(dflt));
    return relay(reply, 'GET', `/v1/vms/${p.data.vmId}/console/${p.data.sessionId}/frames?after=${num(q.after, 0)}&waitMs=${num(q.waitMs, 10_000)}`);
  });
  app.post('/v1/vms/:vmId/console/:sessionId/input', async (req, reply) => {
    const p = sessionParams.safeParse(req.params);
    if (!p.success) return reply.code(400).send(bad('expected /v1/vms/<32 hex>/console/<32 hex>/input'));
    return relay(reply, 'POST', `/v1/vms/${p.data.vmId}/console/${p.data.sessionId}/input`, req.body);
  });

  app.get('/v1/alerts', (req, reply) => {
    const after = Number((req.query as Record<string, unknown>).after ?? 0);
    return relay(reply, 'GET', `/v1/alerts?after=${Number.isInteger(after) && after >= 0 ? after : 0}`);
  });

  await app.listen({ port: opts.port, host: opts.host ?? '127.0.0.1' });
  return app;
}
