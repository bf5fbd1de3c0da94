// Measured-launch and IMA checks on their own (no TPM): references against a log, lists against PCR 10,
// boot_aggregate against PCRs 0-9, and the runtime policy naming the first offending path and digest.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { TPM_ALG, extendPcr, type PcrValues } from '../../src/formats/tpm2/index.ts';
import { encodeEventLog, measuredLaunchLog, replay, type LaunchMeasurements } from '../../src/formats/tcg-eventlog.ts';
import { computeBootAggregate, parseImaBinary, replayImaLog } from '../../src/formats/ima.ts';
import { checkLaunch } from '../../src/authority/attest/launch-check.ts';
import { checkIma } from '../../src/authority/attest/ima-check.ts';
import { emptyRuntimePolicy } from '../../src/authority/attest/runtime-policy.ts';
import { imaNgEntry, sha256 } from './attest-fixtures.ts';

const S = TPM_ALG.SHA256;
const kernel = sha256('kernel image');
const initrd = sha256('initrd image');
const cmdline = 'console=ttyS0 ima_policy=tcb panic=-1';
const refs = { kernelSha256: kernel.toString('hex'), initrdSha256: initrd.toString('hex'), cmdline };
const launch = (o: Partial<LaunchMeasurements> = {}): LaunchMeasurements => ({ kernel: new Map([[S, kernel]]), initrd: new Map([[S, initrd]]), cmdline, ...o });

/** What a quote of PCRs 0-10 would report after this launch (PCRs 0-7 as firmware left them). */
function quotedAfter(m: LaunchMeasurements): PcrValues {
  const r = replay(measuredLaunchLog(m));
  const out: PcrValues = new Map();
  for (let p = 0; p <= 10; p++) out.set(p, new Map([[S, r.get(p)?.get(S) ?? Buffer.alloc(32)]]));
  return out;
}

test('launch check: the right kernel, initrd and cmdline pass', () => {
  const v = checkLaunch(encodeEventLog(measuredLaunchLog(launch())), quotedAfter(launch()), refs);
  assert.equal(v.ok, true, v.ok ? '' : v.reason);
});

test('launch check: another kernel, initrd or cmdline fails and says which', () => {
  const cases: [Partial<LaunchMeasurements>, string][] = [
    [{ kernel: new Map([[S, sha256('evil kernel')]]) }, 'KERNEL_MISMATCH'],
    [{ initrd: new Map([[S, sha256('evil initrd')]]) }, 'INITRD_MISMATCH'],
    [{ cmdline: `${cmdline} init=/bin/sh` }, 'CMDLINE_MISMATCH'],
  ];
  for (const [o, code] of cases) {
    const m = launch(o);
    const v = checkLaunch(encodeEventLog(measuredLaunchLog(m)), quotedAfter(m), refs);
    assert.deepEqual([v.ok, !v.ok && v.code], [false, code]);
    if (!v.ok && code === 'KERNEL_MISMATCH') assert.deepEqual([v.path, v.digest], ['/boot/vmlinuz', sha256('evil kernel').toString('hex')]);
  }
});

test('launch check: a log that claims the reference kernel while the PCRs hold another fails replay', () => {
  const booted = launch({ kernel: new Map([[S, sha256('evil kernel')]]) });
  const v = checkLaunch(encodeEventLog(measuredLaunchLog(launch())), quotedAfter(booted), refs);
  assert.deepEqual([v.ok, !v.ok && v.code], [false, 'EVENT_LOG_REPLAY_MISMATCH']);
  const garbage = checkLaunch(Buffer.from('not an event log'), quotedAfter(launch()), refs);
  assert.deepEqual([garbage.ok, !garbage.ok && garbage.code], [false, 'EVENT_LOG_INVALID']);
});

function imaSetup(files: [string, Buffer][]) {
  const pcrs = quotedAfter(launch());
  const agg = computeBootAggregate(Array.from({ length: 10 }, (_, i) => pcrs.get(i)!.get(S)!), 'sha256');
  const list = Buffer.concat([imaNgEntry('boot_aggregate', agg), ...files.map(([p, d]) => imaNgEntry(p, d))]);
  pcrs.get(10)!.set(S, replayImaLog(parseImaBinary(list), 'sha256'));
  const policy = emptyRuntimePolicy();
  policy.digests = Object.fromEntries(files.map(([p, d]) => [p, [d.toString('hex')]]));
  return { pcrs, list, policy, agg };
}

test('IMA check: a list that replays to PCR 10 with the right boot_aggregate and allowed files passes', () => {
  const { pcrs, list, policy } = imaSetup([['/bin/busybox', sha256('busybox')], ['/etc/inittab', sha256('inittab')]]);
  const v = checkIma(list, pcrs, policy);
  assert.deepEqual(v, { ok: true, entries: 3, judged: 3 });
});

test('IMA check: an unknown program fails, naming its path and digest', () => {
  const { pcrs, policy } = imaSetup([['/bin/busybox', sha256('busybox')]]);
  const evil = sha256('evil program');
  const { list, pcrs: after } = imaSetup([['/bin/busybox', sha256('busybox')], ['/tmp/evil', evil]]);
  const v = checkIma(list, after, policy);
  assert.equal(v.ok, false);
  assert.ok(!v.ok);
  assert.equal(v.code, 'POLICY_VIOLATION');
  assert.equal(v.path, '/tmp/evil');
  assert.equal(v.digest, `sha256:${evil.toString('hex')}`);
  // The same list quoted before /tmp/evil was extended: only the covered prefix is judged, and passes.
  assert.deepEqual(checkIma(list, pcrs, policy), { ok: true, entries: 3, judged: 2 });
});

test('IMA check: a list that does not replay to PCR 10, or a wrong boot_aggregate, fails', () => {
  const { pcrs, list, policy } = imaSetup([['/bin/busybox', sha256('busybox')]]);
  const dropped = imaSetup([]).list; // the relay hides the busybox entry
  const v = checkIma(dropped, pcrs, policy);
  assert.deepEqual([v.ok, !v.ok && v.code], [false, 'IMA_REPLAY_MISMATCH']);
  const other = new Map(pcrs);
  other.set(0, new Map([[S, extendPcr(S, Buffer.alloc(32), sha256('other firmware'))]]));
  const w = checkIma(list, other, policy);
  assert.deepEqual([w.ok, !w.ok && w.code], [false, 'BOOT_AGGREGATE_MISMATCH']);
  const x = checkIma(Buffer.from([1, 2, 3]), pcrs, policy);
  assert.deepEqual([x.ok, !x.ok && x.code], [false, 'IMA_LOG_INVALID']);
});

test("IMA check on the real guest's list (no TPM in the capture): replay holds, boot_aggregate of zeros is refused", () => {
  const list = readFileSync(new URL('../formats/ima-fixtures/guest-binary_runtime_measurements', import.meta.url));
  const entries = parseImaBinary(list);
  const pcrs: PcrValues = new Map();
  for (let p = 0; p <= 9; p++) pcrs.set(p, new Map([[S, Buffer.alloc(32)]]));
  pcrs.set(10, new Map([[S, replayImaLog(entries, 'sha256')]]));
  const v = checkIma(list, pcrs, undefined);
  assert.deepEqual([v.ok, !v.ok && v.code, !v.ok && v.path], [false, 'BOOT_AGGREGATE_MISMATCH', 'boot_aggregate']);
});
