/**
 * `vmseal attest policy create` on the real demo guest disk, raw and sealed: the policy lists
 * /bin/busybox with the digest the running guest's IMA measured, parses as a Keylime policy, and
 * accepts the guest's real measurement list; a sealed image gives the same digests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { evaluateRuntimePolicy, parseRuntimePolicy } from '../../src/authority/attest/runtime-policy.ts';
import { parseImaBinary } from '../../src/formats/ima.ts';
import { buildGuest } from '../../src/guest/build.ts';

const BIN = path.resolve('bin/vmseal.js');
const vmseal = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 600_000 });

test('policy create: raw and sealed guest images give the same Keylime policy, which accepts the guest IMA list', { timeout: 900_000 }, async (t) => {
  const guest = await buildGuest();
  const dir = mkdtempSync(path.join(tmpdir(), 'attest-policy-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const raw = path.join(dir, 'raw.json');
  let r = vmseal(['attest', 'policy', 'create', '--image', guest.disk, '--out', raw, '--all-files']);
  assert.equal(r.status, 0, r.stderr);
  const policy = parseRuntimePolicy(readFileSync(raw, 'utf8'));
  const list = parseImaBinary(readFileSync(new URL('../formats/ima-fixtures/guest-binary_runtime_measurements', import.meta.url)));
  const busybox = list.find((e) => e.path === '/bin/busybox');
  assert.deepEqual(policy.digests['/bin/busybox'], [busybox?.fileDigest.digest.toString('hex')]);
  const verdict = evaluateRuntimePolicy(list, policy, { bootAggregates: ['00'.repeat(32)] }); // no TPM in that boot
  assert.deepEqual(verdict.failures, []);
  assert.ok(policy.excludes.includes('/tmp/.*'));

  const execOnly = path.join(dir, 'exec.json');
  r = vmseal(['attest', 'policy', 'create', '--image', guest.disk, '--out', execOnly]);
  assert.equal(r.status, 0, r.stderr);
  const slim = parseRuntimePolicy(readFileSync(execOnly, 'utf8'));
  assert.ok(slim.digests['/bin/busybox']);
  assert.equal(slim.digests['/etc/passwd'], undefined, 'without --all-files only executables and libraries');

  const pass = path.join(dir, 'pass');
  writeFileSync(pass, 'policy test passphrase');
  const sealed = path.join(dir, 'sealed.img');
  r = vmseal(['image', 'seal', '--in', guest.disk, '--out', sealed, '--passphrase-file', pass, '--pbkdf', 'pbkdf2', '--no-integrity']);
  assert.equal(r.status, 0, r.stderr);
  const fromSealed = path.join(dir, 'sealed.json');
  r = vmseal(['attest', 'policy', 'create', '--image', sealed, '--passphrase-file', pass, '--out', fromSealed, '--all-files']);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(parseRuntimePolicy(readFileSync(fromSealed, 'utf8')).digests, policy.digests);
  writeFileSync(pass, 'wrong');
  r = vmseal(['attest', 'policy', 'create', '--image', sealed, '--passphrase-file', pass, '--out', fromSealed]);
  assert.notEqual(r.status, 0);
});
