/**
 * ADVERSARY: a malicious management plane as a man in the middle in front of the honest one. It relays
 * everything (uploads stream through untouched), records every launch and command it sees, and lets a
 * policy rewrite or answer launches and retarget commands: the tools of an administrator who wants to
 * redirect, replay or forge what a tenant receives.
 */
import { request, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';

export const launchBodySchema = z.strictObject({ bundle: z.string(), image: z.string(), kernel: z.string(), initrd: z.string() });
export type LaunchBody = z.infer<typeof launchBodySchema>;

export interface RelayedReply {
  status: number;
  body: unknown;
}

/** What to do with a launch request: forward it (possibly rewritten) or answer it without forwarding. */
export type LaunchAction = { forward: LaunchBody } | { answer: RelayedReply };

export interface MitmPolicy {
  launch?(req: LaunchBody): LaunchAction | Promise<LaunchAction>;
  /** The VM id the command is actually sent to (default: the one the tenant named). */
  commandTarget?(vmId: string, command: string): string;
}

export interface RecordedLaunch {
  request: LaunchBody;
  reply: RelayedReply;
}

export interface RecordedCommand {
  /** The VM the tenant named. */
  vmId: string;
  /** The VM the proxy sent it to. */
  sentTo: string;
  command: string;
  reply: RelayedReply;
}

const MAX_JSON_BODY = 1024 * 1024;
const UPSTREAM_TIMEOUT_MS = 300_000;
const COMMAND_PATH = /^\/v1\/vms\/([0-9a-f]{32})\/commands$/;

function readJsonBody(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_JSON_BODY) req.destroy(new Error('request body too large'));
      else chunks.push(c);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new Error('request body is not JSON'));
      }
    });
    req.on('error', reject);
  });
}

function sendJson(res: ServerResponse, reply: RelayedReply): void {
  const payload = Buffer.from(JSON.stringify(reply.body));
  res.writeHead(reply.status, { 'content-type': 'application/json', 'content-length': payload.length });
  res.end(payload);
}

export class MitmProxy {
  /** Replaced at will between the tenant's requests. */
  policy: MitmPolicy = {};
  readonly launches: RecordedLaunch[] = [];
  readonly commands: RecordedCommand[] = [];

  private constructor(
    private readonly server: Server,
    readonly upstream: URL,
  ) {}

  /** Listens on 127.0.0.1 (an ephemeral port) in front of the management plane at `upstreamUrl`. */
  static async start(upstreamUrl: string): Promise<MitmProxy> {
    const upstream = new URL(upstreamUrl);
    if (upstream.protocol !== 'http:') throw new Error(`the proxy relays plain http only: ${upstreamUrl}`);
    let proxy: MitmProxy | undefined;
    const server = createServer((req, res) => {
      proxy!.#handle(req, res).catch((err: unknown) => {
        if (res.headersSent) res.destroy();
        else sendJson(res, { status: 502, body: { error: `proxy: ${err instanceof Error ? err.message : String(err)}`, code: 'INTERNAL' } });
      });
    });
    proxy = new MitmProxy(server, upstream);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Sends a JSON request straight to the honest management plane (as the administrator would). */
  async callUpstream(method: 'GET' | 'POST', path: string, body?: unknown): Promise<RelayedReply> {
    const res = await fetch(new URL(path, this.upstream), {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(UPSTREAM_TIMEOUT_MS),
    });
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = { error: text };
    }
    return { status: res.status, body: parsed };
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = req.url ?? '/';
    if (req.method === 'POST' && path === '/v1/vms') {
      const parsed = launchBodySchema.safeParse(await readJsonBody(req));
      if (!parsed.success) return sendJson(res, { status: 400, body: { error: 'proxy: malformed launch request', code: 'BAD_REQUEST' } });
      const action = this.policy.launch ? await this.policy.launch(parsed.data) : { forward: parsed.data };
      const reply = 'answer' in action ? action.answer : await this.callUpstream('POST', path, action.forward);
      this.launches.push({ request: parsed.data, reply });
      return sendJson(res, reply);
    }
    const cmd = req.method === 'POST' ? COMMAND_PATH.exec(path) : null;
    if (cmd) {
      const vmId = cmd[1]!;
      const body = await readJsonBody(req);
      const command = typeof (body as { command?: unknown }).command === 'string' ? (body as { command: string }).command : '';
      const sentTo = this.policy.commandTarget?.(vmId, command) ?? vmId;
      const reply = await this.callUpstream('POST', `/v1/vms/${sentTo}/commands`, body);
      this.commands.push({ vmId, sentTo, command, reply });
      return sendJson(res, reply);
    }
    this.#pipe(req, res);
  }

  /** Everything else (uploads, console, alerts) is relayed byte for byte. */
  #pipe(req: IncomingMessage, res: ServerResponse): void {
    const up = request(
      { host: this.upstream.hostname, port: this.upstream.port, method: req.method, path: req.url, headers: req.headers, timeout: UPSTREAM_TIMEOUT_MS },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on('timeout', () => up.destroy(new Error('upstream timed out')));
    up.on('error', () => res.destroy());
    req.pipe(up);
  }
}
