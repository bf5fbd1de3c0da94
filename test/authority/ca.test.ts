import 'reflect-metadata';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import {
  CaError,
  VMSEAL_HOST_HPKE_KEY_OID,
  createCa,
  issueHostCertificate,
  type CaMaterial,
} from '../../src/authority/ca.ts';
import { HostCertificateError, verifyHostCertificate } from '../../src/client/host-cert.ts';
import { generateHpkeKeyPair } from '../../src/crypto/hpke.ts';

const DAY = 86_400_000;

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-ca-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function openssl(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 10_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** `openssl verify -CAfile ca.pem host.pem`, the independent judge of the chain. */
function opensslVerify(dir: string, caPem: string, hostPem: string): { status: number | null; out: string } {
  const ca = join(dir, `ca-${randomBytes(4).toString('hex')}.pem`);
  const host = join(dir, `host-${randomBytes(4).toString('hex')}.pem`);
  writeFileSync(ca, caPem);
  writeFileSync(host, hostPem);
  return openssl(['verify', '-CAfile', ca, host]);
}

function expectCode(fn: () => unknown, code: HostCertificateError['code']): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof HostCertificateError, `expected HostCertificateError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

async function caSigningKey(ca: CaMaterial): Promise<CryptoKey> {
  const pkcs8 = createPrivateKey(ca.privateKeyPem).export({ format: 'der', type: 'pkcs8' });
  return webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
}

/** A certificate signed by the CA's key outside issueHostCertificate, to build profile violations. */
async function craftCertificate(
  ca: CaMaterial,
  publicKey: CryptoKey,
  opts: { extensions?: x509.Extension[]; notBefore?: Date; notAfter?: Date; subject?: string } = {},
): Promise<string> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const cert = await x509.X509CertificateGenerator.create({
    subject: opts.subject ?? 'CN=host-a',
    issuer: caCert.subjectName,
    publicKey,
    signingKey: await caSigningKey(ca),
    signingAlgorithm: { name: 'Ed25519' },
    notBefore: opts.notBefore ?? new Date(Date.now() - DAY),
    notAfter: opts.notAfter ?? new Date(Date.now() + 30 * DAY),
    extensions: opts.extensions ?? [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([VMSEAL_HOST_HPKE_KEY_OID]),
    ],
  });
  return cert.toString('pem');
}

async function x25519CryptoKey(raw: Buffer): Promise<CryptoKey> {
  return webcrypto.subtle.importKey('raw', raw, { name: 'X25519' }, true, []);
}

test('createCa makes a self-signed Ed25519 CA that OpenSSL reads as such', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const path = join(dir, 'ca.pem');
  writeFileSync(path, ca.certPem);
  const text = openssl(['x509', '-in', path, '-noout', '-text']);
  assert.equal(text.status, 0, text.out);
  assert.match(text.out, /Signature Algorithm: ED25519/);
  assert.match(text.out, /Public Key Algorithm: ED25519/);
  assert.match(text.out, /Issuer: CN = vmseal provider CA/);
  assert.match(text.out, /Basic Constraints: critical\s+CA:TRUE, pathlen:1/);
  assert.match(text.out, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
  // A self-signed root verifies against itself.
  assert.equal(openssl(['verify', '-CAfile', path, path]).status, 0);
  const years = (new x509.X509Certificate(ca.certPem).notAfter.getTime() - Date.now()) / (365 * DAY);
  assert.ok(years > 9.9 && years < 10.1, `validity ${years} years`);
  assert.equal(createPrivateKey(ca.privateKeyPem).asymmetricKeyType, 'ed25519');
});

test('a host certificate passes openssl verify, carries the X25519 key, and verifies for the client', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const host = await generateHpkeKeyPair();
  const certPem = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 90 });

  const verdict = opensslVerify(dir, ca.certPem, certPem);
  assert.equal(verdict.status, 0, verdict.out);
  assert.match(verdict.out, /: OK/);

  const hostPath = join(dir, 'host.pem');
  writeFileSync(hostPath, certPem);
  const text = openssl(['x509', '-in', hostPath, '-noout', '-text']);
  assert.equal(text.status, 0, text.out);
  assert.match(text.out, /Signature Algorithm: ED25519/);
  assert.match(text.out, /Public Key Algorithm: X25519/);
  assert.match(text.out, /Subject: CN = host-a/);
  assert.match(text.out, /Key Usage: critical\s+Key Agreement\n/);
  assert.ok(text.out.includes(VMSEAL_HOST_HPKE_KEY_OID));
  const pub = /pub:\s*\n([\s0-9a-f:]+)/.exec(text.out)?.[1]?.replace(/[\s:]/g, '');
  assert.equal(pub, host.publicKey.toString('hex'));

  const verified = verifyHostCertificate(certPem, ca.certPem, { expectedHostId: 'host-a' });
  assert.equal(verified.hostId, 'host-a');
  assert.deepEqual(verified.hpkePublicKey, host.publicKey);
  assert.ok(Math.abs(verified.notAfter.getTime() - (Date.now() + 90 * DAY)) < 60_000);
  assert.match(verified.serialNumber, /^[0-9a-f]{32}$/);
  expectCode(() => verifyHostCertificate(certPem, ca.certPem, { expectedHostId: 'host-b' }), 'HOST_MISMATCH');
  const other = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 90 });
  assert.notEqual(new x509.X509Certificate(other).serialNumber, verified.serialNumber, 'serials are random');
});

test('a certificate from another CA is rejected, even one with the same name', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const pinned = await createCa({ commonName: 'vmseal provider CA' });
  const impostor = await createCa({ commonName: 'vmseal provider CA' });
  const foreign = await createCa({ commonName: 'someone else' });
  const host = await generateHpkeKeyPair();
  for (const ca of [impostor, foreign]) {
    const certPem = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 30 });
    assert.equal(opensslVerify(dir, ca.certPem, certPem).status, 0, 'valid under its own CA');
    assert.notEqual(opensslVerify(dir, pinned.certPem, certPem).status, 0, 'openssl rejects it under the pinned CA');
    expectCode(() => verifyHostCertificate(certPem, pinned.certPem), 'BAD_SIGNATURE');
  }
});

test('expired and not-yet-valid certificates are rejected', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const longAgo = new Date(Date.now() - 400 * DAY);
  const ca = await createCa({ commonName: 'vmseal provider CA', now: longAgo });
  const host = await generateHpkeKeyPair();
  const expired = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 30, now: longAgo });
  const v = opensslVerify(dir, ca.certPem, expired);
  assert.notEqual(v.status, 0);
  assert.match(v.out, /expired/);
  expectCode(() => verifyHostCertificate(expired, ca.certPem), 'EXPIRED');
  // Still accepted at a time inside its validity, so only the date made the difference.
  assert.equal(verifyHostCertificate(expired, ca.certPem, { now: new Date(longAgo.getTime() + DAY) }).hostId, 'host-a');

  const fresh = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 30 });
  expectCode(() => verifyHostCertificate(fresh, ca.certPem, { now: new Date(Date.now() + 31 * DAY) }), 'EXPIRED');
  expectCode(() => verifyHostCertificate(fresh, ca.certPem, { now: new Date(Date.now() - DAY) }), 'NOT_YET_VALID');
  const future = await craftCertificate(ca, await x25519CryptoKey(host.publicKey), { notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 10 * DAY) });
  expectCode(() => verifyHostCertificate(future, ca.certPem), 'NOT_YET_VALID');
});

test('flipping a byte inside the signed part (key or name) breaks the certificate', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const host = await generateHpkeKeyPair();
  const certPem = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 30 });
  const der = Buffer.from(new x509.X509Certificate(certPem).rawData);
  const keyAt = der.indexOf(host.publicKey);
  const nameAt = der.indexOf(Buffer.from('host-a'));
  assert.ok(keyAt > 0 && nameAt > 0);
  for (const [at, flip] of [[keyAt + 5, 0x01], [nameAt + 5, 0x03]] as const) {
    const tampered = Buffer.from(der);
    tampered[at]! ^= flip;
    const pem = new x509.X509Certificate(tampered).toString('pem');
    assert.notEqual(opensslVerify(dir, ca.certPem, pem).status, 0, 'openssl rejects the tampered certificate');
    expectCode(() => verifyHostCertificate(pem, ca.certPem), 'BAD_SIGNATURE');
  }
});

test('a CA-signed certificate for an Ed25519 key is not an HPKE host key', { timeout: 60_000 }, async () => {
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const ed = (await webcrypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const certPem = await craftCertificate(ca, ed.publicKey);
  expectCode(() => verifyHostCertificate(certPem, ca.certPem), 'WRONG_KEY');
});

test('a pinned root that is not a CA is refused', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const keys = (await webcrypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const notCa = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=not a CA',
    keys,
    signingAlgorithm: { name: 'Ed25519' },
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 365 * DAY),
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const fakeCa: CaMaterial = {
    certPem: notCa.toString('pem'),
    privateKeyPem: createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString(),
  };
  const host = await generateHpkeKeyPair();
  await assert.rejects(issueHostCertificate(fakeCa, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 30 }), /CA flag/);
  const certPem = await craftCertificate(fakeCa, await x25519CryptoKey(host.publicKey));
  assert.notEqual(opensslVerify(dir, fakeCa.certPem, certPem).status, 0, 'openssl rejects a chain to a non-CA');
  expectCode(() => verifyHostCertificate(certPem, fakeCa.certPem), 'BAD_ROOT');
});

test('certificates for another purpose are rejected: no EKU, signing usage, or the CA itself', { timeout: 60_000 }, async () => {
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const key = await x25519CryptoKey((await generateHpkeKeyPair()).publicKey);
  const noEku = await craftCertificate(ca, key, { extensions: [new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyAgreement, true)] });
  expectCode(() => verifyHostCertificate(noEku, ca.certPem), 'WRONG_PURPOSE');
  const noKeyUsage = await craftCertificate(ca, key, { extensions: [new x509.ExtendedKeyUsageExtension([VMSEAL_HOST_HPKE_KEY_OID])] });
  expectCode(() => verifyHostCertificate(noKeyUsage, ca.certPem), 'WRONG_PURPOSE');
  const signing = await craftCertificate(ca, key, {
    extensions: [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyAgreement | x509.KeyUsageFlags.keyCertSign, true),
      new x509.ExtendedKeyUsageExtension([VMSEAL_HOST_HPKE_KEY_OID]),
    ],
  });
  expectCode(() => verifyHostCertificate(signing, ca.certPem), 'WRONG_PURPOSE');
  // The root is signed by itself, so only the purpose checks keep it from passing as a host.
  expectCode(() => verifyHostCertificate(ca.certPem, ca.certPem), 'WRONG_PURPOSE');
  const badSubject = await craftCertificate(ca, key, { subject: 'CN=host-a, O=extra' });
  expectCode(() => verifyHostCertificate(badSubject, ca.certPem), 'MALFORMED');
});

test('malformed input is rejected without trusting any of it', { timeout: 60_000 }, async () => {
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const host = await generateHpkeKeyPair();
  const certPem = await issueHostCertificate(ca, { hostId: 'host-a', hpkePublicKey: host.publicKey, validityDays: 30 });
  expectCode(() => verifyHostCertificate(certPem + ca.certPem, ca.certPem), 'MALFORMED'); // a chain is not accepted
  expectCode(() => verifyHostCertificate('', ca.certPem), 'MALFORMED');
  expectCode(() => verifyHostCertificate('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', ca.certPem), 'MALFORMED');
  expectCode(() => verifyHostCertificate('x'.repeat(100_000), ca.certPem), 'MALFORMED');
  const der = Buffer.from(new x509.X509Certificate(certPem).rawData);
  const trailing = `-----BEGIN CERTIFICATE-----\n${Buffer.concat([der, Buffer.of(0)]).toString('base64')}\n-----END CERTIFICATE-----\n`;
  expectCode(() => verifyHostCertificate(trailing, ca.certPem), 'MALFORMED');
  expectCode(() => verifyHostCertificate(certPem, 'not a certificate'), 'BAD_ROOT');
  expectCode(() => verifyHostCertificate(certPem, certPem), 'BAD_ROOT');
});

test('issueHostCertificate refuses bad requests and mismatched CA material', { timeout: 60_000 }, async () => {
  const ca = await createCa({ commonName: 'vmseal provider CA' });
  const other = await createCa({ commonName: 'vmseal provider CA' });
  const { publicKey } = await generateHpkeKeyPair();
  const ok = { hostId: 'host-a', hpkePublicKey: publicKey, validityDays: 30 };
  for (const hostId of ['', 'a,b=c', 'CN=x', 'host a', '-lead', 'x'.repeat(65), 'h\u0000']) {
    await assert.rejects(issueHostCertificate(ca, { ...ok, hostId }), CaError, hostId);
  }
  for (const hpkePublicKey of [Buffer.alloc(31), Buffer.alloc(33)]) await assert.rejects(issueHostCertificate(ca, { ...ok, hpkePublicKey }), CaError);
  for (const validityDays of [0, -1, 1.5, 826]) await assert.rejects(issueHostCertificate(ca, { ...ok, validityDays }), CaError);
  await assert.rejects(issueHostCertificate({ certPem: ca.certPem, privateKeyPem: other.privateKeyPem }, ok), /does not match/);
  await assert.rejects(issueHostCertificate({ certPem: 'junk', privateKeyPem: ca.privateKeyPem }, ok), CaError);
  const shortCa = await createCa({ commonName: 'short', validityDays: 10 });
  await assert.rejects(issueHostCertificate(shortCa, ok), /outlive/);
  await assert.rejects(createCa({ commonName: '' }), CaError);
  await assert.rejects(createCa({ commonName: 'bad\nname' }), CaError);
});
