import type { AddressInfo } from 'node:net';
import type { Command } from 'commander';
import { initAuthority, openAuthority } from '../../authority/authority-dir.ts';
import { DEFAULT_ENROLLMENT_TTL_MS, MAX_ENROLLMENT_TTL_MS, createEnrollmentToken } from '../../authority/enrollment-tokens.ts';
import { DEFAULT_HOST_CERTIFICATE_DAYS, buildAuthorityServer } from '../../authority/server.ts';
import { approveIdsMeasurement, listIdsApprovals, revokeIdsApproval, type IdsApproval } from '../../authority/ids-approvals.ts';
import { DEFAULT_HEARTBEAT_PERIOD_MS, HeartbeatService } from '../../authority/heartbeat.ts';
import { AttestService } from '../../authority/attest/attest-service.ts';
import { AttestDb } from '../../authority/attest/attest-db.ts';
import { ImaInbox } from '../../authority/attest/ima-inbox.ts';
import { registerIdsAlertsCommand } from './ids-alerts.ts';
import { untilStopSignal } from '../until-signal.ts';

const DEFAULT_PORT = 8470;

function parseWholeNumber(text: string, what: string, min: number, max: number): number {
  const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new Error(`${what} must be a whole number in ${min}..${max}, not ${JSON.stringify(text)}`);
  return n;
}

/** `vmseal authority …`: the third party that runs the provider CA and certifies host keys. */
export function registerAuthorityCommands(program: Command): void {
  const authority = program.command('authority').description('the third party outside the cloud: provider CA that certifies host keys');

  authority
    .command('init')
    .description('create the provider CA (Ed25519) in a new state directory and print its fingerprint')
    .requiredOption('--dir <dir>', 'authority state directory (created 0700; must be absent or empty)')
    .option('--name <cn>', 'CA common name', 'vmseal provider CA')
    .action(async (opts: { dir: string; name: string }) => {
      const created = await initAuthority(opts.dir, { commonName: opts.name });
      process.stdout.write(`CA fingerprint (SHA-256): ${created.caFingerprint}\n`);
      process.stderr.write('give this fingerprint to tenants out of band; they pin it with `vmseal tenant init --ca-fingerprint`\n');
    });

  authority
    .command('enroll-host')
    .description('issue a one-time enrollment token for a host id; prints the token')
    .requiredOption('--dir <dir>', 'authority state directory')
    .requiredOption('--host-id <id>', 'the host that may enroll with this token')
    .option('--ttl-minutes <n>', 'minutes until the token expires', String(DEFAULT_ENROLLMENT_TTL_MS / 60_000))
    .action(async (opts: { dir: string; hostId: string; ttlMinutes: string }) => {
      const minutes = parseWholeNumber(opts.ttlMinutes, '--ttl-minutes', 1, MAX_ENROLLMENT_TTL_MS / 60_000);
      const { paths } = await openAuthority(opts.dir);
      const issued = await createEnrollmentToken(paths, opts.hostId, { ttlMs: minutes * 60_000 });
      process.stdout.write(`${issued.token}\n`);
      process.stderr.write(`one-time token for host ${issued.hostId}, valid until ${issued.expiresAt.toISOString()}; older tokens for this host are revoked\n`);
    });

  registerIdsApprovalCommands(authority);

  authority
    .command('run')
    .description('serve the CA certificate, host enrollment and published host certificates over HTTP')
    .requiredOption('--dir <dir>', 'authority state directory')
    .option('--port <port>', 'TCP port (0 picks a free one)', String(DEFAULT_PORT))
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--cert-days <n>', 'lifetime of issued host certificates in days', String(DEFAULT_HOST_CERTIFICATE_DAYS))
    .option('--verbose', 'log every request (pino JSON on stderr)')
    .option('--heartbeat-ms <n>', 'IDS heartbeat period in milliseconds', String(DEFAULT_HEARTBEAT_PERIOD_MS))
    .action(async (opts: { dir: string; port: string; host: string; certDays: string; verbose?: boolean; heartbeatMs: string }) => {
      const port = parseWholeNumber(opts.port, '--port', 0, 65_535);
      const hostCertificateDays = parseWholeNumber(opts.certDays, '--cert-days', 1, 825);
      const heartbeats = await HeartbeatService.open(opts.dir, { periodMs: parseWholeNumber(opts.heartbeatMs, '--heartbeat-ms', 10, 3_600_000) });
      const authority = await openAuthority(opts.dir);
      // The attestation verifier keeps its state in <dir>/attest.db; notices left undelivered are retried.
      // IMA lists come from the VMs' IDS sessions (ima-log check), asked for after each quote.
      const imaInbox = ImaInbox.forHeartbeats(heartbeats);
      const attest = new AttestService({ authority, db: AttestDb.open(opts.dir), imaSource: (vmId) => imaInbox.fetch(vmId) });
      attest.resumeDeliveries();
      const app = buildAuthorityServer({ authority, hostCertificateDays, logLevel: opts.verbose ? 'info' : 'warn', heartbeats, attest, imaInbox });
      await app.listen({ port, host: opts.host });
      const address = app.server.address() as AddressInfo;
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      process.stdout.write(`authority listening on http://${shown}:${address.port}\n`);
      await untilStopSignal();
      await app.close();
      process.stderr.write('authority stopped\n');
    });
}

function describeApproval(a: IdsApproval): string {
  const scope = [a.vmId ? `vm ${a.vmId}` : 'any vm', a.hostId ? `host ${a.hostId}` : 'any host'].join(', ');
  return `${a.id}  ${a.measurement}  ${scope}  ${a.createdAt}${a.note ? `  ${JSON.stringify(a.note)}` : ''}\n`;
}

/** `vmseal authority ids …`: the IDS measurements the authority signs registrations for. */
function registerIdsApprovalCommands(authority: Command): void {
  const ids = authority.command('ids').description('approved IDS enclave measurements (the authority signs IDS registrations only for these)');
  registerIdsAlertsCommand(ids);
  ids
    .command('approve')
    .description('approve an IDS enclave measurement (SHA-256 of its code bundle and configuration)')
    .argument('<measurement>', '64 hex digits')
    .requiredOption('--dir <dir>', 'authority state directory')
    .option('--vm <vmId>', 'only for this VM id')
    .option('--host <hostId>', 'only on this host')
    .option('--note <text>', 'a note kept with the approval')
    .action(async (measurement: string, opts: { dir: string; vm?: string; host?: string; note?: string }) => {
      const { paths } = await openAuthority(opts.dir);
      const approval = await approveIdsMeasurement(paths, measurement, {
        ...(opts.vm !== undefined ? { vmId: opts.vm } : {}),
        ...(opts.host !== undefined ? { hostId: opts.host } : {}),
        ...(opts.note !== undefined ? { note: opts.note } : {}),
      });
      process.stdout.write(describeApproval(approval));
    });
  ids
    .command('list')
    .description('list the approvals: id, measurement, scope, date, note')
    .requiredOption('--dir <dir>', 'authority state directory')
    .option('--json', 'print JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const approvals = await listIdsApprovals((await openAuthority(opts.dir)).paths);
      process.stdout.write(opts.json ? `${JSON.stringify(approvals, null, 2)}\n` : approvals.map(describeApproval).join(''));
    });
  ids
    .command('revoke')
    .description('revoke an approval by its id, or every approval of a measurement')
    .argument('<idOrMeasurement>', 'approval id (16 hex) or measurement (64 hex)')
    .requiredOption('--dir <dir>', 'authority state directory')
    .action(async (target: string, opts: { dir: string }) => {
      const removed = await revokeIdsApproval((await openAuthority(opts.dir)).paths, target);
      process.stdout.write(removed.map(describeApproval).join(''));
      process.stderr.write(`${removed.length} approval(s) revoked; sessions registered before are not ended by this\n`);
    });
}
