/**
 * Keylime runtime policies: hand-written policies in Keylime's documented JSON format, evaluated
 * against the demo guest's real IMA list and against entries signed by evmctl (ima-evm-utils, the
 * tool that writes security.ima signatures), with Keylime's rules for excludes, boot_aggregate,
 * ima-sig keys and ima-buf keyrings.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { imaTemplateHash, parseImaAscii, type ImaEntry } from '../../src/formats/ima.ts';
import {
  compileExcludes, emptyRuntimePolicy, evaluateRuntimePolicy, parseRuntimePolicy, RuntimePolicyError,
} from '../../src/authority/attest/runtime-policy.ts';

const fixtures = new URL('./runtime-policy-fixtures/', import.meta.url);
const guestList = parseImaAscii(readFileSync(new URL('../formats/ima-fixtures/guest-ascii_runtime_measurements', import.meta.url), 'utf8'));
const policy = () => parseRuntimePolicy(readFileSync(new URL('keylime-policy.json', fixtures), 'utf8'));

/** An entry as the kernel would log it, with a correct template hash. */
function entry(line: string): ImaEntry {
  const [e] = parseImaAscii(`10 ${'11'.repeat(20)} ${line}`);
  assert.ok(e);
  return { ...e, templateHash: imaTemplateHash(e, 'sha1'), violation: false };
}

test('Keylime-format policies parse (full and empty)', () => {
  const p = policy();
  assert.equal(p.meta.version, 1);
  assert.deepEqual(p.ima.ignored_keyrings, ['.builtin_trusted_keys']);
  const empty = parseRuntimePolicy(readFileSync(new URL('keylime-empty-policy.json', fixtures), 'utf8'));
  assert.deepEqual(empty, { ...emptyRuntimePolicy(), meta: { version: 1, generator: 1 } });
});

test('the guest list against the policy: excluded paths skipped, the one wrong digest named with path and digest', () => {
  const r = evaluateRuntimePolicy(guestList, policy());
  assert.equal(r.ok, false);
  assert.equal(r.excluded, 2, '/etc/init.d/rcS and /var/spool/cron/crontabs/root');
  assert.equal(r.failures.length, 1);
  const [f] = r.failures;
  assert.equal(f?.reason, 'runtime_policy_hash');
  assert.equal(f?.path, '/etc/profile');
  assert.equal(f?.digest, 'sha256:c2f962531998d47e918569cd030c3106cb02fbc0a54946b65c021ba3c241294e');
  assert.match(f?.message ?? '', /\/etc\/profile.*c2f96253/);
});

test('an unknown program fails as not_in_allowlist; a program whose digest is listed passes', () => {
  const p = policy();
  p.digests['/etc/profile'] = ['c2f962531998d47e918569cd030c3106cb02fbc0a54946b65c021ba3c241294e'];
  assert.equal(evaluateRuntimePolicy(guestList, p).ok, true);
  const evil = entry(`ima-sig sha256:${'ab'.repeat(32)} /root/evil `);
  const r = evaluateRuntimePolicy([...guestList, evil], p);
  assert.deepEqual(r.failures.map((f) => [f.reason, f.path, f.digest]), [['not_in_allowlist', '/root/evil', `sha256:${'ab'.repeat(32)}`]]);
});

test('a tampered entry (template hash no longer matches) fails as ima_hash', () => {
  const tampered = parseImaAscii(readFileSync(new URL('../formats/ima-fixtures/guest-ascii_runtime_measurements', import.meta.url), 'utf8')
    .replace('sha256:c2f962531998d47e918569cd030c3106cb02fbc0a54946b65c021ba3c241294e', `sha256:${'00'.repeat(31)}02`));
  const r = evaluateRuntimePolicy(tampered, policy());
  assert.deepEqual(r.failures.map((f) => [f.reason, f.path]), [['ima_hash', '/etc/profile']]);
});

test('boot_aggregate: the verifier-computed values are accepted, a foreign value is not', () => {
  const p = policy();
  delete p.digests['boot_aggregate'];
  p.digests['/etc/profile'] = ['c2f962531998d47e918569cd030c3106cb02fbc0a54946b65c021ba3c241294e'];
  assert.deepEqual(evaluateRuntimePolicy(guestList, p).failures.map((f) => f.path), ['boot_aggregate']);
  assert.equal(evaluateRuntimePolicy(guestList, p, { bootAggregates: ['00'.repeat(32)] }).ok, true);
  assert.deepEqual(evaluateRuntimePolicy(guestList, p, { bootAggregates: ['ff'.repeat(32)] }).failures.map((f) => f.reason), ['runtime_policy_hash']);
});

test('excludes behave as Python re.match on the joined regex: anchored at the start, not at the end', () => {
  const re = compileExcludes(['/bin', 'usr/sbin/.*', '(?P<d>/opt)/x(?P=d)']);
  assert.ok(re);
  assert.ok(re.test('/bin/busybox'));
  assert.ok(!re.test('/usr/sbin/vmseal-sensord'), 'not anchored at a later position');
  assert.ok(re.test('/opt/x/opt'));
  assert.throws(() => compileExcludes(['(unclosed']), RuntimePolicyError);
  assert.throws(() => parseRuntimePolicy({ ...emptyRuntimePolicy(), excludes: ['[z-a]'] }), /invalid exclude regex/);
});

test('ima-sig: an evmctl RSA signature verifies with verification-keys; a bad one falls back to the digest list', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'imasig-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const key = join(dir, 'k.pem');
  execFileSync('openssl', ['genrsa', '-out', key, '2048'], { stdio: 'ignore' });
  const file = join(dir, 'prog');
  writeFileSync(file, 'signed program\n');
  execFileSync('evmctl', ['ima_sign', '--xattr-user', '--key', key, '-a', 'sha256', file], { stdio: 'ignore' });
  const xattr = execFileSync('getfattr', ['--only-values', '-n', 'user.ima', file]);
  const digest = createHash('sha256').update(readFileSync(file)).digest('hex');
  const spki = createPublicKey(readFileSync(key)).export({ type: 'spki', format: 'der' }).toString('base64');
  const p = emptyRuntimePolicy();
  p['verification-keys'] = JSON.stringify({ tenant: JSON.stringify({ pubkeys: [spki] }) });
  const good = entry(`ima-sig sha256:${digest} /usr/bin/prog ${xattr.toString('hex')}`);
  const r = evaluateRuntimePolicy([good], parseRuntimePolicy(p));
  assert.deepEqual(r.failures, []);
  assert.equal(r.signatureAccepted, 1);

  const forged = Buffer.from(xattr);
  forged.writeUInt8((forged.at(-1) ?? 0) ^ 1, forged.length - 1);
  const bad = entry(`ima-sig sha256:${digest} /usr/bin/prog ${forged.toString('hex')}`);
  assert.deepEqual(evaluateRuntimePolicy([bad], parseRuntimePolicy(p)).failures.map((f) => f.reason), ['not_in_allowlist']);
  p.digests['/usr/bin/prog'] = [digest];
  assert.equal(evaluateRuntimePolicy([bad], parseRuntimePolicy(p)).ok, true, 'the digest list still accepts it');
  const otherFile = entry(`ima-sig sha256:${'cd'.repeat(32)} /usr/bin/prog ${xattr.toString('hex')}`);
  assert.equal(evaluateRuntimePolicy([otherFile], parseRuntimePolicy({ ...p, digests: {} })).ok, false, 'the signature covers another digest');
});

test('ima-buf: a keyring key is checked against keyrings and then verifies ima-sig; other buffers against ima-buf', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'imabuf-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const key = join(dir, 'k.pem');
  const cert = join(dir, 'c.der');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-outform', 'DER', '-out', cert, '-subj', '/CN=ima', '-days', '2'], { stdio: 'ignore' });
  const der = readFileSync(cert);
  const file = join(dir, 'prog');
  writeFileSync(file, 'another program\n');
  execFileSync('evmctl', ['ima_sign', '--xattr-user', '--key', key, '-a', 'sha256', file], { stdio: 'ignore' });
  const sig = execFileSync('getfattr', ['--only-values', '-n', 'user.ima', file]).toString('hex');
  const fd = createHash('sha256').update(readFileSync(file)).digest('hex');
  const keyEntry = entry(`ima-buf sha256:${createHash('sha256').update(der).digest('hex')} .ima ${der.toString('hex')}`);
  const sigEntry = entry(`ima-sig sha256:${fd} /usr/bin/other ${sig}`);
  const p = emptyRuntimePolicy();
  p.keyrings['.ima'] = [createHash('sha256').update(der).digest('hex')];
  assert.deepEqual(evaluateRuntimePolicy([keyEntry, sigEntry], p).failures, []);
  // The key is learned only after it validated: an unlisted key fails and signs nothing.
  const q = emptyRuntimePolicy();
  assert.deepEqual(evaluateRuntimePolicy([keyEntry, sigEntry], q).failures.map((f) => [f.reason, f.path]), [['not_in_allowlist', '.ima'], ['not_in_allowlist', '/usr/bin/other']]);
  q.ima.ignored_keyrings = ['.ima'];
  assert.deepEqual(evaluateRuntimePolicy([keyEntry], q).failures, [], 'an ignored keyring is not checked');
  const buf = Buffer.from('6.1.0-56-cloud-amd64');
  const versionEntry = entry(`ima-buf sha256:${createHash('sha256').update(buf).digest('hex')} kernel_version ${buf.toString('hex')}`);
  const r = evaluateRuntimePolicy([versionEntry], policy());
  assert.deepEqual(r.failures.map((f) => f.reason), ['runtime_policy_hash'], 'checked against ima-buf, whose listed value is the hex of the buffer, not its digest');
});

test('hostile policies are refused with a clear error', () => {
  assert.throws(() => parseRuntimePolicy('{'), /not valid JSON/);
  assert.throws(() => parseRuntimePolicy({ meta: { version: 1 } }), RuntimePolicyError);
  assert.throws(() => parseRuntimePolicy({ ...emptyRuntimePolicy(), meta: { version: 2 } }), /newer/);
  assert.throws(() => parseRuntimePolicy({ ...emptyRuntimePolicy(), digests: { '/x': 'abc' } }), RuntimePolicyError);
  assert.throws(() => parseRuntimePolicy({ ...emptyRuntimePolicy(), 'verification-keys': '{"r": "{\\"pubkeys\\": [\\"AAAA\\"]}"}' }), /not a DER public key/);
});
