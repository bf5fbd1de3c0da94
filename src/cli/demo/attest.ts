/**
 * The attestation part of `vmseal demo` (ARCHITECTURE.md protocol 10): the demo guest runs with a vTPM
 * and an IDS session; the tenant enrolls it with the authority's verifier (launch references from the
 * boot files, a Keylime runtime policy made from the guest's IMA list as booted, a webhook); one
 * attestation passes, then an unknown program runs in the guest and the next one fails naming it, and
 * the signed revocation notice reaches the webhook.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { verifyNotice } from '../../authority/attest/revocation-notice.ts';
import { DEFAULT_EXCLUDES, type KeylimePolicyJson } from '../../client/runtime-policy-builder.ts';
import { BOOT_AGGREGATE_NAME, parseImaBinary } from '../../formats/ima.ts';
import { attestVerdictSchema, signedNoticeSchema, type AttestVerdictWire, type SignedNotice } from '../../formats/protocol/attestation.ts';
import type { GuestBuild } from '../../guest/build.ts';
import { runInGuest } from '../../guest/console-shell.ts';
import type { IdsSession } from '../../ids/host/sgmonitor.ts';
import { startIdsWorld, type IdsWorld } from './ids.ts';

export interface AttestDemoOptions {
  guest: GuestBuild;
  accel: 'tcg' | 'kvm' | 'auto';
  log: (msg: string) => void;
}

/** The checks the demo's IDS runs: the process list and the IMA list for the verifier. */
export const ATTEST_DEMO_CHECKS = { pslist: {}, 'ima-log': {} };

/**
 * A Keylime runtime policy allowing exactly what an IMA list measured (a VM's golden state), with the
 * run-time trees excluded (but not /tmp, should the guest's IMA policy measure it).
 */
export function runtimePolicyFromImaList(list: Buffer): KeylimePolicyJson {
  const digests: Record<string, string[]> = {};
  for (const e of parseImaBinary(list)) {
    if (e.path === BOOT_AGGREGATE_NAME || e.violation) continue;
    const l = (digests[e.path] ??= []);
    const hex = e.fileDigest.digest.toString('hex');
    if (!l.includes(hex)) l.push(hex);
  }
  return {
    meta: { version: 1, generator: 0, timestamp: new Date().toISOString() },
    release: 0,
    digests,
    excludes: DEFAULT_EXCLUDES.filter((x) => !x.startsWith('/tmp')),
    keyrings: {},
    ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: null },
    'ima-buf': {},
    'verification-keys': '',
  };
}

async function call(url: string, method: string, body: unknown): Promise<unknown> {
  const res = await fetch(url, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(120_000) });
  const json = (await res.json()) as { error?: string };
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${json.error ?? ''}`);
  return json;
}

const sha256File = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

/** Enrolls the world's VM with the verifier: launch references, a policy from `imaList`, `webhook`. */
export async function enrollForAttestation(world: IdsWorld, guest: GuestBuild, imaList: Buffer, webhook: string): Promise<void> {
  await call(`${world.cloud.authorityUrl}/v1/attest/vms/${world.vmId}`, 'PUT', {
    source: world.cloud.mgmtUrl,
    references: { kernelSha256: await sha256File(guest.kernel), initrdSha256: await sha256File(guest.initrd), cmdline: guest.cmdline },
    runtimePolicy: runtimePolicyFromImaList(imaList),
    webhook,
  });
}

export async function attestOnce(world: IdsWorld): Promise<AttestVerdictWire> {
  return attestVerdictSchema.parse(await call(`${world.cloud.authorityUrl}/v1/attest/vms/${world.vmId}/attest`, 'POST', {}));
}

/** The guest's IMA list as the enclave reads it from kernel memory. */
export async function readImaList(session: IdsSession): Promise<Buffer> {
  const r = await session.enclave.runCheck('ima-log');
  return Buffer.from((r.summary as { log: string }).log, 'base64');
}

export async function runAttestDemo(opts: AttestDemoOptions): Promise<string[]> {
  const { log, guest } = opts;
  const lines: string[] = [];
  const notices: SignedNotice[] = [];
  const hook = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      const n = signedNoticeSchema.safeParse(JSON.parse(body || 'null'));
      if (n.success) notices.push(n.data);
      res.writeHead(n.success ? 204 : 400).end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  const webhook = `http://127.0.0.1:${(hook.address() as { port: number }).port}/notices`;
  const world = await startIdsWorld({ guest, accel: opts.accel, log, attest: true, checks: ATTEST_DEMO_CHECKS });
  let session: IdsSession | undefined;
  try {
    log('starting the IDS enclave (it reads the IMA list for the verifier)');
    session = await world.startSession();
    const list = await readImaList(session);
    await enrollForAttestation(world, guest, list, webhook);
    lines.push(`enroll    VM ${world.vmId.slice(0, 8)}…: kernel/initrd/cmdline references and a Keylime runtime policy of the ${parseImaBinary(list).length} IMA entries measured at boot`);
    const good = await attestOnce(world);
    if (!good.ok) throw new Error(`the first attestation failed: ${good.code} ${good.reason}`);
    lines.push(`attest    PASS: ${good.reason}`);
    lines.push(`          PCR 8 ${good.pcrs.sha256?.['8']?.slice(0, 16)}… PCR 9 ${good.pcrs.sha256?.['9']?.slice(0, 16)}… PCR 10 ${good.pcrs.sha256?.['10']?.slice(0, 16)}…`);
    log('the attacker runs a program of its own inside the guest');
    const ran = await runInGuest(world.guestConsole, 'cp /bin/busybox /root/busybox-evil && /root/busybox-evil true');
    if (ran.exitCode !== 0) throw new Error(`could not run the demo program: ${ran.output}`);
    const bad = await attestOnce(world);
    if (bad.ok) throw new Error('the attestation after the unknown program passed');
    lines.push(`attest    FAIL ${bad.code}: ${bad.path ?? ''} ${bad.digest ?? ''}`);
    await world.cloud.attest?.settled();
    const caPem = await readFile(world.cloud.authorityPaths.caCert, 'utf8');
    const delivered = notices.map((n) => verifyNotice(n, caPem).notice);
    lines.push(`revoked   ${delivered.length} signed revocation notice(s) at the tenant's webhook, signature valid: ${delivered[0]?.reason.slice(0, 120) ?? 'none'}`);
  } finally {
    await session?.close().catch(() => undefined);
    await world.close();
    hook.close();
  }
  return lines;
}
