/**
 * First-launch provisioning of a VM's vTPM with swtpm_setup: PCR banks, EK (RSA and ECC) and an EK
 * certificate in NV signed by the host's vTPM CA through swtpm_localca, all written encrypted under K_vtpm
 * (handed to swtpm_setup on a pipe). Configuration goes to a private temporary directory, never /etc.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnWithKey } from './swtpm-instance.ts';
import type { VtpmCa } from './vtpm-ca.ts';

/** sha1 stays active beside sha256: IMA's ascii list shows sha1 template digests, which tools replay. */
export const VTPM_PCR_BANKS = 'sha1,sha256';

export interface ProvisionOptions {
  stateDir: string;
  key: Uint8Array;
  ca: VtpmCa;
  /** Recorded in the EK certificate's subject (swtpm_localca --vmid). */
  vmName: string;
  /** Also write the EK certificates as files here (tests). */
  ekCertDir?: string;
}

export async function provisionVtpm(o: ProvisionOptions): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'vmseal-swtpm-setup-'));
  try {
    const localcaConf = join(work, 'swtpm-localca.conf');
    await writeFile(localcaConf, [`statedir = ${work}`, `signingkey = ${o.ca.keyPath}`, `issuercert = ${o.ca.certPath}`, `certserial = ${join(work, 'certserial')}`, ''].join('\n'), { mode: 0o600 });
    await writeFile(join(work, 'swtpm-localca.options'), '--platform-manufacturer vmseal\n--platform-model QEMU\n--platform-version 1\n', { mode: 0o600 });
    const setupConf = join(work, 'swtpm_setup.conf');
    await writeFile(
      setupConf,
      ['create_certs_tool = /usr/bin/swtpm_localca', `create_certs_tool_config = ${localcaConf}`, `create_certs_tool_options = ${join(work, 'swtpm-localca.options')}`, `active_pcr_banks = ${VTPM_PCR_BANKS}`, ''].join('\n'),
      { mode: 0o600 },
    );
    const args = ['--tpm2', '--tpmstate', o.stateDir, '--config', setupConf, '--create-ek-cert', '--ecc', '--pcr-banks', VTPM_PCR_BANKS, '--keyfile-fd', '3', '--cipher', 'aes-256-cbc', '--vmid', o.vmName, '--not-overwrite', '--logfile', join(work, 'setup.log')];
    if (o.ekCertDir) args.push('--write-ek-cert-files', o.ekCertDir);
    // swtpm_setup reads --keyfile-fd as hex text.
    const child = spawnWithKey('swtpm_setup', args, Buffer.from(Buffer.from(o.key).toString('hex')));
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (out += s));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    if (code !== 0) {
      const log = await readFile(join(work, 'setup.log'), 'utf8').catch(() => '');
      throw new Error(`swtpm_setup failed (${code}): ${out.trim()} ${log.trim()}`.slice(0, 4000));
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
