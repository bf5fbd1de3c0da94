// Quote verification against a real swtpm, with tpm2_checkquote as the oracle: for a good quote, a bad
// signature, a wrong nonce and a tampered PCR value, both give the same verdict (ECC and RSA AKs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { encodeSignature, parseSignature, TPM_ALG } from '../../src/formats/tpm2/index.ts';
import { verifyQuote, type QuoteInput } from '../../src/authority/attest/quote-verify.ts';
import { x509AkChainVerifier } from '../../src/authority/attest/ak-chain.ts';
import { pcrValuesFromWire, selectionOf } from '../../src/authority/attest/pcr-wire.ts';
import { createCa } from '../../src/authority/ca.ts';
import { tool } from '../formats/tpm2-fixtures/swtpm.ts';
import { EvidenceTpm, certifyAk, sha256 } from './attest-fixtures.ts';

const run = promisify(execFile);
const PCRS = { sha256: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] };

async function checkquote(args: string[]): Promise<boolean> {
  try {
    await run('tpm2_checkquote', args);
    return true;
  } catch {
    return false;
  }
}

for (const kind of ['ecc', 'rsa'] as const) {
  test(`quote verdicts agree with tpm2_checkquote (${kind} AK): good, bad signature, wrong nonce, tampered PCR`, async () => {
    const t = await EvidenceTpm.start(kind);
    const dir = mkdtempSync(join(tmpdir(), 'vmseal-attest-'));
    try {
      await t.measureLaunch({ kernel: new Map([[TPM_ALG.SHA256, sha256('kernel')]]), initrd: new Map([[TPM_ALG.SHA256, sha256('initrd')]]), cmdline: 'console=ttyS0' });
      const nonce = randomBytes(20);
      const ev = await t.produce({ nonce, pcrs: PCRS });
      const verifier = x509AkChainVerifier({ rootPem: t.chain.root.certPem });
      const input: QuoteInput = { akPublic: ev.akPublic, akCertChain: ev.akCertChain, nonce, selection: selectionOf(PCRS), quote: ev.quote, signature: ev.signature, pcrValues: pcrValuesFromWire(ev.pcrValues) };
      const f = (n: string) => join(dir, n);
      writeFileSync(f('ak.pub'), ev.akPublic);
      writeFileSync(f('q.msg'), ev.quote);
      writeFileSync(f('q.sig'), ev.signature);
      await tool(t.tpm.port, ['tpm2_pcrread', 'sha256:0,1,2,3,4,5,6,7,8,9,10', '-F', 'serialized', '-o', f('q.pcrs')]);
      const cq = (o: { sig?: string; pcrs?: string; nonce?: Buffer }) =>
        checkquote(['-u', f('ak.pub'), '-m', f('q.msg'), '-s', f(o.sig ?? 'q.sig'), '-f', f(o.pcrs ?? 'q.pcrs'), '-g', 'sha256', '-q', (o.nonce ?? nonce).toString('hex')]);

      // Good.
      const good = await verifyQuote(input, verifier);
      assert.equal(good.ok, true, good.ok ? '' : good.reason);
      assert.equal(await cq({}), true);

      // Bad signature: one bit of the signature flipped.
      const sig = parseSignature(ev.signature);
      const bad = structuredClone(sig) as typeof sig;
      if ('s' in bad) bad.s = Buffer.from(bad.s.map((b, i) => (i === 3 ? b ^ 1 : b)));
      else if ('sig' in bad) bad.sig = Buffer.from(bad.sig.map((b, i) => (i === 3 ? b ^ 1 : b)));
      writeFileSync(f('bad.sig'), encodeSignature(bad));
      const v1 = await verifyQuote({ ...input, signature: encodeSignature(bad) }, verifier);
      assert.deepEqual([v1.ok, !v1.ok && v1.code], [false, 'BAD_SIGNATURE']);
      assert.equal(await cq({ sig: 'bad.sig' }), false);

      // Wrong nonce: the verifier expected another one (a replayed quote).
      const other = randomBytes(20);
      const v2 = await verifyQuote({ ...input, nonce: other }, verifier);
      assert.deepEqual([v2.ok, !v2.ok && v2.code], [false, 'NONCE_MISMATCH']);
      assert.equal(await cq({ nonce: other }), false);

      // Tampered PCR 8 value, in both the PCR file and our reported values.
      const pcr8 = input.pcrValues.get(8)!.get(TPM_ALG.SHA256)!;
      const file = readFileSync(f('q.pcrs'));
      const at = file.indexOf(pcr8);
      assert.ok(at > 0);
      file[at]! ^= 1;
      writeFileSync(f('bad.pcrs'), file);
      const tampered = pcrValuesFromWire(ev.pcrValues);
      tampered.get(8)!.get(TPM_ALG.SHA256)![0]! ^= 1;
      const v3 = await verifyQuote({ ...input, pcrValues: tampered }, verifier);
      assert.deepEqual([v3.ok, !v3.ok && v3.code], [false, 'PCR_DIGEST_MISMATCH']);
      assert.equal(await cq({ pcrs: 'bad.pcrs' }), false);

      // Our extra checks (tpm2_checkquote does not make them): selection, AK chain.
      const v4 = await verifyQuote({ ...input, selection: selectionOf({ sha256: [0, 8, 9, 10] }) }, verifier);
      assert.deepEqual([v4.ok, !v4.ok && v4.code], [false, 'PCR_SELECTION_MISMATCH']);
      const strangerRoot = await createCa({ commonName: 'other provider' });
      const v5 = await verifyQuote(input, x509AkChainVerifier({ rootPem: strangerRoot.certPem }));
      assert.deepEqual([v5.ok, !v5.ok && v5.code], [false, 'AK_UNTRUSTED']);
      // A chain that certifies another AK (a relay swapping in its own key and certificate).
      const otherAk = await EvidenceTpm.start(kind, t.chain.root);
      try {
        const v6 = await verifyQuote({ ...input, akCertChain: otherAk.chain.chain }, verifier);
        assert.deepEqual([v6.ok, !v6.ok && v6.code], [false, 'AK_UNTRUSTED']);
        const v7 = await verifyQuote({ ...input, akPublic: otherAk.akPublicBytes, akCertChain: otherAk.chain.chain }, verifier);
        assert.deepEqual([v7.ok, !v7.ok && v7.code], [false, 'BAD_SIGNATURE']);
      } finally {
        await otherAk.stop();
      }
      // A chain made for this AK under the right root verifies; one missing the vTPM CA does not.
      const again = await certifyAk(t.akPublic, t.chain.root);
      assert.equal((await verifyQuote({ ...input, akCertChain: again.chain }, verifier)).ok, true);
      const v8 = await verifyQuote({ ...input, akCertChain: again.chain.slice(0, 1) }, verifier);
      assert.deepEqual([v8.ok, !v8.ok && v8.code], [false, 'AK_UNTRUSTED']);
    } finally {
      await t.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
