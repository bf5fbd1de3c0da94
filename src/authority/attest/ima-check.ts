/**
 * IMA check: the guest's measurement list must replay to quoted PCR 10 (sha256 bank), its first entry
 * must be the boot_aggregate of the quoted PCRs 0-9 (sha256, as a TPM 2.0 kernel computes it), and the
 * entries must satisfy the tenant's Keylime runtime policy (runtime-policy.ts). The list may run ahead
 * of the quote (IMA appends before it extends), so only the prefix the quote covers is judged.
 */
import { TPM_ALG } from '../../formats/tpm2/constants.ts';
import type { PcrValues } from '../../formats/tpm2/pcr.ts';
import { BOOT_AGGREGATE_NAME, IMA_PCR, computeBootAggregate, matchImaPrefix, parseImaBinary, type ImaEntry } from '../../formats/ima.ts';
import { evaluateRuntimePolicy, type RuntimePolicy } from './runtime-policy.ts';

export type ImaFailureCode = 'IMA_LOG_INVALID' | 'IMA_REPLAY_MISMATCH' | 'BOOT_AGGREGATE_MISMATCH' | 'POLICY_VIOLATION';

export type ImaVerdict =
  | { ok: true; entries: number; judged: number }
  | { ok: false; code: ImaFailureCode; reason: string; path: string | null; digest: string | null };

const fail = (code: ImaFailureCode, reason: string, path: string | null = null, digest: string | null = null): ImaVerdict => ({ ok: false, code, reason, path, digest });

/** The sha256 PCRs 0-9 from verified quote values, or a missing index. */
function bootPcrs(quoted: PcrValues): Buffer[] | number {
  const out: Buffer[] = [];
  for (let i = 0; i < 10; i++) {
    const v = quoted.get(i)?.get(TPM_ALG.SHA256);
    if (!v) return i;
    out.push(v);
  }
  return out;
}

/** `quoted` must be the verified values of a good quote over sha256 PCRs 0-10. */
export function checkIma(imaLog: Buffer, quoted: PcrValues, policy: RuntimePolicy | undefined, maxEntries?: number): ImaVerdict {
  const pcr10 = quoted.get(IMA_PCR)?.get(TPM_ALG.SHA256);
  if (!pcr10) return fail('IMA_REPLAY_MISMATCH', 'PCR 10 (sha256) was not quoted');
  const pcrs = bootPcrs(quoted);
  if (typeof pcrs === 'number') return fail('BOOT_AGGREGATE_MISMATCH', `PCR ${pcrs} (sha256) was not quoted, so boot_aggregate cannot be checked`);
  let all: ImaEntry[];
  try {
    all = parseImaBinary(imaLog, maxEntries !== undefined ? { maxEntries } : {});
  } catch (e) {
    return fail('IMA_LOG_INVALID', (e as Error).message);
  }
  const n = matchImaPrefix(all, 'sha256', pcr10);
  if (n === null) return fail('IMA_REPLAY_MISMATCH', `no prefix of the ${all.length}-entry IMA list replays to quoted PCR 10 (sha256)`);
  const entries = all.slice(0, n);

  const aggregate = computeBootAggregate(pcrs, 'sha256').toString('hex');
  const first = entries[0];
  if (!first || first.path !== BOOT_AGGREGATE_NAME) return fail('BOOT_AGGREGATE_MISMATCH', 'the IMA list does not start with boot_aggregate');
  const firstDigest = `${first.fileDigest.algorithm}:${first.fileDigest.digest.toString('hex')}`;
  if (first.fileDigest.algorithm !== 'sha256' || first.fileDigest.digest.toString('hex') !== aggregate) {
    return fail('BOOT_AGGREGATE_MISMATCH', `boot_aggregate ${firstDigest} is not sha256:${aggregate} computed from quoted PCRs 0-9`, BOOT_AGGREGATE_NAME, firstDigest);
  }

  if (policy) {
    const ev = evaluateRuntimePolicy(entries, policy, { bootAggregates: [aggregate], firstFailureOnly: true });
    const f = ev.failures[0];
    if (f) return fail('POLICY_VIOLATION', `${f.message} (entry ${f.index}, ${f.reason})`, f.path, f.digest);
  }
  return { ok: true, entries: all.length, judged: n };
}
