import { X509Certificate } from 'node:crypto';
import type { Command } from 'commander';
import { HOST_ID_PATTERN } from '../../formats/protocol/host-certificate.ts';
import { enrollHost, fetchCaCertificate, parseAuthorityUrl } from '../../authority/http-client.ts';
import { caFingerprint, parseFingerprint } from '../../client/ca-fingerprint.ts';
import { verifyHostCertificate } from '../../client/host-cert.ts';
import { ensureVtpmCa, installVtpmCaCertificate, vtpmCaPublicKeyPem } from '../../monitor/vtpm/vtpm-ca.ts';
import { HostKeysError, initHostKeys, loadHostKeys, saveCaCertificate, saveHostCertificate, type HostKeys } from '../../monitor/state/host-keys.ts';

interface HostInitOptions {
  dir: string;
  authority: string;
  hostId: string;
  token: string;
  caFingerprint?: string;
  force?: boolean;
}

/**
 * The existing keys to enroll, if any: uncertified keys of the same host are reused, which resumes an
 * enrollment that failed after the keys were written. Certified or foreign keys are replaced only with
 * --force. Writes nothing.
 */
async function reusableKeys(opts: HostInitOptions): Promise<HostKeys | undefined> {
  let existing: HostKeys;
  try {
    existing = await loadHostKeys(opts.dir);
  } catch (err) {
    if ((err instanceof HostKeysError && err.code === 'NO_KEYS') || opts.force) return undefined;
    throw err;
  }
  if (opts.force) return undefined;
  if (existing.certificatePem !== undefined) throw new Error(`${opts.dir} already holds certified keys for host ${existing.hostId}; use --force to replace them`);
  if (existing.hostId !== opts.hostId) throw new Error(`${opts.dir} holds keys for host ${existing.hostId}, not ${opts.hostId}; use --force to replace them`);
  return existing;
}

/** `vmseal host init`: create the host's HPKE key pair and have the authority certify it. */
export function registerHostInit(host: Command): void {
  host
    .command('init')
    .description("create this host's HPKE key pair (X25519) and enroll it with the authority for a certificate")
    .requiredOption('--dir <dir>', 'monitor state directory (created 0700)')
    .requiredOption('--authority <url>', 'the authority, e.g. http://127.0.0.1:8470')
    .requiredOption('--host-id <id>', 'this host\'s id, as given to `vmseal authority enroll-host`')
    .requiredOption('--token <token>', 'the one-time enrollment token from `vmseal authority enroll-host`')
    .option('--ca-fingerprint <sha256>', "the authority CA's fingerprint, obtained out of band; enrollment stops if the served CA differs")
    .option('--force', 'replace existing host keys (their certificate becomes useless)')
    .action(async (opts: HostInitOptions) => {
      if (!HOST_ID_PATTERN.test(opts.hostId)) throw new Error(`--host-id must match ${HOST_ID_PATTERN}`);
      const authorityUrl = parseAuthorityUrl(opts.authority).href;
      const expectedFingerprint = opts.caFingerprint === undefined ? undefined : parseFingerprint(opts.caFingerprint);

      const existing = await reusableKeys(opts);
      const caPem = await fetchCaCertificate(authorityUrl);
      const fingerprint = caFingerprint(caPem);
      if (expectedFingerprint !== undefined && fingerprint !== expectedFingerprint) {
        throw new Error(`the authority serves a CA with fingerprint ${fingerprint}, not ${expectedFingerprint}; nothing was enrolled`);
      }
      const keys = existing ?? (await initHostKeys(opts.dir, opts.hostId, { force: true }));
      const vtpmCa = await ensureVtpmCa(opts.dir, opts.hostId);
      const enrolled = await enrollHost(authorityUrl, { hostId: opts.hostId, hpkePublicKey: keys.publicKey, token: opts.token, vtpmCaPublicKey: await vtpmCaPublicKeyPem(vtpmCa) });
      const certificatePem = enrolled.certificate;
      const verified = verifyHostCertificate(certificatePem, caPem, { expectedHostId: opts.hostId });
      if (!verified.hpkePublicKey.equals(keys.publicKey)) throw new Error('the authority certified a different key than this host sent; certificate not saved');
      // EK and AK certificates of this host's vTPMs chain to the provider CA through this one.
      const vtpmCaPem = enrolled.vtpmCaCertificate;
      if (vtpmCaPem === undefined || !new X509Certificate(vtpmCaPem).verify(new X509Certificate(caPem).publicKey)) {
        throw new Error('the authority sent no vTPM CA certificate signed by its CA; nothing saved');
      }
      await saveHostCertificate(opts.dir, certificatePem);
      // The monitor verifies the authority's IDS registration signatures with this CA.
      await saveCaCertificate(opts.dir, caPem);
      await installVtpmCaCertificate(vtpmCa, vtpmCaPem);
      process.stdout.write(`host ${verified.hostId} enrolled: certificate serial ${verified.serialNumber}, valid until ${verified.notAfter.toISOString()}\n`);
      process.stdout.write(`CA fingerprint (SHA-256): ${fingerprint}\n`);
    });
}
