/**
 * `vmseal attest …` (tenant side of ARCHITECTURE.md protocol 10). The tenant's authority does the
 * verifying; these commands enroll a VM with it, ask it to attest, and check revocation notices offline.
 *
 *   attest quote NAME   one attestation now: prints the verdict and the quoted PCRs
 *   attest watch NAME   re-attests every --interval seconds; on the first failure prints the signed
 *                       revocation notice (also POSTed by the authority to --webhook) and exits 1
 *   attest verify FILE  checks a revocation notice's signature against the pinned authority CA
 *
 * The evidence source defaults to the VM's management plane URL from tenant state (the authority
 * POSTs /v1/vms/:vmId/attest there; mgmt relays it to the monitor); `--source unix:/path` names the
 * monitor socket of a local cloud instead.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { z } from 'zod';
import { loadTenantState } from '../../client/tenant-state.ts';
import {
  AUTHORITY_ATTEST_ENROLL_ROUTE,
  AUTHORITY_ATTEST_ROUTE,
  attestEnrollSchema,
  attestVerdictSchema,
  type AttestEnroll,
  type AttestVerdictWire,
} from '../../formats/protocol/attestation.ts';
import { verifyNotice } from '../../authority/attest/revocation-notice.ts';
import { untilStopSignal } from '../until-signal.ts';
import { registerAttestPolicyCommands } from './attest-policy.ts';

const MAX_RESPONSE_BYTES = 1 << 20;
const enrolledSchema = z.object({ vmId: z.string(), status: z.string() });

const tenantDirOption = () => new Option('--dir <dir>', 'tenant state directory (from vmseal tenant init)').env('VMSEAL_TENANT_DIR').makeOptionMandatory();

async function call<T>(authority: string, method: string, route: string, schema: z.ZodType<T>, body: unknown): Promise<T> {
  const base = authority.endsWith('/') ? authority : `${authority}/`;
  const res = await fetch(new URL(route.replace(/^\//, ''), base), { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), redirect: 'error', signal: AbortSignal.timeout(120_000) });
  const text = await res.text();
  if (text.length > MAX_RESPONSE_BYTES) throw new Error('the authority answered too much');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`the authority answered ${res.status} with a body that is not JSON`);
  }
  if (!res.ok) {
    const e = json as { error?: unknown; code?: unknown };
    throw new Error(`${String(e.code ?? res.status)}: ${String(e.error ?? 'refused by the authority').slice(0, 500)}`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new Error(`the authority answered an unexpected body for ${route}`);
  return parsed.data;
}

async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

interface EnrollOptions {
  dir: string;
  authority?: string;
  kernel?: string;
  initrd?: string;
  kernelSha256?: string;
  initrdSha256?: string;
  cmdline?: string;
  policy?: string;
  webhook?: string;
  source?: string;
}

const enrollOptions = (c: Command) =>
  c
    .addOption(tenantDirOption())
    .option('--authority <url>', "the authority's URL (default: the one pinned in tenant state)")
    .option('--kernel <file>', 'reference kernel image (its SHA-256 is the reference)')
    .option('--initrd <file>', 'reference initramfs')
    .option('--kernel-sha256 <hex>', 'reference kernel SHA-256 (instead of --kernel)')
    .option('--initrd-sha256 <hex>', 'reference initrd SHA-256 (instead of --initrd)')
    .option('--cmdline <text>', 'the exact kernel command line the VM was launched with')
    .option('--policy <file>', 'Keylime runtime policy JSON (IMA check); without it only the quote and launch are checked')
    .option('--webhook <url>', 'where the authority POSTs a signed revocation notice')
    .option('--source <src>', "where the authority fetches evidence: an http(s) mgmt URL or unix:/monitor.sock (default: the VM's mgmt URL)");

/** Resolves the VM and, when references are given, (re-)enrolls it with the authority. */
async function prepare(name: string, o: EnrollOptions): Promise<{ vmId: string; authority: string }> {
  const state = await loadTenantState(o.dir);
  const vm = state.vms[name];
  if (!vm) throw new Error(`no VM named ${name} in ${o.dir}`);
  const authority = o.authority ?? state.authority.url;
  const haveRefs = o.cmdline !== undefined || o.kernel || o.kernelSha256 || o.initrd || o.initrdSha256;
  if (haveRefs) {
    if (o.cmdline === undefined) throw new Error('--cmdline is required with the launch references');
    const kernelSha256 = o.kernelSha256 ?? (o.kernel ? await fileSha256(o.kernel) : undefined);
    const initrdSha256 = o.initrdSha256 ?? (o.initrd ? await fileSha256(o.initrd) : undefined);
    if (!kernelSha256 || !initrdSha256) throw new Error('give --kernel/--kernel-sha256 and --initrd/--initrd-sha256');
    const enroll: AttestEnroll = attestEnrollSchema.parse({
      source: o.source ?? vm.mgmtUrl,
      references: { kernelSha256, initrdSha256, cmdline: o.cmdline },
      ...(o.policy ? { runtimePolicy: JSON.parse(await readFile(o.policy, 'utf8')) as unknown } : {}),
      ...(o.webhook ? { webhook: o.webhook } : {}),
    });
    await call(authority, 'PUT', AUTHORITY_ATTEST_ENROLL_ROUTE.replace(':vmId', vm.vmId), enrolledSchema, enroll);
  }
  return { vmId: vm.vmId, authority };
}

function describe(v: AttestVerdictWire): string {
  const what = v.ok ? 'PASS' : `FAIL ${v.code}`;
  const where = v.path || v.digest ? ` (${[v.path, v.digest].filter(Boolean).join(' ')})` : '';
  return `${v.at} attestation ${v.attestationId}: ${what}: ${v.reason}${where}`;
}

export function registerAttestCommands(program: Command): Command {
  const attest = program.command('attest').description('remote attestation of a VM by the authority (vTPM quote, measured launch, IMA)');

  enrollOptions(attest.command('quote').description('attest once and print the verdict and quoted PCRs').argument('<name>', 'VM name')).action(async (name: string, o: EnrollOptions) => {
    const { vmId, authority } = await prepare(name, o);
    const v = await call(authority, 'POST', AUTHORITY_ATTEST_ROUTE.replace(':vmId', vmId), attestVerdictSchema, {});
    process.stdout.write(`${describe(v)}\n`);
    for (const [bank, values] of Object.entries(v.pcrs)) for (const [pcr, hex] of Object.entries(values ?? {})) process.stdout.write(`  ${bank}:${pcr.padStart(2)} ${hex}\n`);
    if (v.notice) process.stdout.write(`${JSON.stringify(v.notice)}\n`);
    if (!v.ok) process.exitCode = 1;
  });

  enrollOptions(attest.command('watch').description('re-attest periodically; the first failure prints a signed revocation notice').argument('<name>', 'VM name'))
    .option('--interval <seconds>', 'seconds between attestations', '30')
    .action(async (name: string, o: EnrollOptions & { interval: string }) => {
      const interval = Number(o.interval);
      if (!Number.isFinite(interval) || interval < 1 || interval > 86_400) throw new Error('--interval must be 1..86400 seconds');
      const { vmId, authority } = await prepare(name, o);
      const stop = untilStopSignal();
      let stopped = false;
      void stop.then(() => (stopped = true));
      while (!stopped) {
        const v = await call(authority, 'POST', AUTHORITY_ATTEST_ROUTE.replace(':vmId', vmId), attestVerdictSchema, {});
        process.stdout.write(`${describe(v)}\n`);
        if (v.notice) {
          process.stdout.write(`REVOKED: signed revocation notice:\n${JSON.stringify(v.notice)}\n`);
          process.exitCode = 1;
          return;
        }
        await Promise.race([stop, new Promise((r) => setTimeout(r, interval * 1000))]);
      }
    });

  attest
    .command('verify')
    .description("check a revocation notice's signature against the authority CA (offline)")
    .argument('<file>', 'the notice JSON ({ notice, signature }) as printed or delivered')
    .addOption(new Option('--dir <dir>', 'tenant state directory whose pinned CA is used').env('VMSEAL_TENANT_DIR'))
    .option('--ca <file>', 'the authority CA certificate (PEM) instead of the pinned one')
    .action(async (file: string, o: { dir?: string; ca?: string }) => {
      const caPem = o.ca ? await readFile(o.ca, 'utf8') : o.dir ? (await loadTenantState(o.dir)).authority.caCertificatePem : undefined;
      if (!caPem) throw new Error('give --ca or --dir (tenant state with the pinned CA)');
      const n = verifyNotice(JSON.parse(await readFile(file, 'utf8')) as unknown, caPem).notice;
      process.stdout.write(`valid revocation notice: VM ${n.vmId} at ${n.at} (attestation ${n.attestationId}): ${n.reason}${n.path ? ` path ${n.path}` : ''}${n.digest ? ` digest ${n.digest}` : ''}\n`);
    });
  registerAttestPolicyCommands(attest);
  return attest;
}
