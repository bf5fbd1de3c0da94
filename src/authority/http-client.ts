/**
 * Calls to the authority's HTTP API from hosts and tenants. Responses are bounded in size and time
 * and validated before use; nothing here trusts what comes back (the CA is pinned by fingerprint or
 * out of band, certificates are verified against it by the caller).
 */
import type { z } from 'zod';
import {
  CA_ROUTE,
  ENROLL_ROUTE,
  MAX_RESPONSE_BYTES,
  certificateResponseSchema,
  enrollResponseSchema,
  errorResponseSchema,
} from './api.ts';

const TIMEOUT_MS = 15_000;

/** The authority could not be reached, refused the request, or answered something unusable. */
export class AuthorityRequestError extends Error {
  /** HTTP status, when the authority answered. */
  readonly status: number | undefined;
  /** The authority's error code (e.g. TOKEN_USED), when it sent one. */
  readonly code: string | undefined;
  constructor(message: string, status?: number, code?: string) {
    super(message);
    this.name = 'AuthorityRequestError';
    this.status = status;
    this.code = code;
  }
}

/** Checks an authority base URL: http(s), no credentials, query or fragment. Its path gets a trailing '/'. */
export function parseAuthorityUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new AuthorityRequestError(`not a URL: ${JSON.stringify(text)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new AuthorityRequestError(`authority URL must be http or https, not ${url.protocol}`);
  if (url.username || url.password || url.search || url.hash) throw new AuthorityRequestError('authority URL must not carry credentials, a query or a fragment');
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

async function readBounded(response: Response): Promise<string> {
  const declared = Number(response.headers.get('content-length') ?? '0');
  if (declared > MAX_RESPONSE_BYTES) throw new AuthorityRequestError(`authority response is too large (${declared} bytes)`, response.status);
  const chunks: Buffer[] = [];
  let total = 0;
  if (response.body) {
    for await (const chunk of response.body) {
      total += chunk.length;
      if (total > MAX_RESPONSE_BYTES) throw new AuthorityRequestError(`authority response exceeds ${MAX_RESPONSE_BYTES} bytes`, response.status);
      chunks.push(Buffer.from(chunk));
    }
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function call<T>(authorityUrl: string, route: string, schema: z.ZodType<T>, init: RequestInit = {}): Promise<T> {
  const url = new URL(route.replace(/^\//, ''), parseAuthorityUrl(authorityUrl));
  let response: Response;
  let text: string;
  try {
    response = await fetch(url, { ...init, redirect: 'error', signal: AbortSignal.timeout(TIMEOUT_MS) });
    text = await readBounded(response);
  } catch (err) {
    if (err instanceof AuthorityRequestError) throw err;
    const cause = (err as { cause?: { message?: string } }).cause?.message;
    throw new AuthorityRequestError(`cannot reach the authority at ${url.origin}: ${(err as Error).message}${cause ? ` (${cause})` : ''}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new AuthorityRequestError(`authority answered ${response.status} with a body that is not JSON`, response.status);
  }
  if (!response.ok) {
    const err = errorResponseSchema.safeParse(json);
    if (err.success) throw new AuthorityRequestError(`authority refused (${response.status} ${err.data.code}): ${err.data.error}`, response.status, err.data.code);
    throw new AuthorityRequestError(`authority answered ${response.status}`, response.status);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new AuthorityRequestError(`authority answered an unexpected body for ${route}`, response.status);
  return parsed.data;
}

/** The CA certificate as the authority serves it; unauthenticated until the caller pins or compares it. */
export async function fetchCaCertificate(authorityUrl: string): Promise<string> {
  return (await call(authorityUrl, CA_ROUTE, certificateResponseSchema)).certificate;
}

/**
 * Redeems a host's enrollment token; returns the issued certificate (PEM), still to be verified, and the
 * vTPM CA certificate when a vTPM CA key was sent.
 */
export async function enrollHost(
  authorityUrl: string,
  req: { hostId: string; hpkePublicKey: Uint8Array; token: string; vtpmCaPublicKey?: string },
): Promise<{ certificate: string; vtpmCaCertificate?: string }> {
  const body = JSON.stringify({
    hostId: req.hostId,
    hpkePublicKey: Buffer.from(req.hpkePublicKey).toString('base64'),
    token: req.token,
    ...(req.vtpmCaPublicKey !== undefined ? { vtpmCaPublicKey: req.vtpmCaPublicKey } : {}),
  });
  const res = await call(authorityUrl, ENROLL_ROUTE, enrollResponseSchema, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
  return { certificate: res.certificate, ...(res.vtpmCaCertificate !== undefined ? { vtpmCaCertificate: res.vtpmCaCertificate } : {}) };
}
