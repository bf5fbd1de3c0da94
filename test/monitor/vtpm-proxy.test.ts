/**
 * The vTPM pieces against real swtpm, with a stand-in for QEMU's tpm-emulator backend: provisioning with an
 * EK certificate (openssl verifies it), encrypted state, the control relay with SET_DATAFD interception,
 * hostile TPM commands, the measured launch at the first Startup after each INIT (tpm2_eventlog parses the
 * log; its replay equals PCR_Read), forwarding to another VM's swtpm, and state across a relaunch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseEventLog, replay } from '../../src/formats/tcg-eventlog.ts';
import {
  TPM_ALG,
  TPM_CC,
  TPM_RC,
  TPM_RH,
  TPMA_NV,
  buildCommand,
  getRandomCommand,
  nvDefineSpaceCommand,
  nvReadCommand,
  nvWriteCommand,
  parsePcrReadResponse,
  parseResponse,
  passwordSession,
  pcrReadCommand,
  startupCommand,
} from '../../src/formats/tpm2/index.ts';
import { deriveVmKey } from '../../src/crypto/keys.ts';
import { CMD, PTM_RES } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import { SwtpmInstance, vtpmStateId } from '../../src/monitor/vtpm/swtpm-instance.ts';
import type { PolicyDecision } from '../../src/monitor/vtpm/tpm-proxy.ts';
import { ensureVtpmCa } from '../../src/monitor/vtpm/vtpm-ca.ts';
import { Vtpm } from '../../src/monitor/vtpm/vtpm.ts';
import { FakeQemu } from './vtpm-fixtures.ts';

const rc = (rsp: Buffer) => rsp.readUInt32BE(6);

function pcrs(rsp: Buffer, alg: number): Map<number, Buffer> {
  const { values } = parsePcrReadResponse(parseResponse(rsp, TPM_CC.PCR_Read));
  return new Map([...values].flatMap(([p, banks]) => (banks.has(alg) ? [[p, banks.get(alg)!] as const] : [])));
}

/** Connects a fake QEMU and boots the TPM as QEMU + SeaBIOS do: INIT, SET_DATAFD, Startup. */
async function bootFakeQemu(v: Vtpm): Promise<FakeQemu> {
  const q = new FakeQemu(v.ctrlPath);
  assert.equal((await q.setDataFd()).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal((await q.ctrl(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal(rc(await q.tpm(startupCommand())), TPM_RC.SUCCESS);
  return q;
}

function setup(t: { after(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-vtpm-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.img');
  writeFileSync(kernel, randomBytes(5000));
  writeFileSync(initrd, randomBytes(3000));
  mkdirSync(join(dir, 'host'));
  return { dir, boot: { kernel, initrd, cmdline: 'console=ttyS0 ima_policy=tcb panic=-1' } };
}

test('provisioning: encrypted 0700 state keyed by the volume key, EK certificates that openssl verifies against the vTPM CA', { timeout: 120_000 }, async (t) => {
  const { dir, boot } = setup(t);
  const ca = await ensureVtpmCa(join(dir, 'host'), 'host-a');
  const vk = randomBytes(64);
  const ekDir = join(dir, 'ek');
  mkdirSync(ekDir);
  const v = await Vtpm.start({ stateBase: join(dir, 'vtpm'), runDirBase: join(dir, 'run'), volumeKey: vk, ca, name: 'vm-a', boot, ekCertDir: ekDir });
  t.after(() => v.stop());
  assert.equal(v.stateDir, join(dir, 'vtpm', vtpmStateId(deriveVmKey(vk, 'vtpm'))));
  assert.equal(statSync(v.stateDir).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, 'host', 'vtpm-ca-key.pem')).mode & 0o777, 0o600);
  const certs = readdirSync(ekDir).filter((f) => f.endsWith('.crt'));
  assert.deepEqual(certs.sort(), ['ek-rsa2048.crt', 'ek-secp384r1.crt']);
  for (const c of certs) {
    const pem = spawnSync('openssl', ['x509', '-inform', 'der', '-in', join(ekDir, c)], { encoding: 'utf8' });
    assert.equal(pem.status, 0, pem.stderr);
    writeFileSync(join(ekDir, `${c}.pem`), pem.stdout);
    const r = spawnSync('openssl', ['verify', '-CAfile', ca.certPath, join(ekDir, `${c}.pem`)], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${c}: ${r.stdout}${r.stderr}`);
    const text = spawnSync('openssl', ['x509', '-noout', '-text', '-in', join(ekDir, `${c}.pem`)], { encoding: 'utf8' }).stdout;
    assert.match(text, /Issuer: CN ?= ?vmseal vTPM CA host-a/);
  }

  // A known NV value written through the proxy is nowhere in clear in the state files.
  const q = await bootFakeQemu(v);
  t.after(() => q.close());
  const secret = Buffer.from(`vmseal-nv-secret-${randomBytes(8).toString('hex')}`);
  const index = 0x01500020;
  const define = nvDefineSpaceCommand({ nvIndex: index, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE, authPolicy: Buffer.alloc(0), dataSize: secret.length });
  assert.equal(rc(await q.tpm(define)), TPM_RC.SUCCESS);
  assert.equal(rc(await q.tpm(nvWriteCommand(index, secret, 0, { authHandle: TPM_RH.OWNER }))), TPM_RC.SUCCESS);
  const read = await q.tpm(nvReadCommand(index, secret.length, 0, { authHandle: TPM_RH.OWNER }));
  assert.equal(rc(read), TPM_RC.SUCCESS);
  assert.ok(read.includes(secret), 'the guest reads its value back');
  const files = readdirSync(v.stateDir);
  assert.ok(files.includes('tpm2-00.permall'));
  for (const f of files) {
    const bytes = readFileSync(join(v.stateDir, f));
    assert.ok(!bytes.includes(secret), `${f} holds the NV value in clear`);
    assert.ok(!bytes.includes(Buffer.from('vmseal vTPM CA')), `${f} holds the EK certificate in clear`);
  }
});

test('proxy: control relay, hostile commands answered with TPM errors, measured launch at each reset, forwarding, relaunch keeps state', { timeout: 120_000 }, async (t) => {
  const { dir, boot } = setup(t);
  const ca = await ensureVtpmCa(join(dir, 'host'), 'host-b');
  const vkA = randomBytes(64);
  const common = { stateBase: join(dir, 'vtpm'), runDirBase: join(dir, 'run'), ca, boot };
  const other = await Vtpm.start({ ...common, volumeKey: randomBytes(64), name: 'vm-other' });
  t.after(() => other.stop());
  let route: PolicyDecision = { action: 'forward' };
  const a = await Vtpm.start({ ...common, volumeKey: vkA, name: 'vm-a', policy: () => route });
  t.after(() => a.stop());
  assert.equal(statSync(a.ctrlPath).isSocket(), true);

  const q = new FakeQemu(a.ctrlPath);
  t.after(() => q.close());
  const caps = (await q.ctrl(CMD.GET_CAPABILITY, Buffer.alloc(0), 8)).readBigUInt64BE(0);
  assert.equal(caps & (1n << 12n), 1n << 12n, 'SET_DATAFD is offered');
  assert.equal(caps & ((1n << 8n) | (1n << 9n)), 0n, 'state blob export/import is not offered');
  const buf = await q.ctrl(CMD.SET_BUFFERSIZE, Buffer.from([0, 0, 0, 0]), 16);
  assert.equal(buf.readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal(buf.readUInt32BE(4), 4096);
  const blob = await q.ctrl(0x0c, Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]), 16);
  assert.equal(blob.readUInt32BE(0), PTM_RES.FAIL, 'GET_STATEBLOB refused');
  assert.equal((await q.setDataFd()).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal((await q.ctrl(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), PTM_RES.SUCCESS);
  // SET_LOCALITY as QEMU sends it (the whole 4-byte union), then as the man page frames it (1 byte).
  assert.equal((await q.ctrl(CMD.SET_LOCALITY, Buffer.from([0, 0, 0, 0]), 4)).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal((await q.ctrl(CMD.SET_LOCALITY, Buffer.from([0]), 4)).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal((await q.ctrl(CMD.GET_TPMESTABLISHED, Buffer.alloc(0), 8)).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal(rc(await q.tpm(startupCommand())), TPM_RC.SUCCESS);

  const sel = [{ hashAlg: TPM_ALG.SHA256, pcrs: [8, 9] }, { hashAlg: TPM_ALG.SHA1, pcrs: [8, 9] }];
  const check = async () => {
    const log = parseEventLog(readFileSync(a.eventLogPath));
    const replayed = replay(log);
    const rsp = await q.tpm(pcrReadCommand(sel));
    for (const alg of [TPM_ALG.SHA256, TPM_ALG.SHA1]) {
      const got = pcrs(rsp, alg);
      for (const p of [8, 9]) {
        assert.deepEqual(got.get(p), replayed.get(p)?.get(alg), `PCR ${p} bank 0x${alg.toString(16)} equals the log's replay`);
        assert.notEqual(got.get(p)!.toString('hex'), '0'.repeat(got.get(p)!.length * 2));
      }
    }
    return pcrs(rsp, TPM_ALG.SHA256);
  };
  const first = await check();
  // The independent parser: tpm2_eventlog reads the log and computes the same PCR values.
  const ev = spawnSync('tpm2_eventlog', [a.eventLogPath], { encoding: 'utf8' });
  assert.equal(ev.status, 0, ev.stderr);
  assert.match(ev.stdout, /kernel_cmdline: console=ttyS0/);
  for (const p of [8, 9]) {
    const m = new RegExp(`sha256:[\\s\\S]*?\\b${p}\\s*:\\s*0x([0-9A-Fa-f]{64})`).exec(ev.stdout);
    assert.equal(m?.[1]?.toLowerCase(), first.get(p)!.toString('hex'), `tpm2_eventlog's PCR ${p}`);
  }
  // Startup again without a reset measures nothing more.
  assert.equal(rc(await q.tpm(startupCommand())), TPM_RC.INITIALIZE);
  assert.equal(a.proxy.stats.measuredBoots, 1);

  // Hostile commands: each answered with the TPM's error code, none reaching swtpm.
  const before = a.proxy.stats.forwarded;
  const badTag = Buffer.from(getRandomCommand(8));
  badTag.writeUInt16BE(0x1234, 0);
  assert.equal(rc(await q.tpm(badTag)), TPM_RC.VALUE);
  const unknown = Buffer.from(getRandomCommand(8));
  unknown.writeUInt32BE(0x20000fff, 6);
  assert.equal(rc(await q.tpm(unknown)), TPM_RC.COMMAND_CODE);
  const oversized = Buffer.alloc(5000);
  oversized.writeUInt16BE(0x8001, 0);
  oversized.writeUInt32BE(5000, 2);
  oversized.writeUInt32BE(TPM_CC.GetRandom, 6);
  assert.equal(rc(await q.tpm(oversized)), TPM_RC.COMMAND_SIZE);
  const truncated = buildCommand(TPM_CC.NV_Read, [TPM_RH.OWNER, 0x01500020], Buffer.alloc(0)).subarray(0, 14);
  truncated.writeUInt32BE(14, 2);
  assert.notEqual(rc(await q.tpm(truncated)), TPM_RC.SUCCESS);
  const tiny = Buffer.from([0x80, 0x01, 0, 0, 0, 4, 0, 0, 1, 0x7b]);
  assert.equal(rc(await q.tpm(tiny)), TPM_RC.COMMAND_SIZE);
  // The monitor's AK lives under the endorsement hierarchy: the guest may not lock it with a password or disable it.
  const newAuth = Buffer.from([0x00, 0x04, 1, 2, 3, 4]);
  assert.equal(rc(await q.tpm(buildCommand(TPM_CC.HierarchyChangeAuth, [TPM_RH.ENDORSEMENT], newAuth, [passwordSession()]))), 0x185);
  const disable = Buffer.alloc(5);
  disable.writeUInt32BE(TPM_RH.ENDORSEMENT, 0);
  assert.equal(rc(await q.tpm(buildCommand(TPM_CC.HierarchyControl, [TPM_RH.OWNER], disable, [passwordSession()]))), 0x185);
  assert.equal(a.proxy.stats.forwarded, before, 'nothing hostile was forwarded');
  assert.equal(a.proxy.stats.rejected, 7);
  assert.equal(rc(await q.tpm(getRandomCommand(16))), TPM_RC.SUCCESS, 'the TPM still works');

  // forward-to: the same PCR_Read answered by the other VM's swtpm, which was never measured.
  route = { action: 'forward-to', instance: other.endpoint };
  const otherInit = new FakeQemu(other.ctrlPath);
  t.after(() => otherInit.close());
  await otherInit.ctrl(CMD.INIT, Buffer.alloc(4), 4);
  await other.endpoint.transact(startupCommand());
  const elsewhere = pcrs(await q.tpm(pcrReadCommand(sel)), TPM_ALG.SHA256);
  assert.equal(elsewhere.get(9)!.toString('hex'), '0'.repeat(64), 'answered by the other swtpm');
  route = { action: 'respond', response: Buffer.from('80010000000a00000149', 'hex') };
  assert.equal(rc(await q.tpm(getRandomCommand(4))), 0x149);
  route = { action: 'forward' };

  // Reboot: QEMU's reset sends INIT; the firmware's Startup measures the same values again.
  assert.equal((await q.ctrl(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), PTM_RES.SUCCESS);
  assert.equal(rc(await q.tpm(startupCommand())), TPM_RC.SUCCESS);
  assert.deepEqual(await check(), first);
  assert.equal(a.proxy.stats.measuredBoots, 2);

  // A control command the relay cannot frame ends the control connection; the proxy process lives on.
  const extra = Buffer.alloc(4);
  extra.writeUInt32BE(0x99);
  q.sendRawCtrl(extra);
  await q.waitClosed();
  assert.equal(q.closed, true);

  // Relaunch: the same volume key finds the same (encrypted) state; no new provisioning.
  const index = 0x01500021;
  const value = randomBytes(24);
  const define = nvDefineSpaceCommand({ nvIndex: index, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, authPolicy: Buffer.alloc(0), dataSize: value.length });
  assert.equal(rc(await a.endpoint.transact(define)), TPM_RC.SUCCESS);
  assert.equal(rc(await a.endpoint.transact(nvWriteCommand(index, value, 0, { authHandle: TPM_RH.OWNER }))), TPM_RC.SUCCESS);
  const stateDir = a.stateDir;
  await a.stop();
  const again = await Vtpm.start({ ...common, volumeKey: vkA, name: 'vm-a' });
  t.after(() => again.stop());
  assert.equal(again.stateDir, stateDir);
  const q2 = await bootFakeQemu(again);
  t.after(() => q2.close());
  const read = await q2.tpm(nvReadCommand(index, value.length, 0, { authHandle: TPM_RH.OWNER }));
  assert.equal(rc(read), TPM_RC.SUCCESS);
  assert.ok(read.includes(value));

  // A swtpm started with another key cannot use the state.
  await again.stop();
  const wrong = await SwtpmInstance.start({ stateDir, key: randomBytes(32), name: 'wrong' }).catch((e: Error) => e);
  if (!(wrong instanceof Error)) {
    t.after(() => wrong.stop());
    const init = await wrong.control.request(CMD.INIT, Buffer.alloc(4), 4);
    assert.notEqual(init.readUInt32BE(0), PTM_RES.SUCCESS, 'INIT fails on state encrypted under another key');
  }
});
