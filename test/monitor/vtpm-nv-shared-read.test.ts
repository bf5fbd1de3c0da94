// A grantee's NV_Read under an unbound HMAC session (what tpm2-tools 5.4 sends) on real, encrypted swtpm
// instances. First real swtpm accepts a command HMAC computed by formats/tpm2/session.ts and its response
// HMAC verifies there (so the proxy's stand-in computes what a TPM computes); then B's session, living in
// B's swtpm, reads A's shared index through the policy.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  TPM_ALG,
  TPM_CC,
  TPM_RC,
  TPM_RH,
  TPMA_NV,
  TpmWriter,
  Tpm2FormatError,
  buildCommand,
  commandParameterHash,
  errorResponse,
  flushContextCommand,
  nvDefineSpaceCommand,
  nvReadPublicCommand,
  nvWriteCommand,
  parseCommand,
  parseNvReadPublicResponse,
  parseNvReadResponse,
  parseResponse,
  responseParameterHash,
  sessionHmac,
  startAuthSessionNonce,
  startupCommand,
  type NvPublic,
} from '../../src/formats/tpm2/index.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { loadOrCreateNvManagerKey } from '../../src/monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../src/monitor/vtpm/nv-policy.ts';
import { SwtpmInstance, vtpmStateDir, vtpmStateId } from '../../src/monitor/vtpm/swtpm-instance.ts';
import { CMD } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import type { CommandPolicy } from '../../src/monitor/vtpm/tpm-proxy.ts';

const root = mkdtempSync(join(tmpdir(), 'vmseal-nv-hmac-'));
after(() => rmSync(root, { recursive: true, force: true }));

const INDEX = 0x01800020;
const AUTH = Buffer.from('index-password');
const SECRET = randomBytes(32);
const rc = (r: Buffer) => r.readUInt32BE(6);
const SHA256 = TPM_ALG.SHA256;

interface Vm {
  instance: string;
  swtpm: SwtpmInstance;
  policy: CommandPolicy;
}

async function bootVm(control: NvAccessControl, name: string): Promise<Vm> {
  const key = randomBytes(32);
  const swtpm = await SwtpmInstance.start({ stateDir: await vtpmStateDir(join(root, 'vtpm'), key), key, name });
  assert.equal((await swtpm.control.request(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), 0);
  assert.equal(rc(await swtpm.tpm.transact(startupCommand())), TPM_RC.SUCCESS);
  const instance = vtpmStateId(key);
  control.attach(instance, swtpm.tpm);
  return { instance, swtpm, policy: control.policyFor(instance) };
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

/** StartAuthSession as tpm2-tools 5.4 sends it: unbound, unsalted, HMAC, symmetric NULL, SHA-256. */
function startHmacSession(): Buffer {
  const params = new TpmWriter().tpm2b(randomBytes(32)).tpm2b(Buffer.alloc(0)).u8(0).u16(TPM_ALG.NULL).u16(SHA256).finish();
  return buildCommand(TPM_CC.StartAuthSession, [TPM_RH.NULL, TPM_RH.NULL], params);
}

interface Session {
  handle: number;
  nonceTpm: Buffer;
}

function started(rsp: Buffer): Session {
  assert.equal(rc(rsp), TPM_RC.SUCCESS, 'StartAuthSession');
  const p = parseResponse(rsp, TPM_CC.StartAuthSession);
  return { handle: p.handles[0]!, nonceTpm: startAuthSessionNonce(p) };
}

/** NV_Read(index, index) under session `s` keyed with `auth`; returns the command and a checker of the response. */
function hmacRead(s: Session, name: Buffer, auth: Buffer, attributes = 1) {
  const params = new TpmWriter().u16(SECRET.length).u16(0).finish();
  const nonceCaller = randomBytes(32);
  const cpHash = commandParameterHash(SHA256, TPM_CC.NV_Read, [name, name], params);
  const hmac = sessionHmac(SHA256, auth, cpHash, nonceCaller, s.nonceTpm, attributes);
  const command = buildCommand(TPM_CC.NV_Read, [INDEX, INDEX], params, [{ handle: s.handle, nonce: nonceCaller, attributes, hmac }]);
  const check = (rsp: Buffer): Buffer => {
    assert.equal(rc(rsp), TPM_RC.SUCCESS, `NV_Read: 0x${rc(rsp).toString(16)}`);
    const p = parseResponse(rsp, TPM_CC.NV_Read);
    const r = p.sessions[0]!;
    const expected = sessionHmac(SHA256, auth, responseParameterHash(SHA256, 0, TPM_CC.NV_Read, p.parameters), r.nonce, nonceCaller, r.attributes);
    assert.deepEqual(r.hmac, expected, 'the response HMAC verifies');
    s.nonceTpm = r.nonce;
    return parseNvReadResponse(p);
  };
  return { command, check };
}

function nvPublic(attributes: number): NvPublic {
  return { nvIndex: INDEX, nameAlg: SHA256, attributes, authPolicy: Buffer.alloc(0), dataSize: SECRET.length };
}

test('HMAC-session NV_Read of a shared index: swtpm agrees with session.ts, and the proxy stands in for B', async () => {
  const db = MonitorDb.open(join(root, 'monitor.db'));
  after(() => db.close());
  const control = new NvAccessControl({ ownership: new NvOwnership(db.sql, await loadOrCreateNvManagerKey(join(root, 'k'))) });
  const a = await bootVm(control, 'a');
  const b = await bootVm(control, 'b');
  after(async () => {
    await a.swtpm.stop();
    await b.swtpm.stop();
  });
  // A defines (the auth in clear: the monitor records it with the claim) and writes.
  const attrs = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.NO_DA;
  assert.equal(rc(await send(a, nvDefineSpaceCommand(nvPublic(attrs), AUTH))), TPM_RC.SUCCESS);
  assert.equal(rc(await send(a, nvWriteCommand(INDEX, SECRET, 0, { password: AUTH }))), TPM_RC.SUCCESS);
  const state = control.ownership.ownerState(INDEX);
  assert.ok(state.kind === 'owned' && state.claim.auth?.equals(AUTH), 'the claim holds the index auth');
  const name = parseNvReadPublicResponse(parseResponse(await a.swtpm.tpm.transact(nvReadPublicCommand(INDEX)), TPM_CC.NV_ReadPublic)).nvName;

  // swtpm itself accepts the HMAC computed here and its response HMAC verifies.
  const own = started(await send(a, startHmacSession()));
  const r1 = hmacRead(own, name, AUTH);
  assert.deepEqual(r1.check(await send(a, r1.command)), SECRET);

  // B, no grant: its session's NV_Read is refused.
  const sb = started(await send(b, startHmacSession()));
  assert.equal(rc(await send(b, hmacRead(sb, name, AUTH).command)), TPM_RC.NV_AUTHORIZATION);

  // Granted: B's session (in B's swtpm) reads A's value, twice; a wrong auth is TPM_RC_AUTH_FAIL.
  if (state.kind !== 'owned') throw new Error('unreachable');
  control.ownership.grant(state.claim, b.instance, randomBytes(16).toString('hex'));
  for (let i = 0; i < 2; i++) {
    const r = hmacRead(sb, name, AUTH);
    assert.deepEqual(r.check(await send(b, r.command)), SECRET);
  }
  assert.equal(rc(await send(b, hmacRead(sb, name, Buffer.from('guess')).command)), 0x98e);
  // The session still lives in B's swtpm with the nonce the stand-in answered with: B's own command verifies there.
  const privateIndex = 0x01500020;
  const priv = { ...nvPublic(attrs), nvIndex: privateIndex };
  assert.equal(rc(await send(b, nvDefineSpaceCommand(priv, AUTH))), TPM_RC.SUCCESS);
  assert.equal(rc(await send(b, nvWriteCommand(privateIndex, SECRET, 0, { password: AUTH }))), TPM_RC.SUCCESS);
  const privName = parseNvReadPublicResponse(parseResponse(await send(b, nvReadPublicCommand(privateIndex)), TPM_CC.NV_ReadPublic)).nvName;
  const params = new TpmWriter().u16(8).u16(0).finish();
  const nc = randomBytes(32);
  const hmac = sessionHmac(SHA256, AUTH, commandParameterHash(SHA256, TPM_CC.NV_Read, [privName, privName], params), nc, sb.nonceTpm, 1);
  assert.equal(rc(await send(b, buildCommand(TPM_CC.NV_Read, [privateIndex, privateIndex], params, [{ handle: sb.handle, nonce: nc, attributes: 1, hmac }]))), TPM_RC.SUCCESS);

  // Without continueSession the session ends, in B's swtpm too.
  const last = started(await send(b, startHmacSession()));
  const r2 = hmacRead(last, name, AUTH, 0);
  assert.deepEqual(r2.check(await send(b, r2.command)), SECRET);
  assert.notEqual(rc(await b.swtpm.tpm.transact(flushContextCommand(last.handle))), TPM_RC.SUCCESS, 'flushed already');

  // After a revoke B is refused at once.
  const sc = started(await send(b, startHmacSession()));
  control.ownership.revoke(INDEX, { instance: b.instance, vmId: '' });
  assert.equal(rc(await send(b, hmacRead(sc, name, AUTH).command)), TPM_RC.NV_AUTHORIZATION);
  assert.deepEqual(parseNvReadResponse(parseResponse(await a.swtpm.tpm.transact(nvReadCommandPw()), TPM_CC.NV_Read)), SECRET, "A's value is unchanged");
});

function nvReadCommandPw(): Buffer {
  return buildCommand(TPM_CC.NV_Read, [INDEX, INDEX], new TpmWriter().u16(SECRET.length).u16(0).finish(), [{ handle: TPM_RH.PW, nonce: Buffer.alloc(0), attributes: 0, hmac: AUTH }]);
}
