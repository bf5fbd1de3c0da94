/**
 * The authority's IDS side: the approval list (file-based, scoped, revocable; also through the CLI),
 * its IDS HPKE key (created for old directories, published under the CA's signature) and the refusals
 * of POST /v1/ids/sign that the registration tests do not reach.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { initAuthority, openAuthority } from '../../src/authority/authority-dir.ts';
import { approveIdsMeasurement, findIdsApproval, IdsApprovalError, listIdsApprovals, revokeIdsApproval } from '../../src/authority/ids-approvals.ts';
import { buildAuthorityServer } from '../../src/authority/server.ts';
import { issueHostCertificate } from '../../src/authority/ca.ts';
import { publishHostCertificate } from '../../src/authority/host-registry.ts';
import { pinnedCaPublicKey } from '../../src/crypto/host-certificate.ts';
import { generateHpkeKeyPair } from '../../src/crypto/hpke.ts';
import { ed25519Verify } from '../../src/crypto/sign.ts';
import { idsAuthorityKeySignedMessage } from '../../src/formats/protocol/ids-registration.ts';
import { createRegistration, signRequestOf } from '../../src/ids/channel/registration.ts';

const M1 = '11'.repeat(32);
const M2 = '22'.repeat(32);
const VM_A = 'aa'.repeat(16);
const VM_B = 'bb'.repeat(16);

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-ids-approvals-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('approvals match by measurement and scope, list in order, and revoke by id or measurement', async (t) => {
  const { paths } = await initAuthority(join(tempDir(t), 'a'));
  const any = await approveIdsMeasurement(paths, M1.toUpperCase(), { note: 'ids v1.0' });
  assert.equal(any.measurement, M1);
  const scoped = await approveIdsMeasurement(paths, M2, { vmId: VM_A, hostId: 'host-1' });
  assert.equal((await findIdsApproval(paths, M1, VM_B, 'host-9'))?.id, any.id);
  assert.equal((await findIdsApproval(paths, M2, VM_A, 'host-1'))?.id, scoped.id);
  assert.equal(await findIdsApproval(paths, M2, VM_B, 'host-1'), undefined);
  assert.equal(await findIdsApproval(paths, M2, VM_A, 'host-2'), undefined);
  assert.deepEqual((await listIdsApprovals(paths)).map((a) => a.id).sort(), [any.id, scoped.id].sort());

  assert.deepEqual((await revokeIdsApproval(paths, scoped.id)).map((a) => a.id), [scoped.id]);
  assert.equal(await findIdsApproval(paths, M2, VM_A, 'host-1'), undefined);
  await approveIdsMeasurement(paths, M1, { hostId: 'host-2' });
  assert.equal((await revokeIdsApproval(paths, M1)).length, 2);
  assert.deepEqual(await listIdsApprovals(paths), []);
  await assert.rejects(revokeIdsApproval(paths, M1), IdsApprovalError);
});

test('bad approvals are refused and a corrupt record is an error, never an approval', async (t) => {
  const { paths } = await initAuthority(join(tempDir(t), 'a'));
  await assert.rejects(approveIdsMeasurement(paths, 'abc'), IdsApprovalError);
  await assert.rejects(approveIdsMeasurement(paths, M1, { vmId: 'xyz' }), IdsApprovalError);
  await assert.rejects(approveIdsMeasurement(paths, M1, { hostId: '../etc' }), IdsApprovalError);
  await assert.rejects(approveIdsMeasurement(paths, M1, { note: 'a\nb' }), IdsApprovalError);
  await assert.rejects(revokeIdsApproval(paths, '../../x'), IdsApprovalError);
  assert.deepEqual(readdirSync(paths.idsApprovals), []);
  writeFileSync(join(paths.idsApprovals, '0123456789abcdef.json'), JSON.stringify({ version: 1, id: '0123456789abcdef', measurement: M1, createdAt: 'yesterday' }));
  await assert.rejects(findIdsApproval(paths, M1, VM_A, 'host-1'), /corrupt IDS approval/);
});

test('the IDS key is created for an old directory, kept across opens, and published signed by the CA', async (t) => {
  const dir = join(tempDir(t), 'a');
  const first = await initAuthority(dir);
  await rm(join(dir, 'ids'), { recursive: true }); // as a directory from before the IDS work
  const opened = await openAuthority(dir);
  assert.equal(opened.idsKey.publicKey.length, 32);
  assert.notDeepEqual(opened.idsKey.publicKey, first.idsKey.publicKey);
  assert.deepEqual((await openAuthority(dir)).idsKey, opened.idsKey);

  const app = buildAuthorityServer({ authority: opened });
  t.after(() => app.close());
  const body = (await app.inject({ method: 'GET', url: '/v1/ids/authority-key' })).json();
  const publicKey = Buffer.from(body.publicKey, 'base64');
  assert.deepEqual(publicKey, opened.idsKey.publicKey);
  const caKey = pinnedCaPublicKey(opened.ca.certPem);
  assert.ok(ed25519Verify(caKey, idsAuthorityKeySignedMessage(publicKey), Buffer.from(body.signature, 'base64')));
  // Domain separation: the signature is not one over the bare key.
  assert.equal(ed25519Verify(caKey, publicKey, Buffer.from(body.signature, 'base64')), false);
});

test('POST /v1/ids/sign refuses stale headers, malformed bodies, and registers nothing without a heartbeat service', async (t) => {
  const authority = await initAuthority(join(tempDir(t), 'a'));
  const host = await generateHpkeKeyPair();
  const hostCertificatePem = await issueHostCertificate(authority.ca, { hostId: 'host-1', hpkePublicKey: host.publicKey, validityDays: 30 });
  await publishHostCertificate(authority.paths, 'host-1', hostCertificatePem);
  await approveIdsMeasurement(authority.paths, M1);
  const registered: string[] = [];
  const clock = { now: new Date() };
  const app = buildAuthorityServer({ authority, now: () => clock.now, heartbeats: { register: (id) => void registered.push(id) } });
  const bare = buildAuthorityServer({ authority });
  t.after(async () => {
    await app.close();
    await bare.close();
  });
  const key = (await app.inject({ method: 'GET', url: '/v1/ids/authority-key' })).json();
  const reg = (now: Date) =>
    createRegistration({
      vmId: VM_A,
      hostId: 'host-1',
      measurement: M1,
      hostCertificatePem,
      caCertificatePem: authority.ca.certPem,
      authorityHpkePublicKey: Buffer.from(key.publicKey, 'base64'),
      authorityKeySignature: Buffer.from(key.signature, 'base64'),
      now,
    });
  const sign = (server: typeof app, payload: unknown) => server.inject({ method: 'POST', url: '/v1/ids/sign', payload: payload as object });

  // The authority's clock moves instead of the header's: the CA itself is only a few minutes old.
  const start = clock.now;
  const early = signRequestOf(await reg(start));
  clock.now = new Date(start.getTime() + 11 * 60_000);
  assert.equal((await sign(app, early)).json().code, 'STALE');
  clock.now = new Date(start.getTime() - 6 * 60_000);
  assert.equal((await sign(app, early)).json().code, 'STALE');
  clock.now = start;

  const fresh = signRequestOf(await reg(clock.now));
  for (const bad of [{ ...fresh, extra: 1 }, { ...fresh, header: '!!' }, { ...fresh, sealedSessionKey: Buffer.alloc(81).toString('base64') }, {}]) {
    const r = await sign(app, bad);
    assert.deepEqual([r.statusCode, r.json().code], [400, 'BAD_REQUEST'], JSON.stringify(bad).slice(0, 80));
  }
  const r = await sign(bare, fresh);
  assert.equal(r.statusCode, 500);
  assert.deepEqual(readdirSync(authority.paths.idsSessions), [], 'a refused request consumes no session id');
  assert.equal((await sign(app, fresh)).statusCode, 200);
  assert.equal(registered.length, 1);
  assert.equal(readdirSync(authority.paths.idsSessions).length, 1);
});

test('`vmseal authority ids approve|list|revoke` manage the list', async (t) => {
  const dir = join(tempDir(t), 'a');
  await initAuthority(dir);
  const bin = resolve('bin/vmseal.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [bin, 'authority', 'ids', ...args, '--dir', dir], { encoding: 'utf8', timeout: 60_000 });
  const approved = run('approve', M1, '--vm', VM_A, '--host', 'host-1', '--note', 'release 1');
  assert.equal(approved.status, 0, approved.stderr);
  const id = approved.stdout.split(/\s+/)[0]!;
  assert.match(id, /^[0-9a-f]{16}$/);
  const listed = JSON.parse(run('list', '--json').stdout);
  assert.deepEqual(listed.map((a: { id: string; vmId: string; hostId: string; note: string }) => [a.id, a.vmId, a.hostId, a.note]), [[id, VM_A, 'host-1', 'release 1']]);
  assert.equal(run('revoke', id).status, 0);
  assert.equal(run('list').stdout, '');
  const bad = run('approve', 'nothex');
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /64 hex/);
});
