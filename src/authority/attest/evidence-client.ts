/**
 * Fetches evidence for the verifier: POST /v1/vms/:vmId/attest { nonce, pcrs } to the management plane
 * (an http(s) URL; it relays to the monitor) or, in a local cloud, straight to the monitor's socket
 * (`unix:/path`). Either way the path is untrusted: the answer is bounded in size and time, and is
 * validated with the evidence schema before the verifier looks at it.
 */
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { MAX_EVIDENCE_JSON_BYTES, MONITOR_ATTEST_ROUTE, attestationEvidenceSchema, type AttestRequest, type AttestationEvidence, type PcrRequest } from '../../formats/protocol/attestation.ts';

const TIMEOUT_MS = 60_000;

export class EvidenceUnavailable extends Error {
  override readonly name = 'EvidenceUnavailable';
}

export type EvidenceFetcher = (source: string, vmId: string, req: AttestRequest) => Promise<AttestationEvidence>;

function post(source: string, path: string, body: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    let req;
    if (source.startsWith('unix:')) {
      req = request({ socketPath: source.slice('unix:'.length), path, method: 'POST', headers, timeout: TIMEOUT_MS });
    } else {
      const base = new URL(source);
      const url = new URL(path.replace(/^\//, ''), base.href.endsWith('/') ? base : new URL(`${base.href}/`));
      req = (url.protocol === 'https:' ? httpsRequest : request)(url, { method: 'POST', headers, timeout: TIMEOUT_MS });
    }
    req.on('timeout', () => req.destroy(new EvidenceUnavailable(`no answer within ${TIMEOUT_MS / 1000} s`)));
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let total = 0;
      res.on('data', (c: Buffer) => {
        total += c.length;
        if (total > MAX_EVIDENCE_JSON_BYTES) {
          res.destroy();
          reject(new EvidenceUnavailable(`evidence exceeds ${MAX_EVIDENCE_JSON_BYTES} bytes`));
        } else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.end(body);
  });
}

export function attestRequestBody(nonce: Buffer, pcrs: PcrRequest): string {
  return JSON.stringify({ nonce: nonce.toString('base64'), pcrs });
}

/** The default fetcher (HTTP or unix socket). */
export const fetchEvidence: EvidenceFetcher = async (source, vmId, req) => {
  let res;
  try {
    res = await post(source, MONITOR_ATTEST_ROUTE.replace(':vmId', vmId), attestRequestBody(req.nonce, req.pcrs));
  } catch (e) {
    throw e instanceof EvidenceUnavailable ? e : new EvidenceUnavailable(`cannot reach ${source}: ${(e as Error).message}`);
  }
  if (res.status !== 200) throw new EvidenceUnavailable(`${source} answered ${res.status}: ${res.text.slice(0, 300)}`);
  let json: unknown;
  try {
    json = JSON.parse(res.text);
  } catch {
    throw new EvidenceUnavailable('the evidence is not JSON');
  }
  const parsed = attestationEvidenceSchema.safeParse(json);
  if (!parsed.success) throw new EvidenceUnavailable(`malformed evidence: ${parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
  return parsed.data;
};
