/**
 * Remote attestation end to end on the real Debian guest, one boot for the file: the VM runs with a vTPM
 * (measured launch into PCRs 8/9, IMA into PCR 10); the authority's verifier fetches the monitor's quote
 * through the management plane and the IMA list from the VM's IDS session (read agentlessly from kernel
 * memory); the tenant's runtime policy is built from the guest's IMA list at boot. Then an unknown program
 * runs in the guest and the next attestation fails naming it, with a signed notice to the tenant's webhook.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { startIdsWorld } from '../../src/cli/demo/ids.ts';
import { ATTEST_DEMO_CHECKS, attestOnce, enrollForAttestation, readImaList } from '../../src/cli/demo/attest.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { attestationEvidenceSchema, signedNoticeSchema, type SignedNotice } from '../../src/formats/protocol/attestation.ts';
import { parseImaBinary, BOOT_AGGREGATE_NAME } from '../../src/formats/ima.ts';
import { parseAttest, parsePublic } from '../../src/formats/tpm2/index.ts';
import { verifyNotice } from '../../src/authority/attest/revocation-notice.ts';

test('attestation on a real guest: quote, measured launch, agentless IMA, then an unknown program', { timeout: 1_200_000 }, async (t) => {
  const guest = await buildGuest();
  const world = await startIdsWorld({ guest, accel: 'tcg', log: () => undefined, attest: true, checks: ATTEST_DEMO_CHECKS });
  t.after(() => world.close());
  const { cloud, vmId } = world;
  const sh = async (cmd: string, timeoutMs = 60_000) => {
    const r = await runInGuest(world.guestConsole, cmd, timeoutMs);
    assert.equal(r.exitCode, 0, `${cmd}: ${r.output}`);
    return r.output;
  };
  const session = await world.startSession();
  t.after(() => session.close());

  const notices: SignedNotice[] = [];
  const hook = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      notices.push(signedNoticeSchema.parse(JSON.parse(body)));
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  t.after(() => hook.close());
  const port = (hook.address() as { port: number }).port;

  const post = async (url: string, method: string, body: unknown) => {
    const res = await fetch(url, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const json = (await res.json()) as unknown;
    assert.equal(res.status, 200, JSON.stringify(json));
    return json;
  };

  await t.test('the monitor quotes through the management plane with its certified AK', async () => {
    const nonce = randomBytes(32);
    const ev = attestationEvidenceSchema.parse(await post(`${cloud.mgmtUrl}/v1/vms/${vmId}/attest`, 'POST', { nonce: nonce.toString('base64'), pcrs: { sha256: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] } }));
    const attest = parseAttest(ev.quote);
    assert.ok(attest.extraData.equals(nonce));
    const ak = parsePublic(ev.akPublic);
    assert.equal(ak.type, 0x0023, 'an ECC AK');
    assert.equal(ev.akCertChain.length, 2);
    assert.equal(Object.keys(ev.pcrValues.sha256 ?? {}).length, 11);
    assert.notEqual(ev.pcrValues.sha256?.['10'], '0'.repeat(64), 'IMA extended PCR 10');
    // A wrong request changes nothing and is refused.
    const bad = await fetch(`${cloud.mgmtUrl}/v1/vms/${vmId}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ nonce: 'AAAA', pcrs: {} }) });
    assert.equal(bad.status, 400);
  });

  let bootList: Buffer;
  await t.test('the IMA list read from kernel memory is the guest’s binary_runtime_measurements', async () => {
    const ours = await readImaList(session);
    const theirs = Buffer.from((await sh('base64 /sys/kernel/security/ima/binary_runtime_measurements | tr -d "\\n"', 180_000)).replace(/\s+/g, ''), 'base64');
    const n = Math.min(ours.length, theirs.length);
    assert.ok(n > 1000, `lists of ${ours.length} and ${theirs.length} bytes`);
    assert.ok(ours.subarray(0, n).equals(theirs.subarray(0, n)), 'one list is a prefix of the other');
    const entries = parseImaBinary(ours);
    assert.equal(entries[0]?.path, BOOT_AGGREGATE_NAME);
    assert.ok(entries.length > 3, `${entries.length} entries`);
    bootList = ours;
  });

  await t.test('a passing attestation, then an unknown program fails the next one with a signed notice', async () => {
    // The tenant's policy: every file the guest measured up to now (its golden state). The program goes
    // to the root file system: ima_policy=tcb does not measure tmpfs, so /tmp would be invisible to IMA.
    await enrollForAttestation(world, guest, bootList, `http://127.0.0.1:${port}/notices`);
    const good = await attestOnce(world);
    assert.equal(good.code, 'OK', good.reason);
    assert.ok((good.imaEntries ?? 0) > 3, good.reason);
    assert.match(good.reason, /IMA entries verified against the runtime policy/);

    await sh('cp /bin/busybox /root/busybox-unknown && /root/busybox-unknown true');
    const busybox = (await sh('sha256sum /root/busybox-unknown')).trim().split(/\s+/)[0];
    const bad = await attestOnce(world);
    assert.equal(bad.ok, false);
    assert.equal(bad.code, 'POLICY_VIOLATION', bad.reason);
    assert.equal(bad.path, '/root/busybox-unknown', bad.reason);
    assert.equal(bad.digest, `sha256:${busybox}`);
    assert.ok(bad.notice, 'the verdict carries the signed notice');
    await cloud.attest!.settled();
    assert.equal(notices.length, 1, 'the webhook got the notice');
    const n = verifyNotice(notices[0], (await readFile(cloud.authorityPaths.caCert, 'utf8'))).notice;
    assert.equal(n.vmId, vmId);
    assert.equal(n.path, '/root/busybox-unknown');
  });
});
