/**
 * Where the verifier gets a VM's IMA list from: the VM's IDS session (formats/protocol/ids-ima.ts). The
 * verifier asks after it has the quote; the host library, long-polling here, has the enclave read the list
 * and POSTs it; the verifier takes the first list answering its request (so read after the quote) and
 * replays it against the quoted PCR 10. The path is untrusted and need not be more: a list that does not
 * replay fails the attestation. A VM with no IDS session polling here has no list ("IMA: not checked").
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { idsSessionParamsSchema } from '../../formats/protocol/ids-heartbeat.ts';
import { IDS_IMA_REQUEST_ROUTE, IDS_IMA_ROUTE, MAX_IMA_BODY_BYTES, imaRequestQuerySchema, imaUploadSchema } from '../../formats/protocol/ids-ima.ts';

/** A session that has not polled for this long is taken to be gone. */
const STALE_MS = 30_000;
const DEFAULT_WAIT_MS = 20_000;

interface Session {
  vmId: string;
  seq: number;
  lastPollAt: number;
  polling: number;
  list: { seq: number; log: Buffer } | undefined;
  wake: Set<() => void>;
}

export class UnknownImaSession extends Error {
  override readonly name = 'UnknownImaSession';
}

export class ImaInbox {
  readonly #sessions = new Map<string, Session>();
  #closed = false;

  /** `vmOf` names the VM an IDS session was registered for (the heartbeat service knows), or undefined. */
  constructor(
    private readonly vmOf: (sessionId: string) => string | undefined,
    private readonly now: () => number = Date.now,
  ) {}

  /** An inbox whose sessions are the heartbeat service's (it knows each IDS session's VM). */
  static forHeartbeats(heartbeats: { state(sessionId: string): { binding: { vmId: string } } }): ImaInbox {
    return new ImaInbox((sessionId) => {
      try {
        return heartbeats.state(sessionId).binding.vmId;
      } catch {
        return undefined; // not registered
      }
    });
  }

  #session(sessionId: string): Session {
    let s = this.#sessions.get(sessionId);
    if (!s) {
      const vmId = this.vmOf(sessionId);
      if (!vmId) throw new UnknownImaSession(`no IDS session ${sessionId}`);
      s = { vmId, seq: 0, lastPollAt: 0, polling: 0, list: undefined, wake: new Set() };
      this.#sessions.set(sessionId, s);
    }
    return s;
  }

  #wait(s: Session, ms: number, done: () => boolean): Promise<void> {
    if (done() || ms <= 0 || this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (done() || this.#closed) finish();
      };
      const finish = () => {
        clearTimeout(timer);
        s.wake.delete(check);
        resolve();
      };
      const timer = setTimeout(finish, ms);
      s.wake.add(check);
    });
  }

  #notify(s: Session): void {
    for (const w of [...s.wake]) w();
  }

  /** The host library's long poll: the newest request above `after`, or undefined after `waitMs`. */
  async poll(sessionId: string, after: number, waitMs: number): Promise<number | undefined> {
    const s = this.#session(sessionId);
    s.lastPollAt = this.now();
    s.polling++;
    try {
      await this.#wait(s, waitMs, () => s.seq > after);
    } finally {
      s.polling--;
      s.lastPollAt = this.now();
    }
    return s.seq > after ? s.seq : undefined;
  }

  /** A list answering request `seq`. */
  upload(sessionId: string, seq: number, log: Buffer): void {
    const s = this.#session(sessionId);
    if (seq > s.seq) throw new UnknownImaSession(`no IMA request ${seq} on session ${sessionId}`);
    if (!s.list || seq >= s.list.seq) s.list = { seq, log };
    this.#notify(s);
  }

  /**
   * Asks every live IDS session of `vmId` for a fresh list and returns the first that answers, or
   * undefined when none is live or none answers within `timeoutMs`.
   */
  async fetch(vmId: string, timeoutMs = DEFAULT_WAIT_MS): Promise<Buffer | undefined> {
    const now = this.now();
    const live = [...this.#sessions.values()].filter((s) => s.vmId === vmId && (s.polling > 0 || now - s.lastPollAt < STALE_MS));
    if (live.length === 0) return undefined;
    const wanted = new Map(live.map((s) => [s, ++s.seq]));
    for (const s of live) this.#notify(s);
    const answered = () => live.find((s) => s.list !== undefined && s.list.seq >= wanted.get(s)!);
    await Promise.race(live.map((s) => this.#wait(s, timeoutMs, () => answered() !== undefined)));
    return answered()?.list?.log;
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#sessions.values()) this.#notify(s);
  }
}

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
}

export function registerImaRoutes(app: FastifyInstance, inbox: ImaInbox): void {
  app.addHook('onClose', async () => inbox.close());

  app.get(IDS_IMA_REQUEST_ROUTE, async (request, reply) => {
    const p = idsSessionParamsSchema.safeParse(request.params);
    const q = imaRequestQuerySchema.safeParse(request.query);
    if (!p.success) return reply.code(400).send({ error: issues(p.error), code: 'BAD_REQUEST' });
    if (!q.success) return reply.code(400).send({ error: issues(q.error), code: 'BAD_REQUEST' });
    try {
      const seq = await inbox.poll(p.data.sessionId, q.data.after, q.data.waitMs);
      if (seq === undefined) return reply.code(204).send();
      return { seq };
    } catch (err) {
      if (err instanceof UnknownImaSession) return reply.code(404).send({ error: err.message, code: 'UNKNOWN_SESSION' });
      throw err;
    }
  });

  app.post(IDS_IMA_ROUTE, { bodyLimit: MAX_IMA_BODY_BYTES }, async (request, reply) => {
    const p = idsSessionParamsSchema.safeParse(request.params);
    const b = imaUploadSchema.safeParse(request.body);
    if (!p.success) return reply.code(400).send({ error: issues(p.error), code: 'BAD_REQUEST' });
    if (!b.success) return reply.code(400).send({ error: issues(b.error), code: 'BAD_REQUEST' });
    try {
      inbox.upload(p.data.sessionId, b.data.seq, b.data.log);
      return { ok: true };
    } catch (err) {
      if (err instanceof UnknownImaSession) return reply.code(404).send({ error: err.message, code: 'UNKNOWN_SESSION' });
      throw err;
    }
  });
}
