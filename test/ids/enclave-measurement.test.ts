import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { bundleProgram } from '../../src/ids/enclave/bundle.ts';
import { canonicalJson, enclaveMeasurement } from '../../src/ids/enclave/measurement.ts';

const config = { version: 1, checks: { pslist: {} }, profileSha256: 'ab'.repeat(32) };

test('same bundle and config give the same measurement; one changed byte changes it', () => {
  const bundle = Buffer.from('console.log("enclave")\n');
  const m = enclaveMeasurement(bundle, config);
  assert.match(m, /^[0-9a-f]{64}$/);
  assert.equal(enclaveMeasurement(Buffer.from(bundle), { profileSha256: config.profileSha256, checks: { pslist: {} }, version: 1 }), m, 'key order does not matter');
  const flipped = Buffer.from(bundle);
  flipped[3] = (flipped[3] ?? 0) ^ 1;
  assert.notEqual(enclaveMeasurement(flipped, config), m);
  assert.notEqual(enclaveMeasurement(bundle, { ...config, profileSha256: `ac${'ab'.repeat(31)}` }), m);
  assert.notEqual(enclaveMeasurement(bundle, { ...config, checks: {} }), m);
  // Length prefixes: moving a byte from the bundle into the config is a different input.
  assert.notEqual(enclaveMeasurement(Buffer.from('ab'), 'c'), enclaveMeasurement(Buffer.from('a'), 'bc'));
});

test('canonical JSON sorts keys, drops whitespace and refuses non-integers', () => {
  assert.equal(canonicalJson({ b: [1, { d: null, c: 'x' }], a: true }), '{"a":true,"b":[1,{"c":"x","d":null}]}');
  assert.throws(() => canonicalJson({ a: 1.5 }), /safe integers/);
});

test('the enclave bundle is deterministic and cached by its sources', async () => {
  const dirs = [await mkdtemp(join(tmpdir(), 'vmseal-bundle-')), await mkdtemp(join(tmpdir(), 'vmseal-bundle-'))];
  try {
    const a = await bundleProgram({ cacheDir: dirs[0] });
    const b = await bundleProgram({ cacheDir: dirs[1] });
    assert.equal(a.sha256, b.sha256, 'two independent builds give the same bytes');
    assert.ok(a.bytes.length > 10_000);
    const again = await bundleProgram({ cacheDir: dirs[0] });
    assert.equal(again.path, a.path);
    assert.equal(again.sha256, a.sha256);
  } finally {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
});
