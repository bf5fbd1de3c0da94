/**
 * Relays heartbeat challenges from the authority to the enclave and the answers back. One challenge
 * is in flight at a time; an enclave that does not answer within `answerTimeoutMs` (stopped, starved)
 * simply misses that challenge, and the authority notices. The relay never computes anything itself:
 * it could not, it does not know the key.
 */
import { challengeSchema, heartbeatAcceptedSchema, MAX_LONG_POLL_MS } from '../../formats/protocol/ids-heartbeat.ts';
import { jsonCall, IdsHostRequestError, type Target } from './http.ts';

export interface HeartbeatAnswerer {
  heartbeat(seq: number, nonce: Buffer): Promise<{ status: number; mac: Buffer }>;
}

export interface HeartbeatRelayOptions {
  authority: Target;
  sessionId: string;
  enclave: HeartbeatAnswerer;
  answerTimeoutMs?: number;
  /** Told about each failed round (the loop keeps going). */
  onError?: (err: Error) => void;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** Runs until `signal` aborts. */
export async function relayHeartbeats(opts: HeartbeatRelayOptions, signal: AbortSignal): Promise<void> {
  const sid = encodeURIComponent(opts.sessionId);
  let after = 0;
  while (!signal.aborted) {
    try {
      const challenge = await jsonCall(opts.authority, 'GET', `/v1/ids/sessions/${sid}/challenge?after=${after}&waitMs=${MAX_LONG_POLL_MS}`, challengeSchema, undefined, {
        timeoutMs: MAX_LONG_POLL_MS + 5000,
      });
      if (!challenge || signal.aborted) continue;
      after = challenge.seq;
      const answer = await withTimeout(opts.enclave.heartbeat(challenge.seq, challenge.nonce), opts.answerTimeoutMs ?? 5000, 'the enclave heartbeat');
      await jsonCall(opts.authority, 'POST', `/v1/ids/sessions/${sid}/heartbeat`, heartbeatAcceptedSchema, {
        seq: challenge.seq,
        status: answer.status,
        mac: answer.mac.toString('base64'),
      });
    } catch (err) {
      if (signal.aborted) return;
      opts.onError?.(err as Error);
      // An unknown session will not become known: stop instead of hammering the authority.
      if (err instanceof IdsHostRequestError && err.code === 'UNKNOWN_SESSION') return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
