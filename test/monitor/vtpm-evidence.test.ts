// The monitor's attestation evidence from a real swtpm (no QEMU): AK certified by a vTPM CA, quote with the
// verifier's nonce over the measured-launch PCRs, checked by the authority's verifier; and the exclusive
// section keeps a concurrent "guest" command out from between the PCR_Read and the Quote.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attestationEvidenceSchema } from '../../src/formats/protocol/attestation.ts';
import { TPM_ALG, TPM_RC, pcrExtendCommand, startupCommand } from '../../src/formats/tpm2/index.ts';
import { verifyQuote } from '../../src/authority/attest/quote-verify.ts';
import { x509AkChainVerifier } from '../../src/authority/attest/ak-chain.ts';
import { pcrValuesFromWire, selectionOf } from '../../src/authority/attest/pcr-wire.ts';
import { checkLaunch } from '../../src/authority/attest/launch-check.ts';
import { AkCertifier } from '../../src/monitor/vtpm/attestation-key.ts';
import { collectEvidence } from '../../src/monitor/vtpm/evidence.ts';
import { extendLaunch, measureBootFiles } from '../../src/monitor/vtpm/measured-launch.ts';
import { SwtpmInstance, vtpmStateDir } from '../../src/monitor/vtpm/swtpm-instance.ts';
import { CMD } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import { ensureVtpmCa } from '../../src/monitor/vtpm/vtpm-ca.ts';

const root = mkdtempSync(join(tmpdir(), 'vmseal-evidence-'));
after(() => rmSync(root, { recursive: true, force: true }));

test('evidence: a certified ECC AK quotes the measured launch with the nonce; the verifier accepts it', async () => {
  const key = randomBytes(32);
  const swtpm = await SwtpmInstance.start({ stateDir: await vtpmStateDir(join(root, 'vtpm'), key), key, name: 'ev' });
  try {
    assert.equal((await swtpm.control.request(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), 0);
    assert.equal((await swtpm.tpm.transact(startupCommand())).readUInt32BE(6), TPM_RC.SUCCESS);
    const kernel = join(root, 'vmlinuz');
    const initrd = join(root, 'initrd');
    writeFileSync(kernel, randomBytes(4096));
    writeFileSync(initrd, randomBytes(4096));
    const eventLogPath = join(root, 'eventlog.bin');
    const m = await measureBootFiles(kernel, initrd, 'console=ttyS0');
    await extendLaunch(swtpm.tpm, m, eventLogPath);
    const ca = await ensureVtpmCa(root, 'host-ev');
    const certifier = new AkCertifier(ca);
    const req = { nonce: randomBytes(32), pcrs: { sha256: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] } };

    // A "guest" extend of PCR 10 sent while the evidence is collected lands before or after, never between.
    const [wire] = await Promise.all([
      collectEvidence({ tpm: swtpm.tpm, eventLogPath, vmName: 'vm-ev', certifier }, req),
      swtpm.tpm.transact(pcrExtendCommand(10, [{ hashAlg: TPM_ALG.SHA256, digest: randomBytes(32) }])),
    ]);
    const ev = attestationEvidenceSchema.parse(wire);
    const verdict = await verifyQuote(
      { akPublic: ev.akPublic, akCertChain: ev.akCertChain, nonce: req.nonce, selection: selectionOf(req.pcrs), quote: ev.quote, signature: ev.signature, pcrValues: pcrValuesFromWire(ev.pcrValues) },
      x509AkChainVerifier({ rootPem: await readFile(ca.certPath, 'utf8') }),
    );
    assert.equal(verdict.ok, true, verdict.ok ? '' : `${verdict.code}: ${verdict.reason}`);
    assert.ok(verdict.ok);
    const launch = checkLaunch(ev.eventLog, verdict.pcrValues, { kernelSha256: m.kernel.get(TPM_ALG.SHA256)!.toString('hex'), initrdSha256: m.initrd.get(TPM_ALG.SHA256)!.toString('hex'), cmdline: 'console=ttyS0' });
    assert.equal(launch.ok, true, JSON.stringify(launch));

    // The same AK every time (a primary from the endorsement seed): one certificate, reused.
    const again = attestationEvidenceSchema.parse(await collectEvidence({ tpm: swtpm.tpm, eventLogPath, vmName: 'vm-ev', certifier }, { ...req, nonce: randomBytes(16) }));
    assert.ok(again.akPublic.equals(ev.akPublic));
    assert.ok(again.akCertChain[0]!.equals(ev.akCertChain[0]!));
    // Each quote answers only its own nonce.
    const wrong = await verifyQuote(
      { akPublic: again.akPublic, akCertChain: again.akCertChain, nonce: req.nonce, selection: selectionOf(req.pcrs), quote: again.quote, signature: again.signature, pcrValues: pcrValuesFromWire(again.pcrValues) },
      x509AkChainVerifier({ rootPem: await readFile(ca.certPath, 'utf8') }),
    );
    assert.equal(wrong.ok ? 'OK' : wrong.code, 'NONCE_MISMATCH');
  } finally {
    await swtpm.stop();
  }
});
