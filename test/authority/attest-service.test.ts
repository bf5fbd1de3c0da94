// The authority's verifier end to end: a fake monitor (real swtpm) answers POST /v1/vms/:vmId/attest on
// a unix socket, the authority attests through it, an unknown program in the IMA list revokes the VM,
// the tenant's webhook receives a notice that verifies with the CA, and history survives a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import Fastify from 'fastify';
import { TPM_ALG } from '../../src/formats/tpm2/index.ts';
import { computeBootAggregate } from '../../src/formats/ima.ts';
import { attestRequestSchema, attestVerdictSchema, encodeEvidence, MONITOR_ATTEST_ROUTE, signedNoticeSchema, type SignedNotice } from '../../src/formats/protocol/attestation.ts';
import { initAuthority } from '../../src/authority/authority-dir.ts';
import { buildAuthorityServer } from '../../src/authority/server.ts';
import { AttestDb } from '../../src/authority/attest/attest-db.ts';
import { AttestService } from '../../src/authority/attest/attest-service.ts';
import { verifyNotice } from '../../src/authority/attest/revocation-notice.ts';
import { emptyRuntimePolicy } from '../../src/authority/attest/runtime-policy.ts';
import { EvidenceTpm, imaNgEntry, sha256 } from './attest-fixtures.ts';

const S = TPM_ALG.SHA256;

test('attest service: pass, then an unknown program revokes with a signed notice to the webhook; history survives a restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-attest-svc-'));
  const authority = await initAuthority(join(dir, 'authority'));
  const tpm = await EvidenceTpm.start('ecc', authority.ca);
  const vmId = randomBytes(16).toString('hex');

  // The fake monitor: validates the request as the monitor must, answers with evidence from swtpm.
  const monitor = Fastify();
  monitor.post(MONITOR_ATTEST_ROUTE, async (req, reply) => {
    const body = attestRequestSchema.safeParse(req.body);
    if (!body.success) return reply.code(400).send({ error: 'bad request', code: 'BAD_REQUEST' });
    return encodeEvidence(await tpm.produce(body.data));
  });
  const socket = join(dir, 'monitor.sock');
  await monitor.listen({ path: socket });

  // The tenant's webhook: the first delivery fails (retried), the second is kept.
  const received: SignedNotice[] = [];
  let hits = 0;
  const webhook = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hits++;
      if (hits === 1) return res.writeHead(503).end();
      received.push(signedNoticeSchema.parse(JSON.parse(Buffer.concat(chunks).toString())));
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => webhook.listen(0, '127.0.0.1', r));
  const hookUrl = `http://127.0.0.1:${(webhook.address() as { port: number }).port}/notices`;

  const open = () => {
    const attest = new AttestService({ authority, db: AttestDb.open(authority.paths.dir), webhookRetryMs: 20 });
    return { attest, app: buildAuthorityServer({ authority, attest }) };
  };
  let { attest, app } = open();
  try {
    const kernel = sha256('kernel'), initrd = sha256('initrd'), cmdline = 'console=ttyS0 ima_policy=tcb';
    await tpm.measureLaunch({ kernel: new Map([[S, kernel]]), initrd: new Map([[S, initrd]]), cmdline });
    const boot = await tpm.readPcrs({ sha256: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] });
    const agg = computeBootAggregate(Array.from({ length: 10 }, (_, i) => boot.get(i)!.get(S)!), 'sha256');
    const busybox = sha256('busybox');
    await tpm.measureIma([imaNgEntry('boot_aggregate', agg), imaNgEntry('/bin/busybox', busybox)]);
    const policy = emptyRuntimePolicy();
    policy.digests = { '/bin/busybox': [busybox.toString('hex')] };

    const enroll = await app.inject({
      method: 'PUT',
      url: `/v1/attest/vms/${vmId}`,
      payload: { source: `unix:${socket}`, references: { kernelSha256: kernel.toString('hex'), initrdSha256: initrd.toString('hex'), cmdline }, runtimePolicy: policy, webhook: hookUrl },
    });
    assert.equal(enroll.statusCode, 200, enroll.body);
    // A bad enrollment changes nothing.
    const badEnroll = await app.inject({ method: 'PUT', url: `/v1/attest/vms/${vmId}`, payload: { source: 'ftp://x', references: {} } });
    assert.equal(badEnroll.statusCode, 400);

    const first = attestVerdictSchema.parse((await app.inject({ method: 'POST', url: `/v1/attest/vms/${vmId}/attest`, payload: {} })).json());
    assert.equal(first.ok, true, first.reason);
    assert.equal(first.imaEntries, 2);
    assert.equal(first.pcrs.sha256?.['8'], boot.get(8)!.get(S)!.toString('hex'));

    // An unknown program runs in the guest.
    const evil = sha256('evil program');
    await tpm.measureIma([imaNgEntry('/tmp/evil', evil)]);
    const second = attestVerdictSchema.parse((await app.inject({ method: 'POST', url: `/v1/attest/vms/${vmId}/attest`, payload: {} })).json());
    assert.deepEqual([second.ok, second.code, second.path, second.digest], [false, 'POLICY_VIOLATION', '/tmp/evil', `sha256:${evil.toString('hex')}`]);
    assert.ok(second.notice);
    assert.deepEqual(verifyNotice(second.notice, authority.ca.certPem).notice, { vmId, reason: second.notice.notice.reason, path: '/tmp/evil', digest: `sha256:${evil.toString('hex')}`, at: second.at, attestationId: second.attestationId });

    await attest.settled();
    assert.equal(hits, 2);
    assert.equal(received.length, 1);
    assert.deepEqual(verifyNotice(received[0], authority.ca.certPem), second.notice);
    // A notice altered in transit does not verify; neither does one checked against another CA.
    assert.throws(() => verifyNotice({ ...second.notice, notice: { ...second.notice!.notice, path: '/bin/busybox' } }, authority.ca.certPem), /does not verify/);
    const strangerDir = join(dir, 'stranger');
    const stranger = await initAuthority(strangerDir);
    assert.throws(() => verifyNotice(second.notice, stranger.ca.certPem), /does not verify/);

    // A third failure is recorded but does not notify again.
    const third = attestVerdictSchema.parse((await app.inject({ method: 'POST', url: `/v1/attest/vms/${vmId}/attest`, payload: {} })).json());
    assert.deepEqual([third.ok, third.notice], [false, null]);

    // The relay withholds evidence: reported, not revoking.
    await monitor.close();
    const fourth = attestVerdictSchema.parse((await app.inject({ method: 'POST', url: `/v1/attest/vms/${vmId}/attest`, payload: {} })).json());
    assert.deepEqual([fourth.ok, fourth.code], [false, 'EVIDENCE_UNAVAILABLE']);

    // Restart: a new service on the same directory sees the whole history.
    await app.close();
    ({ attest, app } = open());
    const h = (await app.inject({ method: 'GET', url: `/v1/attest/vms/${vmId}/history` })).json() as { status: string; verdicts: { attestationId: number; ok: boolean; code: string; notice: unknown }[] };
    assert.equal(h.status, 'revoked');
    assert.deepEqual(h.verdicts.map((v) => [v.attestationId, v.ok, v.code]), [
      [fourth.attestationId, false, 'EVIDENCE_UNAVAILABLE'],
      [third.attestationId, false, 'POLICY_VIOLATION'],
      [second.attestationId, false, 'POLICY_VIOLATION'],
      [first.attestationId, true, 'OK'],
    ]);
    assert.deepEqual(h.verdicts[2]!.notice, second.notice);
    assert.equal((await app.inject({ method: 'POST', url: `/v1/attest/vms/${'0'.repeat(32)}/attest`, payload: {} })).statusCode, 404);
  } finally {
    await app.close();
    await monitor.close().catch(() => undefined);
    await new Promise((r) => webhook.close(r));
    await tpm.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
