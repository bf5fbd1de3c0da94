// Grants from inside the owner guest: the sealed tpm-peer / tpm-unpeer commands, and the guest's vendor
// command as the TPM proxy answers it (owner, password, peer, running grantee; revoke; never forwarded).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { peerProof, grantProof } from '../../src/crypto/tpm-grant-mac.ts';
import { sealCommand } from '../../src/client/sealed-command.ts';
import { decodeCommand, encodeCommand } from '../../src/formats/protocol/command.ts';
import { ProtocolError } from '../../src/formats/protocol/fields.ts';
import { TPM_RC, guestGrantCommand } from '../../src/formats/tpm2/index.ts';
import { openCommand } from '../../src/monitor/identity/command-gate.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { runTpmCommand, type NvVm } from '../../src/monitor/vtpm/nv-commands.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../src/monitor/vtpm/nv-policy.ts';
import type { SwtpmControl } from '../../src/monitor/vtpm/swtpm-control.ts';
import type { TpmEndpoint } from '../../src/monitor/vtpm/tpm-channel.ts';
import { TpmProxy, type CommandPolicy } from '../../src/monitor/vtpm/tpm-proxy.ts';

const root = mkdtempSync(join(tmpdir(), 'vmseal-guestgrant-'));
after(() => rmSync(root, { recursive: true, force: true }));

const INDEX = 0x01800020;
const PW = Buffer.from('index-pw');
const hex16 = () => randomBytes(16).toString('hex');
const vm = (): NvVm => ({ vmId: hex16(), instance: hex16(), commandKey: randomBytes(32) });
const [vmA, vmB, vmC] = [vm(), vm(), vm()] as [NvVm, NvVm, NvVm];

/** A TPM that must never be reached: every vendor command is the proxy's to answer. */
function untouchable(name: string): TpmEndpoint & { calls: number } {
  const e = { name, calls: 0, transact: () => (e.calls++, Promise.reject(new Error(`${name} must not be reached`))) };
  return e;
}
const noControl = {} as SwtpmControl;

async function proxyFor(policy: CommandPolicy | undefined, tpm: TpmEndpoint): Promise<TpmProxy> {
  const p = TpmProxy.listen({ ctrlPath: join(root, `ctrl-${hex16()}.sock`), swtpm: { control: noControl, tpm }, ...(policy ? { policy } : {}) });
  after(() => p.close());
  return p;
}

const rc = (rsp: Buffer) => rsp.readUInt32BE(6);

test('tpm-peer / tpm-unpeer parse with their arguments only', () => {
  const peer = { vmId: vmA.vmId, counter: 4, op: 'tpm-peer' as const, args: { with: vmB.vmId, proof: 'cd'.repeat(32) } };
  assert.deepEqual(decodeCommand(encodeCommand(peer)), peer);
  const unpeer = { vmId: vmA.vmId, counter: 5, op: 'tpm-unpeer' as const, args: { with: vmB.vmId } };
  assert.deepEqual(decodeCommand(encodeCommand(unpeer)), unpeer);
  const bad = (body: unknown) => assert.throws(() => decodeCommand(Buffer.from(JSON.stringify(body))), ProtocolError);
  bad({ ...peer, args: { with: vmB.vmId } });
  bad({ ...peer, args: { ...peer.args, index: INDEX } });
  bad({ ...unpeer, args: { ...unpeer.args, proof: 'cd'.repeat(32) } });
  bad({ ...peer, args: { ...peer.args, proof: 'cd'.repeat(31) } });
});

test('the gate opens a sealed tpm-peer with the owner key only, once', () => {
  const counters = new Map<string, number>();
  const store = { advance: (id: string, c: number) => (c > (counters.get(id) ?? 0) ? (counters.set(id, c), true) : false) };
  const request = { op: 'tpm-peer' as const, args: { with: vmB.vmId, proof: peerProof(vmB.commandKey, { ownerVmId: vmA.vmId, granteeVmId: vmB.vmId, counter: 2 }).toString('hex') } };
  const sealed = sealCommand(vmA.commandKey, vmA.vmId, 2, request);
  assert.throws(() => openCommand(store, { vmId: vmB.vmId, commandKey: vmB.commandKey }, sealed), /REDIRECT|does not open/, 'redirected to B');
  assert.deepEqual(openCommand(store, { vmId: vmA.vmId, commandKey: vmA.commandKey }, sealed).args, request.args);
  assert.throws(() => openCommand(store, { vmId: vmA.vmId, commandKey: vmA.commandKey }, sealed), /REPLAY|already used/, 'replayed');
});

test('guest share / revoke through the proxy: owner, password, peer, running grantee; unpeer keeps grants', async () => {
  const dbPath = join(root, 'g.db');
  const db = MonitorDb.open(dbPath);
  const key = randomBytes(32);
  const tampers: string[] = [];
  const control = new NvAccessControl({ ownership: new NvOwnership(db.sql, key, (d) => tampers.push(d)) });
  const running = new Map([vmA, vmB, vmC].map((v) => [v.vmId, v]));
  const lookup = (id: string) => running.get(id);
  const tpms = { a: untouchable('a'), b: untouchable('b'), c: untouchable('c') };
  control.attach(vmA.instance, tpms.a, vmA.vmId);
  control.attach(vmB.instance, tpms.b, vmB.vmId);
  control.attach(vmC.instance, tpms.c, vmC.vmId);
  const proxyA = await proxyFor(control.policyFor(vmA.instance), tpms.a);
  const proxyB = await proxyFor(control.policyFor(vmB.instance), tpms.b);
  const claim = control.ownership.claim(vmA.instance, INDEX, 16, PW);
  const noAuth = control.ownership.claim(vmA.instance, INDEX + 1, 16);
  control.ownership.claim(vmB.instance, INDEX + 2, 16, PW);
  const share = (p: TpmProxy, to: string, o: { index?: number; pw?: Buffer } = {}) => p.handleCommand(guestGrantCommand('share', o.index ?? INDEX, to, o.pw ?? PW)).then(rc);
  const revoke = (p: TpmProxy, from: string, o: { index?: number; pw?: Buffer } = {}) => p.handleCommand(guestGrantCommand('revoke', o.index ?? INDEX, from, o.pw ?? PW)).then(rc);
  let counter = 0;
  const peer = (owner: NvVm, other: NvVm, proofKey = other.commandKey, proofCounter?: number) => {
    counter++;
    return runTpmCommand(control, owner, { vmId: owner.vmId, counter, op: 'tpm-peer', args: { with: other.vmId, proof: peerProof(proofKey, { ownerVmId: owner.vmId, granteeVmId: other.vmId, counter: proofCounter ?? counter }).toString('hex') } }, lookup);
  };

  // Not yet peered: A's guest may not share, with the right password or not.
  assert.equal(await share(proxyA, vmB.vmId), 0x1c4, 'not a peer: TPM_RC_VALUE, parameter 1');
  // Peering needs B's key, for this very command; a share proof does not do.
  await assert.rejects(peer(vmA, vmB, vmA.commandKey), /not proven/);
  await assert.rejects(peer(vmA, vmB, vmB.commandKey, 1), /not proven/, 'a proof made for another counter');
  counter++;
  await assert.rejects(
    runTpmCommand(control, vmA, { vmId: vmA.vmId, counter, op: 'tpm-peer', args: { with: vmB.vmId, proof: grantProof(vmB.commandKey, { ownerVmId: vmA.vmId, granteeVmId: vmB.vmId, nvIndex: INDEX, counter }).toString('hex') } }, lookup),
    /not proven/,
    'a share proof is no peer proof',
  );
  await assert.rejects(peer(vmA, { ...vmB, vmId: hex16() }), /not running/);
  await assert.rejects(peer(vmA, { ...vmB, instance: vmA.instance, vmId: vmA.vmId }, vmA.commandKey), /own peer/);
  await peer(vmA, vmB);
  assert.equal(control.ownership.peers.isPeer(vmA.instance, vmB.instance), true);
  assert.equal(control.ownership.peers.isPeer(vmB.instance, vmA.instance), false, 'directional');

  // The checks, in order.
  assert.equal(await share(proxyB, vmB.vmId), 0x18b, "B cannot share A's index: it looks absent");
  assert.equal(await share(proxyB, vmA.vmId, { index: INDEX + 2 }), 0x1c4, "B's guest may not share with A: peering is A→B");
  assert.equal(await share(proxyA, vmB.vmId, { index: 0x01500000 }), 0x18b, 'outside the managed range');
  assert.equal(await share(proxyA, vmB.vmId, { index: INDEX + 9 }), 0x18b, 'nobody owns it');
  assert.equal(await share(proxyA, vmB.vmId, { index: INDEX + 1 }), TPM_RC.AUTH_UNAVAILABLE, 'the monitor never saw its auth');
  assert.equal(await share(proxyA, vmB.vmId, { pw: Buffer.from('wrong') }), 0x9a2, 'wrong password: TPM_RC_BAD_AUTH, session 1');
  assert.equal(await share(proxyA, vmB.vmId, { pw: Buffer.from('index-p') }), 0x9a2, 'a prefix of it');
  assert.equal(await share(proxyA, vmC.vmId), 0x1c4, 'C is no peer');
  assert.equal(await share(proxyA, hex16()), 0x1c4, 'no such VM');
  assert.equal(control.ownership.hasGrant(claim, vmB.instance), false, 'refused commands change nothing');
  assert.equal(control.ownership.hasGrant(noAuth, vmB.instance), false);

  // The grant is committed: another connection to the database sees it.
  assert.equal(await share(proxyA, vmB.vmId, { pw: Buffer.concat([PW, Buffer.alloc(2)]) }), TPM_RC.SUCCESS, 'trailing zeros do not count, as in a TPM');
  const other = MonitorDb.open(dbPath);
  const ownerState = new NvOwnership(other.sql, key).ownerState(INDEX);
  assert.ok(ownerState.kind === 'owned' && new NvOwnership(other.sql, key).hasGrant(ownerState.claim, vmB.instance));
  other.close();

  // Revoke: owner and password; the grantee need not be a peer, nor running.
  assert.equal(await revoke(proxyB, vmB.vmId), 0x18b);
  assert.equal(await revoke(proxyA, vmB.vmId, { pw: Buffer.from('nope') }), 0x9a2);
  assert.equal(await revoke(proxyA, vmC.vmId), 0x1c4, 'nothing to revoke from C');
  assert.equal(await revoke(proxyA, vmB.vmId), TPM_RC.SUCCESS);
  assert.equal(control.ownership.hasGrant(claim, vmB.instance), false);
  assert.equal(await revoke(proxyA, vmB.vmId), 0x1c4, 'already revoked');

  // Unpeer stops new guest grants and leaves made ones in place (docs/vtpm-nv.md).
  assert.equal(await share(proxyA, vmB.vmId), TPM_RC.SUCCESS);
  counter++;
  await runTpmCommand(control, vmA, { vmId: vmA.vmId, counter, op: 'tpm-unpeer', args: { with: vmB.vmId } }, lookup);
  counter++;
  await assert.rejects(runTpmCommand(control, vmA, { vmId: vmA.vmId, counter, op: 'tpm-unpeer', args: { with: vmB.vmId } }, lookup), /not a peer/);
  assert.equal(control.ownership.hasGrant(claim, vmB.instance), true, 'the grant stays');
  assert.equal(await share(proxyA, vmB.vmId), 0x1c4, 'no new grant');
  assert.equal(await revoke(proxyA, vmB.vmId), TPM_RC.SUCCESS, 'revoke needs no peering');

  // A peer that is not running cannot be granted to; it is still unpeered by its old VM id.
  await peer(vmA, vmC);
  control.detach(vmC.instance, tpms.c);
  assert.equal(await share(proxyA, vmC.vmId), 0x1c4);
  counter++;
  await runTpmCommand(control, vmA, { vmId: vmA.vmId, counter, op: 'tpm-unpeer', args: { with: vmC.vmId } }, () => undefined);
  assert.equal(control.ownership.peers.isPeer(vmA.instance, vmC.instance), false);

  // A forged peer row is no peering, and is reported.
  db.sql.prepare('INSERT INTO nv_peers (owner, peer, peer_vm_id, token, created_at) VALUES (?, ?, ?, ?, 0)').run(vmB.instance, vmA.instance, vmA.vmId, randomBytes(45));
  assert.equal(await share(proxyB, vmA.vmId, { index: INDEX + 2 }), 0x1c4);
  assert.equal(tampers.length, 1);
  assert.match(tampers[0]!, /peer row/);

  for (const t of Object.values(tpms)) assert.equal(t.calls, 0, `${t.name}'s TPM saw a command`);
  db.close();
});

test('a proxy without the NV policy answers the vendor commands TPM_RC_COMMAND_CODE and forwards nothing', async () => {
  const tpm = untouchable('plain');
  const p = await proxyFor(undefined, tpm);
  assert.equal(rc(await p.handleCommand(guestGrantCommand('share', INDEX, vmB.vmId, PW))), TPM_RC.COMMAND_CODE);
  assert.equal(rc(await p.handleCommand(guestGrantCommand('revoke', INDEX, vmB.vmId, PW))), TPM_RC.COMMAND_CODE);
  assert.equal(tpm.calls, 0);
  // Malformed: the proxy answers as for any malformed command.
  const truncated = guestGrantCommand('share', INDEX, vmB.vmId, PW).subarray(0, 20);
  truncated.writeUInt32BE(20, 2);
  assert.notEqual(rc(await p.handleCommand(Buffer.from(truncated))), TPM_RC.SUCCESS);
  assert.equal(tpm.calls, 0);
});
