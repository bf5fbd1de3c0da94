/** The tenant's state document: the pinned CA, validation, atomic locked updates, host verification. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueHostCertificate } from '../../src/authority/ca.ts';
import { caFingerprint, parseFingerprint } from '../../src/client/ca-fingerprint.ts';
import { HostCertificateError } from '../../src/client/host-cert.ts';
import {
  TENANT_STATE_FILE,
  TenantStateError,
  createTenantState,
  loadTenantState,
  updateTenantState,
  verifyHostForTenant,
} from '../../src/client/tenant-state.ts';
import { generateHpkeKeyPair } from '../../src/crypto/hpke.ts';

const AUTHORITY_URL = 'http://127.0.0.1:8470/';

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-tenant-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function expectCode(promise: Promise<unknown>, code: TenantStateError['code']): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof TenantStateError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

test('caFingerprint matches openssl, and parseFingerprint accepts the ways people write one', { timeout: 30_000 }, async (t) => {
  const ca = await createCa({ commonName: 'test CA' });
  const file = join(tempDir(t), 'ca.pem');
  writeFileSync(file, ca.certPem);
  const openssl = spawnSync('openssl', ['x509', '-noout', '-fingerprint', '-sha256', '-in', file], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(openssl.status, 0, openssl.stderr);
  const fp = caFingerprint(ca.certPem);
  assert.equal(`sha256 Fingerprint=${fp}`, openssl.stdout.trim());
  assert.equal(parseFingerprint(openssl.stdout), fp);
  assert.equal(parseFingerprint(fp.toLowerCase()), fp);
  assert.equal(parseFingerprint(fp.replace(/:/g, '')), fp);
  assert.equal(parseFingerprint(`sha256:${fp.replace(/:/g, ' ')}`), fp);
  for (const bad of ['', fp.slice(3), `${fp}:00`, fp.replace(/^../, 'ZZ'), 'sha1:00']) assert.throws(() => parseFingerprint(bad), /not a SHA-256 fingerprint/);
});

test('createTenantState pins a CA in a 0600 file in a 0700 dir and refuses to replace it', { timeout: 30_000 }, async (t) => {
  const dir = join(tempDir(t), 'tenant');
  const ca = await createCa({ commonName: 'test CA' });
  const state = await createTenantState(dir, { authorityUrl: AUTHORITY_URL, caCertificatePem: ca.certPem });
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, TENANT_STATE_FILE)).mode & 0o777, 0o600);
  assert.equal(state.authority.caFingerprint, caFingerprint(ca.certPem));
  assert.deepEqual(await loadTenantState(dir), state);
  assert.equal(JSON.parse(readFileSync(join(dir, TENANT_STATE_FILE), 'utf8')).version, 1);

  const other = await createCa({ commonName: 'other CA' });
  await expectCode(createTenantState(dir, { authorityUrl: AUTHORITY_URL, caCertificatePem: other.certPem }), 'EXISTS');
  assert.equal((await loadTenantState(dir)).authority.caCertificatePem, ca.certPem);
  await createTenantState(dir, { authorityUrl: AUTHORITY_URL, caCertificatePem: other.certPem, force: true });
  assert.equal((await loadTenantState(dir)).authority.caCertificatePem, other.certPem);
});

test('only a valid self-signed Ed25519 CA can be pinned', { timeout: 30_000 }, async (t) => {
  const base = tempDir(t);
  const ca = await createCa({ commonName: 'test CA' });
  const host = await issueHostCertificate(ca, { hostId: 'h', hpkePublicKey: (await generateHpkeKeyPair()).publicKey, validityDays: 30 });
  await expectCode(createTenantState(join(base, 'a'), { authorityUrl: AUTHORITY_URL, caCertificatePem: host }), 'BAD_CA');
  await expectCode(createTenantState(join(base, 'b'), { authorityUrl: AUTHORITY_URL, caCertificatePem: 'junk' }), 'BAD_CA');
  const future = new Date(Date.now() + 20 * 365 * 86_400_000);
  await expectCode(createTenantState(join(base, 'c'), { authorityUrl: AUTHORITY_URL, caCertificatePem: ca.certPem, now: future }), 'BAD_CA');
  assert.deepEqual(readdirSync(base), [], 'nothing was written');
});

test('loading refuses tampered, malformed or exposed state', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const ca = await createCa({ commonName: 'test CA' });
  const other = await createCa({ commonName: 'other CA' });
  await createTenantState(dir, { authorityUrl: AUTHORITY_URL, caCertificatePem: ca.certPem });
  const path = join(dir, TENANT_STATE_FILE);
  const good = JSON.parse(readFileSync(path, 'utf8'));
  const put = (doc: unknown): void => writeFileSync(path, typeof doc === 'string' ? doc : JSON.stringify(doc));

  put({ ...good, authority: { ...good.authority, caCertificatePem: other.certPem } }); // CA swapped, fingerprint kept
  await expectCode(loadTenantState(dir), 'CORRUPT');
  put({ ...good, version: 2 });
  await expectCode(loadTenantState(dir), 'CORRUPT');
  put({ ...good, extra: true });
  await expectCode(loadTenantState(dir), 'CORRUPT');
  put({ ...good, vms: { web: { vmId: 'zz', hostId: 'h', launchedAt: new Date().toISOString(), commandCounter: 0 } } });
  await expectCode(loadTenantState(dir), 'CORRUPT');
  put('{not json');
  await expectCode(loadTenantState(dir), 'CORRUPT');
  put(good);
  chmodSync(path, 0o644);
  await expectCode(loadTenantState(dir), 'INSECURE');
  chmodSync(path, 0o600);
  await expectCode(loadTenantState(join(dir, 'nope')), 'NO_STATE');
  assert.deepEqual(await loadTenantState(dir), good);
});

test('updateTenantState serialises concurrent updates and never writes an invalid document', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const ca = await createCa({ commonName: 'test CA' });
  await createTenantState(dir, { authorityUrl: AUTHORITY_URL, caCertificatePem: ca.certPem });
  await updateTenantState(dir, (s) => {
    s.vms['web'] = {
      vmId: '0123456789abcdef0123456789abcdef',
      hostId: 'host-a',
      launchedAt: new Date().toISOString(),
      commandCounter: 0,
      mgmtUrl: 'http://127.0.0.1:7000/',
      image: 'web',
      commandKey: Buffer.alloc(32, 1).toString('base64'),
      consoleKey: Buffer.alloc(32, 2).toString('base64'),
    };
  });
  // Twenty read-modify-writes at once: with the lock, none is lost.
  await Promise.all(
    Array.from({ length: 20 }, () =>
      updateTenantState(dir, async (s) => {
        const counter = s.vms['web']!.commandCounter;
        await new Promise((r) => setImmediate(r));
        s.vms['web']!.commandCounter = counter + 1;
      }),
    ),
  );
  assert.equal((await loadTenantState(dir)).vms['web']!.commandCounter, 20);

  const before = readFileSync(join(dir, TENANT_STATE_FILE), 'utf8');
  await expectCode(
    updateTenantState(dir, (s) => {
      s.vms['web']!.commandCounter = -1;
    }),
    'CORRUPT',
  );
  await assert.rejects(
    updateTenantState(dir, () => {
      throw new Error('mutator failed');
    }),
    /mutator failed/,
  );
  assert.equal(readFileSync(join(dir, TENANT_STATE_FILE), 'utf8'), before);
  assert.deepEqual(readdirSync(dir), [TENANT_STATE_FILE], 'no lock or temp file left behind');

  // A lock left by a process that died is broken.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8', timeout: 10_000 });
  writeFileSync(join(dir, 'tenant.lock'), `${dead.stdout}\n`);
  await updateTenantState(dir, (s) => {
    s.vms['web']!.commandCounter += 1;
  });
  assert.equal((await loadTenantState(dir)).vms['web']!.commandCounter, 21);
});

test('verifyHostForTenant accepts a host certificate from the pinned CA only', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const ca = await createCa({ commonName: 'provider CA' });
  const impostor = await createCa({ commonName: 'provider CA' }); // same name, different key
  await createTenantState(dir, { authorityUrl: AUTHORITY_URL, caCertificatePem: ca.certPem });
  const { publicKey } = await generateHpkeKeyPair();
  const genuine = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: publicKey, validityDays: 30 });
  const forged = await issueHostCertificate(impostor, { hostId: 'host-a', hpkePublicKey: publicKey, validityDays: 30 });

  const verified = await verifyHostForTenant(dir, genuine, 'host-a');
  assert.deepEqual(verified.hpkePublicKey, publicKey);
  assert.equal((await verifyHostForTenant(dir, genuine)).hostId, 'host-a');
  const code = (c: HostCertificateError['code']) => (err: unknown) => err instanceof HostCertificateError && err.code === c;
  await assert.rejects(verifyHostForTenant(dir, forged, 'host-a'), code('BAD_SIGNATURE'));
  await assert.rejects(verifyHostForTenant(dir, genuine, 'host-b'), code('HOST_MISMATCH'));
  await assert.rejects(verifyHostForTenant(dir, 'garbage'), code('MALFORMED'));
  await expectCode(verifyHostForTenant(join(dir, 'none'), genuine), 'NO_STATE');
});
