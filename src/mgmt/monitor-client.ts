/**
 * The management plane's client for the monitor's unix-socket API. It relays opaque blobs; it can
 * read the JSON envelopes but never what is sealed inside them.
 */
import { request } from 'node:http';

export interface MonitorReply {
  status: number;
  body: unknown;
}

const TIMEOUT_MS = 300_000;
const MAX_REPLY_BYTES = 4 * 1024 * 1024;

export function callMonitor(socketPath: string, method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<MonitorReply> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request(
      {
        socketPath,
        method,
        path: urlPath,
        headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
        timeout: TIMEOUT_MS,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_REPLY_BYTES) req.destroy(new Error('monitor reply too large'));
          else chunks.push(c);
        });
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
          } catch {
            reject(new Error(`monitor answered ${res.statusCode} with a body that is not JSON`));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`monitor did not answer ${method} ${urlPath} within ${TIMEOUT_MS} ms`)));
    req.on('error', (err) => reject(new Error(`monitor at ${socketPath}: ${err.message}`)));
    req.end(payload);
  });
}
