import type { AddressInfo } from 'node:net';
import type { Command } from 'commander';
import { initAuthority, openAuthority } from '../../authority/authority-dir.ts';
import { DEFAULT_ENROLLMENT_TTL_MS, MAX_ENROLLMENT_TTL_MS, createEnrollmentToken } from '../../authority/enrollment-tokens.ts';
import { DEFAULT_HOST_CERTIFICATE_DAYS, buildAuthorityServer } from '../../authority/server.ts';
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

  authority
    .command('run')
    .description('serve the CA certificate, host enrollment and published host certificates over HTTP')
    .requiredOption('--dir <dir>', 'authority state directory')
    .option('--port <port>', 'TCP port (0 picks a free one)', String(DEFAULT_PORT))
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--cert-days <n>', 'lifetime of issued host certificates in days', String(DEFAULT_HOST_CERTIFICATE_DAYS))
    .option('--verbose', 'log every request (pino JSON on stderr)')
    .action(async (opts: { dir: string; port: string; host: string; certDays: string; verbose?: boolean }) => {
      const port = parseWholeNumber(opts.port, '--port', 0, 65_535);
      const hostCertificateDays = parseWholeNumber(opts.certDays, '--cert-days', 1, 825);
      const app = buildAuthorityServer({ authority: await openAuthority(opts.dir), hostCertificateDays, logLevel: opts.verbose ? 'info' : 'warn' });
      await app.listen({ port, host: opts.host });
      const address = app.server.address() as AddressInfo;
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      process.stdout.write(`authority listening on http://${shown}:${address.port}\n`);
      await untilStopSignal();
      await app.close();
      process.stderr.write('authority stopped\n');
    });
}
