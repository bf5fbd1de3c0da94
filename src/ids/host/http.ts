/**
 * Bounded HTTP calls of the IDS host library, over TCP (the authority) or a unix socket (the monitor).
 * Replies are size- and time-limited; JSON replies are validated by the caller's schema.
 */
import { request } from 'node:http';
import type { z } from 'zod';

export class IdsHostRequestError extends Error {
  override name = 'IdsHostRequestError';
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
  }
}

export interface Target {
  /** Base URL (authority) … */
  url?: URL;
  /** … or the monitor's unix socket. */
  socketPath?: string;
}

export interface RawReply {
  status: number;
  contentType: string;
  body: Buffer;
}

export function rawCall(target: Target, method: 'GET' | 'POST', path: string, body: Buffer | undefined, opts: { contentType?: string; timeoutMs: number; maxBytes: number }): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const where = target.socketPath ? { socketPath: target.socketPath } : { host: target.url?.hostname, port: target.url?.port || 80 };
    const base = target.url ? target.url.pathname.replace(/\/$/, '') : '';
    const req = request(
      {
        ...where,
        method,
        path: base + path,
        headers: body ? { 'content-type': opts.contentType ?? 'application/json', 'content-length': body.length } : {},
        timeout: opts.timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > opts.maxBytes) req.destroy(new IdsHostRequestError(`reply to ${method} ${path} is over ${opts.maxBytes} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new IdsHostRequestError(`no answer to ${method} ${path} within ${opts.timeoutMs} ms`)));
    req.on('error', (err) => reject(err instanceof IdsHostRequestError ? err : new IdsHostRequestError(`${method} ${path}: ${err.message}`)));
    req.end(body);
  });
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_BYTES = 1 << 20;

/** A JSON call; non-2xx replies become IdsHostRequestError with the peer's `{ error, code }` when present. 204 gives undefined. */
export async function jsonCall<S extends z.ZodType>(
  target: Target,
  method: 'GET' | 'POST',
  path: string,
  schema: S,
  body?: unknown,
  opts: { timeoutMs?: number; maxBytes?: number } = {},
): Promise<z.output<S> | undefined> {
  const reply = await rawCall(target, method, path, body === undefined ? undefined : Buffer.from(JSON.stringify(body)), {
    timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    maxBytes: opts.maxBytes ?? DEFAULT_MAX_BYTES,
  });
  if (reply.status === 204) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(reply.body.toString('utf8'));
  } catch {
    throw new IdsHostRequestError(`${method} ${path}: ${reply.status} reply is not JSON`, reply.status);
  }
  if (reply.status < 200 || reply.status > 299) {
    const e = value as { error?: unknown; code?: unknown };
    const code = typeof e?.code === 'string' ? e.code.slice(0, 64) : undefined;
    const message = typeof e?.error === 'string' ? e.error.slice(0, 500) : `status ${reply.status}`;
    throw new IdsHostRequestError(`${method} ${path}: ${message}${code ? ` (${code})` : ''}`, reply.status, code);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new IdsHostRequestError(`${method} ${path}: unexpected reply: ${parsed.error.issues[0]?.message ?? 'invalid'}`, reply.status);
  return parsed.data;
}
