// The sealed tpm-* commands: protocol, grant proofs (same tenant = holds the grantee's key), revoke, and
// tpm-pcrs against a real swtpm after the measured launch.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { grantProof } from '../../src/crypto/tpm-grant-mac.ts';
import { decodeCommand, decodeCommandResult, encodeCommand, encodeCommandResult } from '../../src/formats/protocol/command.ts';
import { ProtocolError } from '../../src/formats/protocol/fields.ts';
import { TPM_RC, nvReadCommand, parseCommand, startupCommand } from '../../src/formats/tpm2/index.ts';
import { openCommand } from '../../src/monitor/identity/command-gate.ts';
import { sealCommand } from '../../src/client/sealed-command.ts';
import { formatPcrRows, pcrRows } from '../../src/client/tpm-pcrs.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { loadOrCreateNvManagerKey } from '../../src/monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../src/monitor/vtpm/nv-policy.ts';
import { GuestSessions } from '../../src/monitor/vtpm/guest-sessions.ts';
import { runTpmCommand, VtpmCommandError, type NvVm } from '../../src/monitor/vtpm/nv-commands.ts';
import { extendLaunch, measureBootFiles } from '../../src/monitor/vtpm/measured-launch.ts';
import { SwtpmInstance, vtpmStateDir } from '../../src/monitor/vtpm/swtpm-instance.ts';
import { CMD } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import type { TpmEndpoint } from '../../src/monitor/vtpm/tpm-channel.ts';

const root = mkdtempSync(join(tmpdir(), 'vmseal-nvcmd-'));
after(() => rmSync(root, { recursive: true, force: true }));

const INDEX = 0x01800040;
const hex16 = () => randomBytes(16).toString('hex');
const vmA: NvVm = { vmId: hex16(), instance: hex16(), commandKey: randomBytes(32) };
const vmB: NvVm = { vmId: hex16(), instance: hex16(), commandKey: randomBytes(32) };
const vmC: NvVm = { vmId: hex16(), instance: hex16(), commandKey: randomBytes(32) };
const running = new Map([vmA, vmB, vmC].map((v) => [v.vmId, v]));
const lookup = (id: string) => running.get(id);

test('tpm-share / tpm-revoke / tpm-pcrs commands parse with their arguments, and nothing else does', () => {
  const share = { vmId: vmA.vmId, counter: 7, op: 'tpm-share' as const, args: { index: INDEX, with: vmB.vmId, proof: 'ab'.repeat(32) } };
  assert.deepEqual(decodeCommand(encodeCommand(share)), share);
  const bad = (body: unknown) => assert.throws(() => decodeCommand(Buffer.from(JSON.stringify(body))), ProtocolError);
  bad({ ...share, args: {} });
  bad({ ...share, args: { ...share.args, extra: 1 } });
  bad({ ...share, args: { ...share.args, index: 0x81000001 } });
  bad({ ...share, op: 'pause' });
  bad({ vmId: vmA.vmId, counter: 1, op: 'tpm-revoke', args: { index: INDEX, with: vmB.vmId } });
  assert.equal(decodeCommand(encodeCommand({ vmId: vmA.vmId, counter: 2, op: 'tpm-pcrs', args: {} })).op, 'tpm-pcrs');
  const result = { vmId: vmA.vmId, counter: 2, op: 'tpm-pcrs' as const, ok: true, state: 'running', tpm: { sha256: Array(24).fill('00'.repeat(32)), eventLog: randomBytes(3000).toString('base64') } };
  assert.deepEqual(decodeCommandResult(encodeCommandResult(result)), result);
});

test('the gate opens a sealed tpm-share with the owner key and refuses its replay', () => {
  const counters = new Map<string, number>();
  const store = { advance: (id: string, c: number) => (c > (counters.get(id) ?? 0) ? (counters.set(id, c), true) : false) };
  const request = { op: 'tpm-share' as const, args: { index: INDEX, with: vmB.vmId, proof: grantProof(vmB.commandKey, { ownerVmId: vmA.vmId, granteeVmId: vmB.vmId, nvIndex: INDEX, counter: 3 }).toString('hex') } };
  const sealed = sealCommand(vmA.commandKey, vmA.vmId, 3, request);
  assert.deepEqual(openCommand(store, { vmId: vmA.vmId, commandKey: vmA.commandKey }, sealed).args, request.args);
  assert.throws(() => openCommand(store, { vmId: vmA.vmId, commandKey: vmA.commandKey }, sealed), /REPLAY|already used/);
  assert.throws(() => openCommand(store, { vmId: vmB.vmId, commandKey: vmB.commandKey }, sealed), /REDIRECT|does not open/);
});

test('shares need the owner, a running grantee and a proof under the grantee key; revoke is immediate', async () => {
  const db = MonitorDb.open(join(root, 'm.db'));
  const control = new NvAccessControl({ ownership: new NvOwnership(db.sql, await loadOrCreateNvManagerKey(join(root, 'k'))) });
  const claim = control.ownership.claim(vmA.instance, INDEX, 32);
  const share = (sender: NvVm, to: NvVm, counter: number, proofKey: Buffer, proofCounter = counter, index = INDEX) =>
    runTpmCommand(control, sender, { vmId: sender.vmId, counter, op: 'tpm-share', args: { index, with: to.vmId, proof: grantProof(proofKey, { ownerVmId: sender.vmId, granteeVmId: to.vmId, nvIndex: index, counter: proofCounter }).toString('hex') } }, lookup);
  await assert.rejects(share(vmA, vmB, 1, vmA.commandKey), /not proven/, "the owner's own key proves nothing about B");
  await assert.rejects(share(vmA, vmB, 2, randomBytes(32)), /not proven/);
  await assert.rejects(share(vmA, vmB, 3, vmB.commandKey, 2), /not proven/, 'a proof made for another command');
  await assert.rejects(share(vmA, vmC, 4, vmB.commandKey), /not proven/, "B's proof does not grant C");
  await assert.rejects(share(vmB, vmC, 5, vmC.commandKey), /does not own/, 'only the owner shares');
  await assert.rejects(share(vmA, vmB, 6, vmB.commandKey, 6, 0x01000001), /outside/);
  await assert.rejects(share(vmA, { ...vmB, vmId: hex16() }, 7, vmB.commandKey), /not running/);
  assert.equal(control.ownership.hasGrant(claim, vmB.instance), false);
  await share(vmA, vmB, 8, vmB.commandKey);
  assert.equal(control.ownership.hasGrant(claim, vmB.instance), true);
  assert.equal(control.ownership.hasGrant(claim, vmC.instance), false);

  // B's read goes to A's endpoint while the grant stands, and is refused right after the revoke.
  const endpointA: TpmEndpoint = { name: 'a', transact: () => Promise.reject(new Error('not used')) };
  control.attach(vmA.instance, endpointA);
  const read = nvReadCommand(INDEX, 32);
  const decide = () => control.decide({ instance: vmB.instance, tpm: endpointA, sessions: new GuestSessions() }, parseCommand(read), read);
  assert.deepEqual(await decide(), { action: 'forward-to', instance: endpointA });
  await assert.rejects(runTpmCommand(control, vmB, { vmId: vmB.vmId, counter: 9, op: 'tpm-revoke', args: { index: INDEX, from: vmB.vmId } }, lookup), /does not own/);
  await runTpmCommand(control, vmA, { vmId: vmA.vmId, counter: 10, op: 'tpm-revoke', args: { index: INDEX, from: vmB.vmId } }, lookup);
  const after = await decide();
  assert.equal(after.action === 'respond' && after.response.readUInt32BE(6), TPM_RC.NV_AUTHORIZATION);
  await assert.rejects(runTpmCommand(control, vmA, { vmId: vmA.vmId, counter: 11, op: 'tpm-revoke', args: { index: INDEX, from: vmB.vmId } }, lookup), VtpmCommandError);
  db.close();
});

test('tpm-pcrs: PCRs read from the vTPM agree with the replay of the measured-launch log', async () => {
  const key = randomBytes(32);
  const swtpm = await SwtpmInstance.start({ stateDir: await vtpmStateDir(join(root, 'vtpm'), key), key, name: 'pcrs' });
  try {
    assert.equal((await swtpm.control.request(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), 0);
    assert.equal((await swtpm.tpm.transact(startupCommand())).readUInt32BE(6), TPM_RC.SUCCESS);
    const kernel = join(root, 'vmlinuz');
    const initrd = join(root, 'initrd');
    writeFileSync(kernel, randomBytes(4096));
    writeFileSync(initrd, randomBytes(4096));
    const eventLogPath = join(root, 'eventlog.bin');
    await extendLaunch(swtpm.tpm, await measureBootFiles(kernel, initrd, 'console=ttyS0'), eventLogPath);
    const vm: NvVm = { ...vmA, tpm: swtpm.tpm, eventLogPath };
    const control = new NvAccessControl({ ownership: new NvOwnership(MonitorDb.open(join(root, 'p.db')).sql, randomBytes(32)) });
    const r = await runTpmCommand(control, vm, { vmId: vm.vmId, counter: 1, op: 'tpm-pcrs', args: {} }, lookup);
    assert.ok(r);
    const rows = pcrRows(r);
    for (const pcr of [8, 9]) {
      assert.ok(rows[pcr]!.replay, `PCR ${pcr} is logged`);
      assert.equal(rows[pcr]!.replay, rows[pcr]!.tpm, `PCR ${pcr}`);
      assert.notEqual(rows[pcr]!.tpm, '0'.repeat(64));
    }
    assert.equal(rows[10]!.replay, undefined);
    assert.match(formatPcrRows(rows), /  8  [0-9a-f]{64}  match/);
    // A changed PCR shows as a mismatch.
    const forged = { ...r, sha256: r.sha256.map((v, i) => (i === 9 ? 'ff'.repeat(32) : v)) };
    assert.match(formatPcrRows(pcrRows(forged)), /MISMATCH/);
  } finally {
    await swtpm.stop();
  }
});
