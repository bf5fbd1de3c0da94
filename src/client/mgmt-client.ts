/**
 * The tenant's client for the (untrusted) management plane. What comes back is checked by the
 * caller: host certificates against the pinned CA, proofs and results by their AEAD.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { errorResponseSchema } from '../formats/protocol/monitor-api.ts';
import type { Refusal } from '../formats/protocol/command.ts';
import { REFUSALS } from '../formats/protocol/command.ts';

export class MgmtError extends Error {
  override name = 'MgmtError';
  constructor(
    message: string,
    readonly status: number,
    /** Set when the monitor refused for a security reason. */
    readonly refusal: Refusal | undefined,
  ) {
    super(message);
  }
}

const TIMEOUT_MS = 300_000;

export class MgmtClient {
  constructor(readonly baseUrl: string) {
    const u = new URL(baseUrl);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`management plane URL must be http(s): ${baseUrl}`);
  }

  async #json(method: string, path: string, body?: unknown): Promise<unknown> {
    const res = await fetch(new URL(path, this.baseUrl), {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    return this.#check(res, `${method} ${path}`);
  }

  async #check(res: Response, what: string): Promise<unknown> {
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new MgmtError(`${what}: management plane answered ${res.status} with a non-JSON body`, res.status, undefined);
    }
    if (res.ok) return parsed;
    const err = errorResponseSchema.safeParse(parsed);
    const code = err.success ? err.data.code : undefined;
    const refusal = code && (REFUSALS as readonly string[]).includes(code) ? (code as Refusal) : undefined;
    throw new MgmtError(`${what}: ${err.success ? err.data.error : `HTTP ${res.status}`}`, res.status, refusal);
  }

  getHost(): Promise<unknown> {
    return this.#json('GET', '/v1/host');
  }

  /** Streams a local file into the management plane's storage; `onProgress(sentBytes, totalBytes)`. */
  async upload(kind: 'image' | 'sidecar' | 'kernel' | 'initrd', name: string, file: string, onProgress?: (done: number, total: number) => void): Promise<void> {
    const total = (await stat(file)).size;
    let done = 0;
    const counted = createReadStream(file).pipe(
      new Transform({
        transform(chunk: Buffer, _e, cb) {
          done += chunk.length;
          onProgress?.(done, total);
          cb(null, chunk);
        },
      }),
    );
    const res = await fetch(new URL(`/v1/objects/${kind}/${name}`, this.baseUrl), {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(total) },
      body: Readable.toWeb(counted) as ReadableStream,
      duplex: 'half',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    } as RequestInit & { duplex: 'half' });
    await this.#check(res, `upload ${kind} ${name}`);
  }

  launch(body: { bundle: string; image: string; kernel: string; initrd: string }): Promise<unknown> {
    return this.#json('POST', '/v1/vms', body);
  }

  command(vmId: string, command: string): Promise<unknown> {
    return this.#json('POST', `/v1/vms/${vmId}/commands`, { command });
  }

  openConsole(vmId: string, tenantNonce: string): Promise<unknown> {
    return this.#json('POST', `/v1/vms/${vmId}/console`, { tenantNonce });
  }

  consoleFrames(vmId: string, sessionId: string, after: number, waitMs: number): Promise<unknown> {
    return this.#json('GET', `/v1/vms/${vmId}/console/${sessionId}/frames?after=${after}&waitMs=${waitMs}`);
  }

  consoleInput(vmId: string, sessionId: string, frame: string): Promise<unknown> {
    return this.#json('POST', `/v1/vms/${vmId}/console/${sessionId}/input`, { frame });
  }

  alerts(after = 0): Promise<unknown> {
    return this.#json('GET', `/v1/alerts?after=${after}`);
  }
}
