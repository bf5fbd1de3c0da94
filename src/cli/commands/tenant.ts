import type { Command } from 'commander';
import { fetchCaCertificate, parseAuthorityUrl } from '../../authority/http-client.ts';
import { caFingerprint, parseFingerprint } from '../../client/ca-fingerprint.ts';
import { TenantStateError, createTenantState, tenantStateExists } from '../../client/tenant-state.ts';

/** `vmseal tenant …`: the tenant's own machine, which trusts only what chains to its pinned CA. */
export function registerTenantCommands(program: Command): void {
  const tenant = program.command('tenant').description("the tenant client: pins the authority's CA, keeps its VMs' ids and counters");

  tenant
    .command('init')
    .description("fetch the authority's CA certificate and pin it in a new tenant state directory")
    .requiredOption('--dir <dir>', 'tenant state directory (created 0700)')
    .requiredOption('--authority <url>', 'the authority, e.g. http://127.0.0.1:8470')
    .option('--ca-fingerprint <sha256>', "the CA fingerprint obtained out of band; nothing is saved if the served CA differs")
    .option('--force', 'replace existing tenant state (forgets its VMs)')
    .action(async (opts: { dir: string; authority: string; caFingerprint?: string; force?: boolean }) => {
      const authorityUrl = parseAuthorityUrl(opts.authority).href;
      const expected = opts.caFingerprint === undefined ? undefined : parseFingerprint(opts.caFingerprint);
      if (!opts.force && (await tenantStateExists(opts.dir))) {
        throw new TenantStateError('EXISTS', `${opts.dir} already holds tenant state with a pinned CA; use --force to replace it`);
      }
      const caPem = await fetchCaCertificate(authorityUrl);
      const fingerprint = caFingerprint(caPem);
      if (expected !== undefined && fingerprint !== expected) {
        throw new Error(`CA fingerprint mismatch: the authority serves ${fingerprint}, expected ${expected}; nothing was saved`);
      }
      await createTenantState(opts.dir, { authorityUrl, caCertificatePem: caPem, ...(opts.force ? { force: true } : {}) });
      process.stdout.write(`pinned CA fingerprint (SHA-256): ${fingerprint}\n`);
      if (expected === undefined) {
        process.stderr.write('no --ca-fingerprint given: this CA is trusted on first use; compare the fingerprint above with the one the authority gave you out of band\n');
      }
    });
}
