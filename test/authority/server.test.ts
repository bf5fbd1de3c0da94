/** The authority's HTTP API through fastify's inject: enrollment, its refusals, and what is published. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { AuthorityDirError, initAuthority, openAuthority, type Authority } from '../../src/authority/authority-dir.ts';
import { createCa } from '../../src/authority/ca.ts';
import { createEnrollmentToken } from '../../src/authority/enrollment-tokens.ts';
import { buildAuthorityServer } from '../../src/authority/server.ts';
import { verifyHostCertificate } from '../../src/client/host-cert.ts';
import { generateHpkeKeyPair } from '../../src/crypto/hpke.ts';
import { ensureVtpmCa, installVtpmCaCertificate, vtpmCaPublicKeyPem } from '../../src/monitor/vtpm/vtpm-ca.ts';

const HOUR = 3_600_000;

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-authority-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Fixture {
  authority: Authority;
  app: FastifyInstance;
  dir: string;
  clock: { now: Date };
}

async function fixture(t: TestContext, opts: { caDays?: number; certDays?: number } = {}): Promise<Fixture> {
  const dir = join(tempDir(t), 'authority');
  await initAuthority(dir, opts.caDays === undefined ? {} : { validityDays: opts.caDays });
  const authority = await openAuthority(dir);
  const clock = { now: new Date() };
  const app = buildAuthorityServer({ authority, now: () => clock.now, ...(opts.certDays === undefined ? {} : { hostCertificateDays: opts.certDays }) });
  t.after(() => app.close());
  return { authority, app, dir, clock };
}

async function hostKey(): Promise<string> {
  return (await generateHpkeKeyPair()).publicKey.toString('base64');
}

function enroll(f: Fixture, body: unknown) {
  return f.app.inject({ method: 'POST', url: '/v1/hosts/enroll', payload: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
}

async function published(f: Fixture, hostId: string): Promise<{ status: number; certificate?: string }> {
  const r = await f.app.inject({ method: 'GET', url: `/v1/hosts/${hostId}/certificate` });
  return { status: r.statusCode, certificate: r.statusCode === 200 ? r.json().certificate : undefined };
}

function expectError(r: { statusCode: number; json(): any }, status: number, code: string): void {
  assert.equal(r.statusCode, status, JSON.stringify(r.json()));
  const body = r.json();
  assert.equal(body.code, code);
  assert.equal(typeof body.error, 'string');
  assert.ok(body.error.length > 0);
}

/** `openssl verify`, an independent judge of the chain the authority issued. */
function opensslVerify(dir: string, caPem: string, certPem: string): string {
  writeFileSync(join(dir, 'ca.pem'), caPem);
  writeFileSync(join(dir, 'host.pem'), certPem);
  const r = spawnSync('openssl', ['verify', '-CAfile', join(dir, 'ca.pem'), join(dir, 'host.pem')], { encoding: 'utf8', timeout: 10_000 });
  return `${r.status} ${r.stdout}${r.stderr}`;
}

test('a host with a valid token gets a certificate for its key that verifies against the CA, and it is published', { timeout: 30_000 }, async (t) => {
  const f = await fixture(t);
  const ca = await f.app.inject({ method: 'GET', url: '/v1/ca' });
  assert.equal(ca.statusCode, 200);
  assert.equal(ca.json().certificate, readFileSync(join(f.dir, 'ca', 'cert.pem'), 'utf8'));

  const { publicKey } = await generateHpkeKeyPair();
  const { token } = await createEnrollmentToken(f.authority.paths, 'host-a');
  const r = await enroll(f, { hostId: 'host-a', hpkePublicKey: publicKey.toString('base64'), token });
  assert.equal(r.statusCode, 200, r.body);
  const certificate: string = r.json().certificate;
  const verified = verifyHostCertificate(certificate, ca.json().certificate, { expectedHostId: 'host-a' });
  assert.deepEqual(verified.hpkePublicKey, publicKey);
  assert.match(opensslVerify(tempDir(t), f.authority.ca.certPem, certificate), /^0 .*OK/s);

  assert.deepEqual(await published(f, 'host-a'), { status: 200, certificate });
  const used = readdirSync(join(f.dir, 'enrollments', 'used'));
  assert.equal(used.length, 1);
  assert.equal(readdirSync(join(f.dir, 'enrollments', 'pending')).length, 0);
  const record = JSON.parse(readFileSync(join(f.dir, 'enrollments', 'used', used[0]!), 'utf8'));
  assert.equal(record.certificateSerial, verified.serialNumber.toLowerCase());
  assert.ok(!readFileSync(join(f.dir, 'enrollments', 'used', used[0]!), 'utf8').includes(token), 'the token itself is never stored');
});

test('a token works once: reuse, and concurrent redemption, issue nothing more', { timeout: 30_000 }, async (t) => {
  const f = await fixture(t);
  const { token } = await createEnrollmentToken(f.authority.paths, 'host-a');
  const first = await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token });
  assert.equal(first.statusCode, 200);
  const again = await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token });
  expectError(again, 403, 'TOKEN_USED');
  assert.equal((await published(f, 'host-a')).certificate, first.json().certificate, 'the published certificate is still the first one');

  const race = await createEnrollmentToken(f.authority.paths, 'host-b');
  const keys = await Promise.all(Array.from({ length: 6 }, () => hostKey()));
  const results = await Promise.all(keys.map((hpkePublicKey) => enroll(f, { hostId: 'host-b', hpkePublicKey, token: race.token })));
  assert.equal(results.filter((r) => r.statusCode === 200).length, 1, results.map((r) => r.body).join('\n'));
  for (const r of results.filter((x) => x.statusCode !== 200)) expectError(r, 403, 'TOKEN_USED');
  const winner = keys[results.findIndex((r) => r.statusCode === 200)]!;
  const cert = verifyHostCertificate((await published(f, 'host-b')).certificate!, f.authority.ca.certPem);
  assert.equal(cert.hpkePublicKey.toString('base64'), winner);
});

test('a token for another host, an expired token, an unknown or revoked token are refused and consume nothing', { timeout: 30_000 }, async (t) => {
  const f = await fixture(t);
  const forA = await createEnrollmentToken(f.authority.paths, 'host-a');
  expectError(await enroll(f, { hostId: 'host-b', hpkePublicKey: await hostKey(), token: forA.token }), 403, 'TOKEN_HOST_MISMATCH');
  assert.equal((await published(f, 'host-b')).status, 404);

  expectError(await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token: 'A'.repeat(43) }), 403, 'TOKEN_UNKNOWN');

  // A new token for host-a revokes the pending one.
  const newer = await createEnrollmentToken(f.authority.paths, 'host-a');
  expectError(await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token: forA.token }), 403, 'TOKEN_UNKNOWN');

  // The server's clock passes the token's expiry.
  f.clock.now = new Date(newer.expiresAt.getTime() + 1);
  expectError(await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token: newer.token }), 403, 'TOKEN_EXPIRED');
  assert.equal((await published(f, 'host-a')).status, 404);
  f.clock.now = new Date();
  expectError(await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token: newer.token }), 403, 'TOKEN_UNKNOWN');

  // The mismatch above left a fresh token for host-a usable.
  const fresh = await createEnrollmentToken(f.authority.paths, 'host-a', { ttlMs: HOUR });
  expectError(await enroll(f, { hostId: 'host-b', hpkePublicKey: await hostKey(), token: fresh.token }), 403, 'TOKEN_HOST_MISMATCH');
  assert.equal((await enroll(f, { hostId: 'host-a', hpkePublicKey: await hostKey(), token: fresh.token })).statusCode, 200);
});

test('malformed keys and bodies get a clear 4xx, and the token survives them', { timeout: 30_000 }, async (t) => {
  const f = await fixture(t);
  const { token } = await createEnrollmentToken(f.authority.paths, 'host-a');
  const good = { hostId: 'host-a', hpkePublicKey: await hostKey(), token };

  expectError(await enroll(f, { ...good, hpkePublicKey: Buffer.alloc(31, 7).toString('base64') }), 400, 'BAD_REQUEST');
  expectError(await enroll(f, { ...good, hpkePublicKey: Buffer.alloc(33, 7).toString('base64') }), 400, 'BAD_REQUEST');
  expectError(await enroll(f, { ...good, hpkePublicKey: `${good.hpkePublicKey.slice(0, 42)}B=` }), 400, 'BAD_REQUEST'); // non-canonical last char
  expectError(await enroll(f, { ...good, hpkePublicKey: good.hpkePublicKey.replace(/=$/, '') }), 400, 'BAD_REQUEST');
  // Small-order X25519 points: the key agreement would yield all zeros.
  expectError(await enroll(f, { ...good, hpkePublicKey: Buffer.alloc(32).toString('base64') }), 400, 'BAD_KEY');
  const order8 = Buffer.from('e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800', 'hex');
  expectError(await enroll(f, { ...good, hpkePublicKey: order8.toString('base64') }), 400, 'BAD_KEY');

  const unknown = await enroll(f, { ...good, validityDays: 9999 });
  expectError(unknown, 400, 'BAD_REQUEST');
  assert.match(unknown.json().error, /unknown field\(s\): validityDays/);
  expectError(await enroll(f, { hostId: 'host-a', token }), 400, 'BAD_REQUEST');
  expectError(await enroll(f, { ...good, hostId: '../etc' }), 400, 'BAD_REQUEST');
  expectError(await enroll(f, [good]), 400, 'BAD_REQUEST');
  expectError(await enroll(f, null), 400, 'BAD_REQUEST');
  expectError(await enroll(f, { ...good, token: 'short' }), 400, 'BAD_REQUEST');

  const post = (payload: string, type = 'application/json') =>
    f.app.inject({ method: 'POST', url: '/v1/hosts/enroll', payload, headers: { 'content-type': type } });
  expectError(await post(JSON.stringify({ ...good, pad: 'x'.repeat(5000) })), 413, 'BODY_TOO_LARGE');
  expectError(await post('{"hostId":'), 400, 'BAD_REQUEST');
  expectError(await post(JSON.stringify(good), 'text/plain'), 415, 'UNSUPPORTED_MEDIA_TYPE');
  expectError(await post(`{"__proto__":{"x":1},"hostId":"host-a"}`), 400, 'BAD_REQUEST');
  expectError(await post(''), 400, 'BAD_REQUEST');

  assert.equal((await published(f, 'host-a')).status, 404, 'nothing was issued');
  assert.equal(readdirSync(join(f.dir, 'enrollments', 'used')).length, 0, 'no token was consumed');
  assert.equal((await enroll(f, good)).statusCode, 200);
});

test('lookups: unknown host 404, bad host id 400, unknown route 404, all as JSON errors', { timeout: 30_000 }, async (t) => {
  const f = await fixture(t);
  expectError(await f.app.inject({ method: 'GET', url: '/v1/hosts/nobody/certificate' }), 404, 'NO_CERTIFICATE');
  expectError(await f.app.inject({ method: 'GET', url: '/v1/hosts/.hidden/certificate' }), 400, 'BAD_REQUEST');
  expectError(await f.app.inject({ method: 'GET', url: '/v1/hosts/a%2Fb/certificate' }), 400, 'BAD_REQUEST');
  expectError(await f.app.inject({ method: 'GET', url: '/v1/secrets' }), 404, 'NOT_FOUND');
  expectError(await f.app.inject({ method: 'DELETE', url: '/v1/ca' }), 404, 'NOT_FOUND');
});

test('when the CA cannot issue, the enrollment fails with 500 and the token is handed back', { timeout: 30_000 }, async (t) => {
  // A CA that expires in 10 days cannot sign a 365-day host certificate.
  const f = await fixture(t, { caDays: 10 });
  const { token } = await createEnrollmentToken(f.authority.paths, 'host-a');
  const body = { hostId: 'host-a', hpkePublicKey: await hostKey(), token };
  expectError(await enroll(f, body), 500, 'INTERNAL');
  assert.equal((await published(f, 'host-a')).status, 404);
  assert.equal(readdirSync(join(f.dir, 'enrollments', 'pending')).length, 1);

  const fixed = buildAuthorityServer({ authority: f.authority, hostCertificateDays: 5 });
  t.after(() => fixed.close());
  const r = await fixed.inject({ method: 'POST', url: '/v1/hosts/enroll', payload: body });
  assert.equal(r.statusCode, 200, r.body);
});

test('authority directories: init refuses existing state, open refuses missing or mismatched CA material', { timeout: 30_000 }, async (t) => {
  const base = tempDir(t);
  const dir = join(base, 'a');
  const created = await initAuthority(dir);
  assert.match(created.caFingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  const oracle = spawnSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256', '-in', join(dir, 'ca', 'cert.pem')], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(oracle.stdout.trim().split('=')[1], created.caFingerprint);
  await assert.rejects(initAuthority(dir), AuthorityDirError);
  await assert.rejects(openAuthority(join(base, 'none')), /holds no authority/);

  const other = await createCa({ commonName: 'other' });
  writeFileSync(join(dir, 'ca', 'key.pem'), other.privateKeyPem);
  await assert.rejects(openAuthority(dir), /does not match/);
  await assert.rejects(createEnrollmentToken((await initAuthority(join(base, 'b'))).paths, 'bad host'), /host id/);
});

test("a host's vTPM CA is certified below the root, and a certificate it issues verifies up to the root", { timeout: 30_000 }, async (t) => {
  const f = await fixture(t);
  const hostDir = tempDir(t);
  const vtpmCa = await ensureVtpmCa(hostDir, 'host-v');
  const { token } = await createEnrollmentToken(f.authority.paths, 'host-v');

  const bad = await enroll(f, { hostId: 'host-v', hpkePublicKey: await hostKey(), token, vtpmCaPublicKey: generateKeyPairSync('ed25519').publicKey.export({ format: 'pem', type: 'spki' }) });
  expectError(bad, 400, 'BAD_KEY');

  const r = await enroll(f, { hostId: 'host-v', hpkePublicKey: await hostKey(), token, vtpmCaPublicKey: await vtpmCaPublicKeyPem(vtpmCa) });
  assert.equal(r.statusCode, 200, r.body);
  const caCert: string = r.json().vtpmCaCertificate;
  await installVtpmCaCertificate(vtpmCa, caCert);

  // A leaf signed by the vTPM CA key, as swtpm_cert signs EK certificates, checked by openssl up to the root.
  const dir = tempDir(t);
  const run = (args: string[]) => spawnSync('openssl', args, { cwd: dir, encoding: 'utf8', timeout: 20_000 });
  writeFileSync(join(dir, 'root.pem'), f.authority.ca.certPem);
  assert.equal(run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-subj', '/CN=ek', '-out', 'leaf.csr']).status, 0);
  const signed = run(['x509', '-req', '-in', 'leaf.csr', '-CA', vtpmCa.certPath, '-CAkey', vtpmCa.keyPath, '-CAcreateserial', '-days', '30', '-out', 'leaf.pem']);
  assert.equal(signed.status, 0, signed.stderr);
  const chain = run(['verify', '-CAfile', 'root.pem', '-untrusted', vtpmCa.certPath, 'leaf.pem']);
  assert.match(`${chain.status} ${chain.stdout}${chain.stderr}`, /^0 .*OK/s);
  // Without the vTPM CA's certificate from the authority, the same leaf does not chain.
  const alone = run(['verify', '-CAfile', 'root.pem', 'leaf.pem']);
  assert.notEqual(alone.status, 0);
});
