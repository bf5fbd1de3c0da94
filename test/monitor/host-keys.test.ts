/** The host's HPKE key pair on disk: permissions, an OpenSSL-readable key, and refusal of mixed-up files. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueHostCertificate } from '../../src/authority/ca.ts';
import { generateHpkeKeyPair, openCompact, sealToCompact } from '../../src/crypto/hpke.ts';
import {
  HOST_CERTIFICATE_FILE,
  HOST_INFO_FILE,
  HOST_PRIVATE_KEY_FILE,
  HostKeysError,
  initHostKeys,
  loadHostKeys,
  saveHostCertificate,
} from '../../src/monitor/state/host-keys.ts';

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-hostkeys-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

async function expectCode(promise: Promise<unknown>, code: HostKeysError['code']): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof HostKeysError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

test('initHostKeys writes a 0600 X25519 key in a 0700 dir that OpenSSL reads and HPKE uses', { timeout: 30_000 }, async (t) => {
  const dir = join(tempDir(t), 'monitor', 'state');
  const keys = await initHostKeys(dir, 'host-a');
  assert.equal(mode(dir), 0o700);
  assert.equal(mode(join(dir, HOST_PRIVATE_KEY_FILE)), 0o600);
  assert.equal(mode(join(dir, HOST_INFO_FILE)), 0o600);

  // OpenSSL derives the same public key from the stored private key (the last 32 bytes of the SPKI DER).
  const spki = spawnSync('openssl', ['pkey', '-in', join(dir, HOST_PRIVATE_KEY_FILE), '-pubout', '-outform', 'DER'], { timeout: 10_000 });
  assert.equal(spki.status, 0, spki.stderr.toString());
  assert.deepEqual(spki.stdout.subarray(-32), keys.publicKey);

  const loaded = await loadHostKeys(dir);
  assert.equal(loaded.hostId, 'host-a');
  assert.deepEqual(loaded.publicKey, keys.publicKey);
  assert.deepEqual(loaded.privateKey, keys.privateKey);
  assert.equal(loaded.certificatePem, undefined);
  const info = { info: new TextEncoder().encode('test') };
  const sealed = await sealToCompact(loaded.publicKey, Buffer.from('bundle'), info);
  assert.equal((await openCompact(loaded.privateKey, sealed, info)).toString(), 'bundle');

  await expectCode(initHostKeys(dir, 'host-a'), 'EXISTS');
  const replaced = await initHostKeys(dir, 'host-a', { force: true });
  assert.notDeepEqual(replaced.publicKey, keys.publicKey);
  await assert.rejects(initHostKeys(join(dir, 'x'), 'not a host id'), /host id/);
});

test('a certificate is stored only for the host\'s own key, and loading checks every file against the key', { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const keys = await initHostKeys(dir, 'host-a');
  const ca = await createCa({ commonName: 'test CA' });
  const other = await generateHpkeKeyPair();
  const foreign = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: other.publicKey, validityDays: 30 });
  await expectCode(saveHostCertificate(dir, foreign), 'MISMATCH');
  await expectCode(saveHostCertificate(dir, 'not a certificate'), 'CORRUPT');
  await expectCode(saveHostCertificate(dir, ca.certPem), 'MISMATCH');

  const own = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: keys.publicKey, validityDays: 30 });
  await saveHostCertificate(dir, own);
  assert.equal(mode(join(dir, HOST_CERTIFICATE_FILE)), 0o600);
  assert.equal((await loadHostKeys(dir)).certificatePem, own);

  // A certificate file swapped underneath is refused at load.
  writeFileSync(join(dir, HOST_CERTIFICATE_FILE), foreign);
  await expectCode(loadHostKeys(dir), 'MISMATCH');
  writeFileSync(join(dir, HOST_CERTIFICATE_FILE), own);

  // host.json naming another key.
  const infoPath = join(dir, HOST_INFO_FILE);
  const info = JSON.parse(readFileSync(infoPath, 'utf8'));
  writeFileSync(infoPath, JSON.stringify({ ...info, hpkePublicKey: other.publicKey.toString('base64') }));
  await expectCode(loadHostKeys(dir), 'MISMATCH');
  writeFileSync(infoPath, JSON.stringify({ ...info, extra: 1 }));
  await expectCode(loadHostKeys(dir), 'CORRUPT');
  writeFileSync(infoPath, JSON.stringify(info));
  assert.equal((await loadHostKeys(dir)).hostId, 'host-a');

  // An Ed25519 key where the X25519 key should be.
  const keyPath = join(dir, HOST_PRIVATE_KEY_FILE);
  const original = readFileSync(keyPath);
  writeFileSync(keyPath, ca.privateKeyPem, { mode: 0o600 });
  await expectCode(loadHostKeys(dir), 'CORRUPT');
  writeFileSync(keyPath, original);

  chmodSync(keyPath, 0o644);
  await expectCode(loadHostKeys(dir), 'INSECURE');
  chmodSync(keyPath, 0o600);
  chmodSync(dir, 0o755);
  await expectCode(loadHostKeys(dir), 'INSECURE');
  chmodSync(dir, 0o700);
  await expectCode(loadHostKeys(join(dir, 'missing')), 'NO_KEYS');
  assert.equal((await loadHostKeys(dir)).certificatePem, own);
});
