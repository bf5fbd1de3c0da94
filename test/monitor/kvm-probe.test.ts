import { test } from 'node:test';
import assert from 'node:assert/strict';
import { probeAccelerator, probeKvm, resolveAccel, type AccelProbe } from '../../src/monitor/vm/kvm-probe.ts';

test('probeKvm answers with a boolean and a reason, once per process', { timeout: 30_000 }, async () => {
  const first = await probeKvm();
  assert.equal(typeof first.usable, 'boolean');
  assert.ok(first.reason.length > 0);
  assert.match(first.reason, first.usable ? /kvm executed the probe guest/ : /kvm|KVM/);
  assert.equal(await probeKvm(), first); // cached: the same object, no second QEMU run
});

test('the probe firmware really runs to the expected exit status (checked under TCG)', { timeout: 30_000 }, async () => {
  assert.deepEqual(await probeAccelerator('tcg'), {
    usable: true,
    reason: 'tcg executed the probe guest (isa-debug-exit status 133)',
  });
});

test('a probe that does not finish in time reports unusable instead of hanging', { timeout: 30_000 }, async () => {
  const result = await probeAccelerator('tcg', 1);
  assert.equal(result.usable, false);
  assert.match(result.reason, /did not finish within 1 ms/);
});

test('resolveAccel: TCG by default, KVM only when asked for and usable, auto falls back with a warning', { timeout: 10_000 }, async () => {
  const unusable = async (): Promise<AccelProbe> => ({ usable: false, reason: 'fake: vCPU never ran' });
  const usable = async (): Promise<AccelProbe> => ({ usable: true, reason: 'fake: fine' });
  const mustNotProbe = async (): Promise<AccelProbe> => assert.fail('TCG must not probe KVM');

  assert.deepEqual(await resolveAccel('tcg', mustNotProbe), { accel: 'tcg' });
  assert.deepEqual(await resolveAccel('kvm', usable), { accel: 'kvm' });
  assert.deepEqual(await resolveAccel('auto', usable), { accel: 'kvm' });
  await assert.rejects(resolveAccel('kvm', unusable), /^Error: KVM was requested but is not usable on this host: fake: vCPU never ran$/);
  assert.deepEqual(await resolveAccel('auto', unusable), {
    accel: 'tcg',
    warning: 'KVM is not usable, falling back to TCG: fake: vCPU never ran',
  });
});
