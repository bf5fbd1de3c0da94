/**
 * The enclave's check registry: settings come from the measured configuration and are validated
 * there (a bad one fails init, before any scan); every check of src/ids/checks is available.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CHECK_NAMES } from '../../src/ids/checks/index.ts';
import { CheckError, parseEnabledChecks } from '../../src/ids/enclave/check-registry.ts';
import { parseEnclaveConfig } from '../../src/ids/enclave/loader.ts';

test('every check of the registry can be enabled with its settings', () => {
  const all = Object.fromEntries(CHECK_NAMES.map((n) => [n, {}])) as Record<string, Record<string, unknown>>;
  all.allowlist = { comms: ['init', 'sh'], exes: ['/bin/busybox'] };
  all['syscall-hooks'] = { entries: 451 };
  const enabled = parseEnabledChecks(all);
  assert.deepEqual([...enabled.keys()], CHECK_NAMES);
  assert.deepEqual(enabled.get('allowlist'), { allowlist: { comms: ['init', 'sh'], exes: ['/bin/busybox'] } });
  assert.deepEqual(enabled.get('syscall-hooks'), { 'syscall-hooks': { entries: 451 } });
});

test('unknown checks and bad settings are refused, naming the check', () => {
  assert.throws(() => parseEnabledChecks({ 'no-such-check': {} }), (e: unknown) => e instanceof CheckError && /unknown check: no-such-check/.test(e.message));
  assert.throws(() => parseEnabledChecks({ allowlist: {} }), /settings of check allowlist: comms/);
  assert.throws(() => parseEnabledChecks({ allowlist: { comms: ['a-name-longer-than-15'] } }), /settings of check allowlist: comms\.0/);
  assert.throws(() => parseEnabledChecks({ 'syscall-hooks': { entries: 0 } }), /settings of check syscall-hooks: entries/);
  assert.throws(() => parseEnabledChecks({ 'syscall-hooks': { entries: 1 << 30 } }), /settings of check syscall-hooks: entries/);
  assert.throws(() => parseEnabledChecks({ pslist: { extra: true } }), /settings of check pslist/);
  // The loader refuses such a configuration before measuring it.
  const config = {
    version: 1,
    authorityCaCert: 'x',
    authorityHpkePublicKey: Buffer.alloc(32).toString('base64'),
    authorityKeySignature: Buffer.alloc(64).toString('base64'),
    profileSha256: '00'.repeat(32),
    checks: { allowlist: { comms: 'sh' } },
  };
  assert.throws(() => parseEnclaveConfig(config), /settings of check allowlist/);
});
