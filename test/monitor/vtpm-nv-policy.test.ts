// NV access control on real, encrypted swtpm instances (one per "VM"), driven with raw TPM commands built
// by src/formats/tpm2 and routed exactly as the TPM proxy routes them: parse, ask the policy, execute.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  TPM_ALG,
  TPM_RC,
  TPM_RH,
  TPMA_NV,
  buildCommand,
  errorResponse,
  nvDefineSpaceCommand,
  nvReadCommand,
  nvReadPublicCommand,
  nvUndefineSpaceCommand,
  nvWriteCommand,
  parseCommand,
  parseNvReadPublicResponse,
  parseNvReadResponse,
  parseResponse,
  startupCommand,
  Tpm2FormatError,
  TPM_CC,
  TpmWriter,
  type NvPublic,
} from '../../src/formats/tpm2/index.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { loadOrCreateNvManagerKey } from '../../src/monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl, TPM_RC_REFERENCE_S0 } from '../../src/monitor/vtpm/nv-policy.ts';
import { SwtpmInstance, vtpmStateDir, vtpmStateId } from '../../src/monitor/vtpm/swtpm-instance.ts';
import { CMD } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import type { CommandPolicy } from '../../src/monitor/vtpm/tpm-proxy.ts';
import { startSwtpm, transact } from '../formats/tpm2-fixtures/swtpm.ts';

const root = mkdtempSync(join(tmpdir(), 'vmseal-nv-'));
after(() => rmSync(root, { recursive: true, force: true }));

const INDEX = 0x01800010;
const SECRET = randomBytes(32);

interface Vm {
  name: string;
  key: Buffer;
  instance: string;
  stateDir: string;
  swtpm: SwtpmInstance;
  policy: CommandPolicy;
  vmId: string;
}

interface Host {
  db: MonitorDb;
  control: NvAccessControl;
  tampers: string[];
}

async function openHost(): Promise<Host> {
  const db = MonitorDb.open(join(root, 'monitor.db'));
  const key = await loadOrCreateNvManagerKey(join(root, 'nv-manager.key'));
  const tampers: string[] = [];
  const control = new NvAccessControl({ ownership: new NvOwnership(db.sql, key, (d) => tampers.push(d)), quota: { indices: 3, bytes: 256 } });
  return { db, control, tampers };
}

async function bootVm(host: Host, name: string, key: Buffer, vmId: string): Promise<Vm> {
  const stateDir = await vtpmStateDir(join(root, 'vtpm'), key);
  const swtpm = await SwtpmInstance.start({ stateDir, key, name });
  const init = await swtpm.control.request(CMD.INIT, Buffer.alloc(4), 4);
  assert.equal(init.readUInt32BE(0), 0, 'CMD_INIT');
  const st = await swtpm.tpm.transact(startupCommand());
  assert.equal(st.readUInt32BE(6), TPM_RC.SUCCESS, 'Startup');
  const instance = vtpmStateId(key);
  host.control.attach(instance, swtpm.tpm);
  return { name, key, instance, stateDir, swtpm, policy: host.control.policyFor(instance), vmId };
}

/** What the proxy does with one guest command. */
async function send(vm: Vm, raw: Buffer): Promise<Buffer> {
  let cmd;
  try {
    cmd = parseCommand(raw);
  } catch (err) {
    if (err instanceof Tpm2FormatError) return errorResponse(err.rc);
    throw err;
  }
  const d = await vm.policy(cmd, raw);
  if (d.action === 'respond') return d.response;
  if (d.action === 'forward-to') return d.instance.transact(raw);
  const rsp = await vm.swtpm.tpm.transact(raw);
  d.observe?.(rsp);
  return rsp;
}

const rc = (r: Buffer) => r.readUInt32BE(6);

function nvPublic(nvIndex: number, dataSize = 32): NvPublic {
  return { nvIndex, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.NO_DA, authPolicy: Buffer.alloc(0), dataSize };
}

async function readValue(vm: Vm, index = INDEX): Promise<Buffer> {
  const r = await send(vm, nvReadCommand(index, 32));
  return parseNvReadResponse(parseResponse(r, TPM_CC.NV_Read));
}

/** A's value, read straight from A's swtpm (not through any policy). */
async function directValue(vm: Vm): Promise<Buffer> {
  return parseNvReadResponse(parseResponse(await vm.swtpm.tpm.transact(nvReadCommand(INDEX, 32)), TPM_CC.NV_Read));
}

let host: Host;
let a: Vm;
let b: Vm;
const keyA = randomBytes(32);
const keyB = randomBytes(32);
const vmIdB = randomBytes(16).toString('hex');

test('setup: two VMs, A defines and writes a managed index', async () => {
  host = await openHost();
  a = await bootVm(host, 'a', keyA, randomBytes(16).toString('hex'));
  b = await bootVm(host, 'b', keyB, vmIdB);
  assert.equal(rc(await send(a, nvDefineSpaceCommand(nvPublic(INDEX)))), TPM_RC.SUCCESS);
  assert.equal(rc(await send(a, nvWriteCommand(INDEX, SECRET))), TPM_RC.SUCCESS);
  assert.deepEqual(await readValue(a), SECRET);
  const state = host.control.ownership.ownerState(INDEX);
  assert.equal(state.kind, 'owned');
  assert.equal(state.kind === 'owned' && state.claim.owner, a.instance);
});

test('B without a grant: reads, writes, undefines and redefinitions of A\'s index are refused', async () => {
  assert.equal(rc(await send(b, nvReadPublicCommand(INDEX))), 0x18b, 'NV_ReadPublic: absent (TPM_RC_HANDLE, handle 1)');
  assert.equal(rc(await send(b, nvReadCommand(INDEX, 32))), TPM_RC.NV_AUTHORIZATION);
  assert.equal(rc(await send(b, nvReadCommand(INDEX, 32, 0, { authHandle: TPM_RH.OWNER }))), TPM_RC.NV_AUTHORIZATION);
  assert.equal(rc(await send(b, nvWriteCommand(INDEX, randomBytes(32)))), TPM_RC.NV_AUTHORIZATION);
  assert.equal(rc(await send(b, nvUndefineSpaceCommand(INDEX))), TPM_RC.NV_AUTHORIZATION);
  assert.equal(rc(await send(b, nvDefineSpaceCommand(nvPublic(INDEX)))), TPM_RC.NV_DEFINED);
  // The refusal is the policy's: B's own swtpm would have let it define the index.
  assert.equal(rc(await b.swtpm.tpm.transact(nvReadPublicCommand(INDEX))), 0x18b);
  assert.deepEqual(await directValue(a), SECRET);
});

test('A shares with B: B reads A\'s value from A\'s vTPM; nobody writes while it is shared', async () => {
  const state = host.control.ownership.ownerState(INDEX);
  assert.ok(state.kind === 'owned');
  host.control.ownership.grant(state.claim, b.instance, b.vmId);
  const pubA = parseNvReadPublicResponse(parseResponse(await send(a, nvReadPublicCommand(INDEX)), TPM_CC.NV_ReadPublic));
  const pubB = parseNvReadPublicResponse(parseResponse(await send(b, nvReadPublicCommand(INDEX)), TPM_CC.NV_ReadPublic));
  assert.deepEqual(pubB.nvName, pubA.nvName);
  assert.deepEqual(await readValue(b), SECRET);
  assert.equal(rc(await send(b, nvWriteCommand(INDEX, randomBytes(32)))), TPM_RC.NV_LOCKED);
  assert.equal(rc(await send(b, nvUndefineSpaceCommand(INDEX))), TPM_RC.NV_LOCKED);
  assert.equal(rc(await send(a, nvWriteCommand(INDEX, randomBytes(32)))), TPM_RC.NV_LOCKED, 'shared regions are write-protected (seed 002)');
  // B may not borrow A's owner hierarchy, nor bring a session that lives in its own TPM.
  assert.equal(rc(await send(b, nvReadCommand(INDEX, 32, 0, { authHandle: TPM_RH.OWNER }))), TPM_RC.NV_AUTHORIZATION);
  const hmacSession = { handle: 0x02000000, nonce: randomBytes(32), attributes: 1, hmac: randomBytes(32) };
  const withHmac = buildCommand(TPM_CC.NV_Read, [INDEX, INDEX], new TpmWriter().u16(32).u16(0).finish(), [hmacSession]);
  assert.equal(rc(await send(b, withHmac)), TPM_RC_REFERENCE_S0);
  assert.deepEqual(await directValue(a), SECRET);
});

test('B cannot forge, move or replay tokens', async () => {
  const sql = host.db.sql;
  const rowA = sql.prepare('SELECT * FROM nv_owners WHERE nv_index = ?').get(INDEX) as { owner: string; token: Buffer };
  const grantRow = sql.prepare('SELECT * FROM nv_grants WHERE nv_index = ?').get(INDEX) as { token: Buffer };
  // B defines its own index, then A's token is copied onto it (same row, owner column made A's).
  const mine = 0x01800020;
  assert.equal(rc(await send(b, nvDefineSpaceCommand(nvPublic(mine, 16)))), TPM_RC.SUCCESS);
  sql.prepare('UPDATE nv_owners SET token = ?, owner = ? WHERE nv_index = ?').run(rowA.token, rowA.owner, mine);
  const before = host.tampers.length;
  assert.equal(rc(await send(b, nvWriteCommand(mine, Buffer.alloc(16, 1)))), TPM_RC.NV_AUTHORIZATION, 'a moved token does not open');
  assert.ok(host.tampers.length > before);
  // The owner column of A's row is rewritten to B: the token still says A, so B gains nothing (fail closed).
  sql.prepare('UPDATE nv_owners SET owner = ? WHERE nv_index = ?').run(b.instance, INDEX);
  assert.equal(rc(await send(b, nvWriteCommand(INDEX, randomBytes(32)))), TPM_RC.NV_AUTHORIZATION);
  assert.equal(rc(await send(b, nvUndefineSpaceCommand(INDEX))), TPM_RC.NV_AUTHORIZATION);
  sql.prepare('UPDATE nv_owners SET owner = ? WHERE nv_index = ?').run(rowA.owner, INDEX);
  // A forged token (random, or one flipped bit).
  for (const forged of [randomBytes(rowA.token.length), Buffer.from(rowA.token.map((x, i) => (i === 20 ? x ^ 1 : x)))]) {
    sql.prepare('UPDATE nv_owners SET token = ?, owner = ? WHERE nv_index = ?').run(forged, b.instance, INDEX);
    assert.equal(rc(await send(b, nvWriteCommand(INDEX, randomBytes(32)))), TPM_RC.NV_AUTHORIZATION);
    assert.equal(rc(await send(b, nvReadPublicCommand(INDEX))), 0x18b);
  }
  sql.prepare('UPDATE nv_owners SET token = ?, owner = ? WHERE nv_index = ?').run(rowA.token, rowA.owner, INDEX);
  // A grant is forged for index `mine`'s neighbour, or A's genuine grant copied to another index: no access.
  sql.prepare('DELETE FROM nv_owners WHERE nv_index = ?').run(mine);
  const other = 0x01800030;
  const c = await bootVm(host, 'c', randomBytes(32), randomBytes(16).toString('hex'));
  assert.equal(rc(await send(c, nvDefineSpaceCommand(nvPublic(other, 16)))), TPM_RC.SUCCESS);
  sql.prepare('INSERT INTO nv_grants (nv_index, grantee, grantee_vm_id, token, created_at) VALUES (?, ?, ?, ?, 0)').run(other, b.instance, b.vmId, grantRow.token);
  assert.equal(rc(await send(b, nvReadPublicCommand(other))), 0x18b, 'a grant copied to another index does not verify');
  sql.prepare('UPDATE nv_grants SET token = ? WHERE nv_index = ?').run(randomBytes(80), other);
  assert.equal(rc(await send(b, nvReadCommand(other, 16))), TPM_RC.NV_AUTHORIZATION, 'nor does a forged one');
  await c.swtpm.stop();
  host.control.detach(c.instance, c.swtpm.tpm);
  // With the genuine rows back, A and B are exactly where they were.
  assert.deepEqual(await readValue(a), SECRET);
  assert.deepEqual(await readValue(b), SECRET);
});

test('B sends malformed and oversized commands: TPM errors, nothing of A\'s changes', async () => {
  const write = nvWriteCommand(INDEX, randomBytes(32));
  const truncated = Buffer.from(write.subarray(0, write.length - 3));
  truncated.writeUInt32BE(truncated.length, 2);
  assert.notEqual(rc(await send(b, truncated)), TPM_RC.SUCCESS);
  const big = Buffer.alloc(8192);
  big.writeUInt16BE(0x8001, 0);
  big.writeUInt32BE(big.length, 2);
  big.writeUInt32BE(TPM_CC.NV_Read, 6);
  assert.equal(rc(await send(b, big)), TPM_RC.COMMAND_SIZE);
  // An NV_Write whose data claims more than it carries.
  const lying = Buffer.from(write);
  lying.writeUInt16BE(0xffff, lying.length - 2 - 32 - 2);
  assert.notEqual(rc(await send(b, lying)), TPM_RC.SUCCESS);
  assert.notEqual(rc(await send(b, Buffer.from('not a TPM command at all'))), TPM_RC.SUCCESS);
  assert.deepEqual(await directValue(a), SECRET);
});

test('B tries to exhaust NV: its quota answers TPM_RC_NV_SPACE, A still defines', async () => {
  const codes: number[] = [];
  for (let i = 0; i < 6; i++) codes.push(rc(await send(b, nvDefineSpaceCommand(nvPublic(0x01800100 + i, 64)))));
  assert.ok(codes.includes(TPM_RC.NV_SPACE), codes.map((c) => c.toString(16)).join(','));
  assert.equal(codes.filter((c) => c === TPM_RC.SUCCESS).length, 3);
  const tooBig = 0x01800200;
  assert.equal(rc(await send(a, nvDefineSpaceCommand(nvPublic(tooBig, 1024)))), TPM_RC.NV_SPACE, 'bytes are counted too');
  assert.equal(rc(await send(a, nvDefineSpaceCommand(nvPublic(tooBig, 16)))), TPM_RC.SUCCESS);
  assert.equal(rc(await send(a, nvUndefineSpaceCommand(tooBig))), TPM_RC.SUCCESS);
  assert.equal(host.control.ownership.ownerState(tooBig).kind, 'none', 'undefine releases the index');
  assert.deepEqual(await directValue(a), SECRET);
});

test('the binding and the grant survive swtpm exit and a monitor restart; revoke takes effect at once', async () => {
  await a.swtpm.stop();
  host.control.detach(a.instance, a.swtpm.tpm);
  assert.equal(rc(await send(b, nvReadCommand(INDEX, 32))), TPM_RC.NV_UNAVAILABLE, 'the owner\'s vTPM is down');
  await b.swtpm.stop();
  host.db.close();
  host = await openHost();
  a = await bootVm(host, 'a', keyA, a.vmId);
  b = await bootVm(host, 'b', keyB, vmIdB);
  assert.deepEqual(await readValue(a), SECRET);
  assert.deepEqual(await readValue(b), SECRET, 'the grant survived');
  assert.equal(rc(await send(b, nvWriteCommand(INDEX, randomBytes(32)))), TPM_RC.NV_LOCKED);
  assert.equal(host.control.ownership.revoke(INDEX, { instance: b.instance, vmId: b.vmId }), 1);
  assert.equal(rc(await send(b, nvReadCommand(INDEX, 32))), TPM_RC.NV_AUTHORIZATION, 'the next read after the revoke fails');
  assert.equal(rc(await send(b, nvReadPublicCommand(INDEX))), 0x18b);
  // Unshared again: the owner writes.
  const next = randomBytes(32);
  assert.equal(rc(await send(a, nvWriteCommand(INDEX, next))), TPM_RC.SUCCESS);
  assert.deepEqual(await readValue(a), next);
  assert.equal(rc(await send(a, nvWriteCommand(INDEX, SECRET))), TPM_RC.SUCCESS);
});

test('the swtpm state files hold no NV value in clear', async () => {
  await a.swtpm.stop();
  await b.swtpm.stop();
  for (const vm of [a, b]) {
    assert.equal(statSync(vm.stateDir).mode & 0o777, 0o700);
    for (const f of readdirSync(vm.stateDir)) {
      const bytes = readFileSync(join(vm.stateDir, f));
      assert.equal(bytes.indexOf(SECRET.subarray(0, 16)), -1, `${f} holds A's value in clear`);
    }
  }
  // Oracle: without --key the same value is in the state file in clear, so the search above can find it.
  const plain = await startSwtpm();
  try {
    assert.equal(rc(await transact(plain.port, nvDefineSpaceCommand(nvPublic(INDEX)))), TPM_RC.SUCCESS);
    assert.equal(rc(await transact(plain.port, nvWriteCommand(INDEX, SECRET))), TPM_RC.SUCCESS);
    const found = readdirSync(plain.dir).some((f) => readFileSync(join(plain.dir, f)).indexOf(SECRET.subarray(0, 16)) >= 0);
    assert.ok(found, 'plain swtpm state holds the value');
  } finally {
    await plain.stop();
  }
  host.db.close();
});
