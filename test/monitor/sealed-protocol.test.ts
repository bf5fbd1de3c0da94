/**
 * The tenant and the monitor speaking the sealed launch, identity and command protocols, with a
 * management plane in the middle that tries what seed 001's adversary tries: redirect, replay,
 * tamper, swap boot files, replay identity proofs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { generateHpkeKeyPair } from '../../src/crypto/hpke.ts';
import { deriveVmKey } from '../../src/crypto/keys.ts';
import { sealCommand, openCommandResult, CommandResultError } from '../../src/client/sealed-command.ts';
import { sealLaunchBundle, sha256File, verifyIdentityProof, IdentityProofError, type SealBundleInput } from '../../src/client/sealed-launch.ts';
import { openLaunchBundle, takeBootFiles } from '../../src/monitor/launch/bundle-open.ts';
import { openCommand, sealCommandResult } from '../../src/monitor/identity/command-gate.ts';
import { newVmId, sealIdentityProof } from '../../src/monitor/identity/identity-proof.ts';
import { RefusalError } from '../../src/monitor/identity/refusal.ts';
import { VmCounters } from '../../src/monitor/state/vm-counters.ts';

const refused = (code: string) => (e: unknown) => e instanceof RefusalError && e.code === code;

async function fixture(t: { after(fn: () => unknown): void }) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmseal-proto-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const kernel = path.join(dir, 'offered-vmlinuz');
  const initrd = path.join(dir, 'offered-initrd');
  await writeFile(kernel, randomBytes(100_000));
  await writeFile(initrd, randomBytes(50_000));
  const host = { hostId: 'host-a', ...(await generateHpkeKeyPair()) };
  const volumeKey = randomBytes(64);
  const input: SealBundleInput = {
    hostId: host.hostId,
    hostPublicKey: host.publicKey,
    name: 'web-1',
    volumeKey,
    kernelSha256: await sha256File(kernel),
    initrdSha256: await sha256File(initrd),
    cmdline: 'console=ttyS0 ima_policy=tcb',
    disk: { payloadOffset: 16 << 20, sectorSize: 4096, sectors: 1024, integrityRoot: randomBytes(32).toString('hex') },
    policy: { idsMeasurements: [] },
  };
  return { dir, kernel, initrd, host, volumeKey, input };
}

test('a sealed bundle opens only on its host, unaltered, and boots only the sealed kernel and initrd', async (t) => {
  const f = await fixture(t);
  const { sealed, launchNonce } = await sealLaunchBundle(f.input);
  const bundle = await openLaunchBundle({ hostId: 'host-a', privateKey: f.host.privateKey }, sealed);
  assert.ok(bundle.volumeKey.equals(f.volumeKey));
  assert.ok(bundle.launchNonce.equals(launchNonce));
  assert.equal(bundle.cmdline, f.input.cmdline);

  const other = await generateHpkeKeyPair();
  await assert.rejects(openLaunchBundle({ hostId: 'host-a', privateKey: other.privateKey }, sealed), refused('TAMPER'), 'another host key');
  await assert.rejects(openLaunchBundle({ hostId: 'host-b', privateKey: f.host.privateKey }, sealed), refused('TAMPER'), 'the same key under another host id');
  for (const at of [0, 31, 32, sealed.length - 1]) {
    const bad = Buffer.from(sealed);
    bad[at]! ^= 1;
    await assert.rejects(openLaunchBundle({ hostId: 'host-a', privateKey: f.host.privateKey }, bad), refused('TAMPER'), `bit flip at ${at}`);
  }

  const priv = await mkdtemp(path.join(f.dir, 'run-'));
  const taken = await takeBootFiles(bundle, { kernel: f.kernel, initrd: f.initrd }, priv);
  assert.equal(await sha256File(taken.kernel), bundle.kernelSha256);
  const evil = path.join(f.dir, 'evil-vmlinuz');
  await writeFile(evil, randomBytes(100_000));
  await assert.rejects(takeBootFiles(bundle, { kernel: evil, initrd: f.initrd }, await mkdtemp(path.join(f.dir, 'run-'))), refused('BAD_KERNEL'));
  await assert.rejects(takeBootFiles(bundle, { kernel: f.kernel, initrd: f.kernel }, await mkdtemp(path.join(f.dir, 'run-'))), refused('BAD_KERNEL'));
});

test('the identity proof binds VM id, host and this launch; replayed or forged proofs are refused', async (t) => {
  const f = await fixture(t);
  const first = await sealLaunchBundle(f.input);
  const bundle = await openLaunchBundle({ hostId: 'host-a', privateKey: f.host.privateKey }, first.sealed);
  const vmId = newVmId();
  const proof = sealIdentityProof(deriveVmKey(bundle.volumeKey, 'identity'), vmId, bundle.launchNonce, 'host-a');
  assert.equal(verifyIdentityProof(f.volumeKey, proof, { launchNonce: first.launchNonce, hostId: 'host-a' }), vmId.toString('hex'));

  // The management plane answers a second launch with the first launch's proof.
  const second = await sealLaunchBundle(f.input);
  assert.throws(() => verifyIdentityProof(f.volumeKey, proof, { launchNonce: second.launchNonce, hostId: 'host-a' }), /replayed proof/);
  // A proof made with the management plane's own key (its decoy VM) does not open.
  const forged = sealIdentityProof(deriveVmKey(randomBytes(64), 'identity'), vmId, first.launchNonce, 'host-a');
  assert.throws(() => verifyIdentityProof(f.volumeKey, forged, { launchNonce: first.launchNonce, hostId: 'host-a' }), IdentityProofError);
  assert.throws(() => verifyIdentityProof(f.volumeKey, proof, { launchNonce: first.launchNonce, hostId: 'host-b' }), /host-a, not host-b/);
});

test('sealed commands: executed once, refused when redirected or replayed, counters survive a restart', async (t) => {
  const f = await fixture(t);
  const dbPath = path.join(f.dir, 'monitor.db');
  let db = new Database(dbPath);
  db.pragma('synchronous = FULL');
  let counters = new VmCounters(db);
  const vk = f.volumeKey;
  const ck = deriveVmKey(vk, 'command');
  const tenantVm = { vmId: newVmId().toString('hex'), commandKey: deriveVmKey(vk, 'command') };
  // Same image launched twice (same key), and a decoy the management plane launched with its own key.
  const twin = { vmId: newVmId().toString('hex'), commandKey: deriveVmKey(vk, 'command') };
  const decoy = { vmId: newVmId().toString('hex'), commandKey: deriveVmKey(randomBytes(64), 'command') };

  const c1 = sealCommand(ck, tenantVm.vmId, 1, 'pause');
  assert.throws(() => openCommand(counters, decoy, c1), refused('REDIRECT'), 'to a decoy with another key');
  assert.throws(() => openCommand(counters, twin, c1), refused('REDIRECT'), 'to another VM with the same key');
  const body = openCommand(counters, tenantVm, c1);
  assert.deepEqual(body, { vmId: tenantVm.vmId, counter: 1, op: 'pause', args: {} });
  assert.throws(() => openCommand(counters, tenantVm, c1), refused('REPLAY'), 'the same blob again');

  const result = sealCommandResult(tenantVm.commandKey, { vmId: tenantVm.vmId, counter: 1, op: 'pause', ok: true, state: 'paused' });
  assert.equal(openCommandResult(ck, result, { vmId: tenantVm.vmId, counter: 1, op: 'pause' }).state, 'paused');
  // An old result handed back for a newer command, or a result from the decoy, is refused by the tenant.
  assert.throws(() => openCommandResult(ck, result, { vmId: tenantVm.vmId, counter: 2, op: 'resume' }), CommandResultError);
  const decoyResult = sealCommandResult(decoy.commandKey, { vmId: tenantVm.vmId, counter: 1, op: 'pause', ok: true, state: 'paused' });
  assert.throws(() => openCommandResult(ck, decoyResult, { vmId: tenantVm.vmId, counter: 1, op: 'pause' }), CommandResultError);

  openCommand(counters, tenantVm, sealCommand(ck, tenantVm.vmId, 5, 'resume'));
  db.close();
  db = new Database(dbPath);
  counters = new VmCounters(db);
  t.after(() => db.close());
  assert.throws(() => openCommand(counters, tenantVm, sealCommand(ck, tenantVm.vmId, 4, 'status')), refused('REPLAY'), 'after a monitor restart');
  assert.equal(openCommand(counters, tenantVm, sealCommand(ck, tenantVm.vmId, 6, 'status')).op, 'status');
  const tampered = sealCommand(ck, tenantVm.vmId, 7, 'status');
  tampered[20]! ^= 0x40;
  assert.throws(() => openCommand(counters, tenantVm, tampered), refused('REDIRECT'));
});
