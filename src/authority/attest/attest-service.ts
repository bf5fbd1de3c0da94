/**
 * The authority's attestation verifier. For each attestation of an enrolled VM it draws a fresh nonce,
 * records it, fetches evidence through the (untrusted) evidence source, and judges it in order: quote
 * (quote-verify.ts), measured launch (launch-check.ts), IMA (ima-check.ts). The verdict is committed
 * before it is returned; the first failure revokes the VM and commits a signed revocation notice, which
 * is then POSTed to the tenant's webhook (retried; each attempt recorded).
 */
import { randomBytes } from 'node:crypto';
import type { Authority } from '../authority-dir.ts';
import type { AttestEnroll, AttestVerdictWire, AttestationEvidence, PcrRequest, SignedNotice, VerdictCode } from '../../formats/protocol/attestation.ts';
import { AttestDb, type VerdictRow, type VmStatus } from './attest-db.ts';
import { fetchEvidence as defaultFetcher, type EvidenceFetcher } from './evidence-client.ts';
import { verifyQuote, type AkChainVerifier } from './quote-verify.ts';
import { x509AkChainVerifier } from './ak-chain.ts';
import { checkLaunch } from './launch-check.ts';
import { checkIma } from './ima-check.ts';
import { parseRuntimePolicy, type RuntimePolicy } from './runtime-policy.ts';
import { pcrValuesFromWire, pcrValuesToWire, selectionOf } from './pcr-wire.ts';
import { signNotice } from './revocation-notice.ts';

/** PCRs 0-9 for boot_aggregate (8/9 the measured launch), 10 for IMA; sha256 bank. */
export const ATTEST_PCRS: PcrRequest = { sha256: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] };

export class AttestRefusal extends Error {
  override readonly name = 'AttestRefusal';
  constructor(
    readonly code: 'NOT_ENROLLED' | 'BAD_POLICY',
    message: string,
  ) {
    super(message);
  }
}

export interface AttestServiceOptions {
  authority: Authority;
  db: AttestDb;
  fetchEvidence?: EvidenceFetcher;
  /** Defaults to the X.509 chain up to the authority's own CA. */
  verifyAkChain?: AkChainVerifier;
  now?: () => Date;
  /** Webhook attempts per notice (default 4) and the first retry delay (default 1 s, doubling). */
  webhookAttempts?: number;
  webhookRetryMs?: number;
  maxImaEntries?: number;
  /**
   * Where the IMA list comes from when the evidence carries none: the VM's IDS session (ima-inbox.ts),
   * asked after the quote is taken; undefined: no list (IMA not checked, or IMA_LOG_MISSING under a policy).
   */
  imaSource?: (vmId: string) => Promise<Buffer | undefined>;
}

interface Judgement {
  ok: boolean;
  code: VerdictCode;
  reason: string;
  path: string | null;
  digest: string | null;
  pcrs: string | null;
  imaEntries: number | null;
}

export function verdictToWire(r: VerdictRow): AttestVerdictWire {
  return {
    attestationId: r.id,
    vmId: r.vmId,
    at: (r.finishedAt ?? r.startedAt).toISOString(),
    ok: r.ok ?? false,
    code: r.code ?? 'EVIDENCE_UNAVAILABLE',
    reason: r.reason ?? 'attestation did not finish',
    path: r.path,
    digest: r.digest,
    pcrs: r.pcrs ? (JSON.parse(r.pcrs) as AttestVerdictWire['pcrs']) : {},
    imaEntries: r.imaEntries,
    notice: r.notice,
  };
}

export class AttestService {
  private readonly fetcher: EvidenceFetcher;
  private readonly chain: AkChainVerifier;
  private readonly now: () => Date;
  private readonly deliveries = new Set<Promise<void>>();
  private readonly policies = new Map<string, { json: string; policy: RuntimePolicy }>();
  private closed = false;

  constructor(private readonly o: AttestServiceOptions) {
    this.fetcher = o.fetchEvidence ?? defaultFetcher;
    this.chain = o.verifyAkChain ?? x509AkChainVerifier({ rootPem: o.authority.ca.certPem });
    this.now = o.now ?? (() => new Date());
  }

  enroll(vmId: string, e: AttestEnroll): VmStatus {
    if (e.runtimePolicy !== undefined) {
      try {
        parseRuntimePolicy(e.runtimePolicy);
      } catch (err) {
        throw new AttestRefusal('BAD_POLICY', (err as Error).message);
      }
    }
    this.o.db.enroll(vmId, e, this.now());
    this.policies.delete(vmId);
    return 'pending';
  }

  status(vmId: string): VmStatus | undefined {
    return this.o.db.vm(vmId)?.status;
  }

  history(vmId: string, limit?: number): AttestVerdictWire[] {
    return this.o.db.history(vmId, limit).map(verdictToWire);
  }

  private policyOf(vmId: string, e: AttestEnroll): RuntimePolicy | undefined {
    if (e.runtimePolicy === undefined) return undefined;
    const json = JSON.stringify(e.runtimePolicy);
    const hit = this.policies.get(vmId);
    if (hit?.json === json) return hit.policy;
    const policy = parseRuntimePolicy(e.runtimePolicy);
    this.policies.set(vmId, { json, policy });
    return policy;
  }

  /** Judges evidence for a nonce against an enrollment (no I/O; exported for the benchmark). */
  async judge(e: AttestEnroll, nonce: Buffer, ev: AttestationEvidence, policy: RuntimePolicy | undefined): Promise<Judgement> {
    const base = { path: null, digest: null, pcrs: null, imaEntries: null };
    const q = await verifyQuote(
      { akPublic: ev.akPublic, akCertChain: ev.akCertChain, nonce, selection: selectionOf(ATTEST_PCRS), quote: ev.quote, signature: ev.signature, pcrValues: pcrValuesFromWire(ev.pcrValues) },
      this.chain,
    );
    if (!q.ok) return { ...base, ok: false, code: q.code, reason: q.reason };
    const pcrs = JSON.stringify(pcrValuesToWire(q.pcrValues));
    const l = checkLaunch(ev.eventLog, q.pcrValues, e.references);
    if (!l.ok) return { ...base, pcrs, ok: false, code: l.code, reason: l.reason, path: l.path, digest: l.digest };
    if (ev.imaLog === undefined) {
      if (policy) return { ...base, pcrs, ok: false, code: 'IMA_LOG_MISSING', reason: 'the VM has a runtime policy but the evidence holds no IMA list' };
      return { ...base, pcrs, ok: true, code: 'OK', reason: 'quote and measured launch verified; IMA: not checked (no IMA list)' };
    }
    const i = checkIma(ev.imaLog, q.pcrValues, policy, this.o.maxImaEntries);
    if (!i.ok) return { ...base, pcrs, ok: false, code: i.code, reason: i.reason, path: i.path, digest: i.digest };
    return { ...base, pcrs, imaEntries: i.judged, ok: true, code: 'OK', reason: `quote, measured launch and ${i.judged} IMA entries verified${policy ? ' against the runtime policy' : ''}` };
  }

  /** One attestation of `vmId`: the verdict, committed (with any notice) before it is returned. */
  async attest(vmId: string): Promise<AttestVerdictWire> {
    const vm = this.o.db.vm(vmId);
    if (!vm) throw new AttestRefusal('NOT_ENROLLED', `VM ${vmId} is not enrolled for attestation`);
    const nonce = randomBytes(32);
    const id = this.o.db.begin(vmId, nonce, this.now());
    let j: Judgement;
    let ev: AttestationEvidence | undefined;
    try {
      ev = await this.fetcher(vm.enrollment.source, vmId, { nonce, pcrs: ATTEST_PCRS });
      if (ev.imaLog === undefined && this.o.imaSource) {
        const imaLog = await this.o.imaSource(vmId);
        if (imaLog !== undefined) ev = { ...ev, imaLog };
      }
    } catch (err) {
      j = { ok: false, code: 'EVIDENCE_UNAVAILABLE', reason: (err as Error).message.slice(0, 1000), path: null, digest: null, pcrs: null, imaEntries: null };
    }
    if (ev) j = await this.judge(vm.enrollment, nonce, ev, this.policyOf(vmId, vm.enrollment));
    const at = this.now();
    const notice = this.o.db.finish(id, j!, at, () => ({
      signed: signNotice({ vmId, reason: `${j.code}: ${j.reason}`.slice(0, 2000), path: j.path, digest: j.digest, at: at.toISOString(), attestationId: id }, this.o.authority.ca.privateKeyPem),
      webhook: vm.enrollment.webhook ?? null,
    }));
    if (notice && vm.enrollment.webhook) this.track(this.deliver(id, notice, vm.enrollment.webhook, 0));
    const row = this.o.db.history(vmId, 1)[0]!;
    return verdictToWire(row);
  }

  private track(p: Promise<void>): void {
    this.deliveries.add(p);
    void p.finally(() => this.deliveries.delete(p));
  }

  private async deliver(id: number, notice: SignedNotice, webhook: string, previousAttempts: number): Promise<void> {
    const attempts = this.o.webhookAttempts ?? 4;
    let delay = this.o.webhookRetryMs ?? 1000;
    for (let n = previousAttempts; n < attempts && !this.closed; n++) {
      let ok = false;
      try {
        const r = await fetch(webhook, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(notice), redirect: 'error', signal: AbortSignal.timeout(10_000) });
        ok = r.ok;
        await r.body?.cancel();
      } catch {
        ok = false;
      }
      this.o.db.deliveryAttempt(id, ok, this.now());
      if (ok) return;
      await new Promise((r) => setTimeout(r, delay));
      delay *= 2;
    }
  }

  /** Resumes delivery of notices a previous run committed but did not deliver. */
  resumeDeliveries(): void {
    for (const n of this.o.db.undelivered()) this.track(this.deliver(n.attestationId, n.signed, n.webhook, n.attempts));
  }

  /** Waits for webhook deliveries in flight. */
  async settled(): Promise<void> {
    while (this.deliveries.size > 0) await Promise.allSettled([...this.deliveries]);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.settled();
    this.o.db.close();
  }
}
