/**
 * Answers the authority's requests for a fresh IMA list (formats/protocol/ids-ima.ts): for each request
 * the enclave runs its `ima-log` check (the list read agentlessly through the sealed channel) and the
 * bytes are POSTed back. The host could alter them; the verifier would see it, since it replays them
 * against a quoted PCR 10. Runs until `signal` aborts.
 */
import { z } from 'zod';
import { MAX_IMA_LONG_POLL_MS, imaAcceptedSchema, imaRequestSchema, type ImaUploadWire } from '../../formats/protocol/ids-ima.ts';
import { IdsHostRequestError, jsonCall, type Target } from './http.ts';

const imaDataSchema = z.strictObject({ entries: z.number().int().min(0), log: z.string() });

export interface ImaRelayOptions {
  authority: Target;
  sessionId: string;
  enclave: { runCheck(name: string): Promise<{ summary?: unknown }> };
  onError?: (err: Error) => void;
}

export async function relayImaRequests(opts: ImaRelayOptions, signal: AbortSignal): Promise<void> {
  const sid = encodeURIComponent(opts.sessionId);
  let after = 0;
  while (!signal.aborted) {
    try {
      const req = await jsonCall(opts.authority, 'GET', `/v1/ids/sessions/${sid}/ima-request?after=${after}&waitMs=${MAX_IMA_LONG_POLL_MS}`, imaRequestSchema, undefined, { timeoutMs: MAX_IMA_LONG_POLL_MS + 5000 });
      if (!req || signal.aborted) continue;
      after = req.seq;
      const r = await opts.enclave.runCheck('ima-log');
      const data = imaDataSchema.parse(r.summary);
      const body: ImaUploadWire = { seq: req.seq, entries: data.entries, log: data.log };
      await jsonCall(opts.authority, 'POST', `/v1/ids/sessions/${sid}/ima`, imaAcceptedSchema, body, { timeoutMs: 60_000 });
    } catch (err) {
      if (signal.aborted) return;
      opts.onError?.(err as Error);
      if (err instanceof IdsHostRequestError && (err.code === 'UNKNOWN_SESSION' || err.status === 404)) return;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
