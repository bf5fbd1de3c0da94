// vmseal's vendor commands (share / revoke from inside the owner guest): exact bytes, parsing, and the
// response codes for malformed ones. The expected bytes are written out by hand from the documented layout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TPM_CC, TPM_RC, Tpm2FormatError, buildCommand, guestGrantCommand, guestGrantResponse, parseCommand, parseGuestGrant, parseResponse, passwordSession } from '../../src/formats/tpm2/index.ts';

const VM = '0123456789abcdef0123456789abcdef';
const VM_ASCII = Buffer.from(VM, 'latin1').toString('hex');

function rcOf(f: () => unknown): number {
  try {
    f();
  } catch (err) {
    if (err instanceof Tpm2FormatError) return err.rc;
    throw err;
  }
  assert.fail('no error');
}

test('the share command has the documented layout', () => {
  const expected =
    '8002' + // TPM_ST_SESSIONS
    '00000040' + // 64 = 61 + 3-byte password
    '20005601' + // Vmseal_NV_Share
    '01800010' + // @nvIndex
    '0000000c' + // authorizationSize = 9 + 3
    '40000009' + '0000' + '00' + '0003' + '707721' + // TPM_RS_PW, no nonce, no attributes, "pw!"
    '0020' + VM_ASCII;
  assert.equal(guestGrantCommand('share', 0x01800010, VM, Buffer.from('pw!')).toString('hex'), expected);
  assert.equal(guestGrantCommand('revoke', 0x01800010, VM).readUInt32BE(6), 0x20005602);
  assert.throws(() => guestGrantCommand('share', 0x01800010, 'not-an-id'), RangeError);
});

test('parseGuestGrant reads the op, index, password (trailing zeros stripped) and grantee', () => {
  const r = parseGuestGrant(parseCommand(guestGrantCommand('share', 0x01800010, VM.toUpperCase(), Buffer.from('pw\0\0'))));
  assert.deepEqual({ ...r, password: r.password.toString() }, { op: 'share', nvIndex: 0x01800010, password: 'pw', granteeVmId: VM, sessionAttributes: 0 });
  assert.equal(parseGuestGrant(parseCommand(guestGrantCommand('revoke', 0x01800011, VM))).op, 'revoke');
});

test('malformed grant commands get the TPM response code a TPM would give them', () => {
  const params = Buffer.concat([Buffer.from([0, 32]), Buffer.from(VM, 'latin1')]);
  const cmd = (o: { code?: number; handle?: number; sessions?: Parameters<typeof buildCommand>[3]; params?: Buffer }) =>
    parseCommand(buildCommand(o.code ?? TPM_CC.Vmseal_NV_Share, [o.handle ?? 0x01800010], o.params ?? params, o.sessions ?? [passwordSession(Buffer.from('pw'))]));
  assert.equal(rcOf(() => parseGuestGrant(cmd({ sessions: [] }))), TPM_RC.AUTH_MISSING);
  assert.equal(rcOf(() => parseGuestGrant(cmd({ sessions: [passwordSession(), passwordSession()] }))), TPM_RC.AUTH_TYPE);
  assert.equal(rcOf(() => parseGuestGrant(cmd({ sessions: [{ handle: 0x02000000, nonce: Buffer.alloc(16), attributes: 0, hmac: Buffer.alloc(32) }] }))), TPM_RC.AUTH_TYPE);
  assert.equal(rcOf(() => parseGuestGrant(cmd({ sessions: [{ ...passwordSession(), nonce: Buffer.alloc(4) }] }))), 0x995, 'TPM_RC_SIZE, session 1');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ sessions: [{ ...passwordSession(), attributes: 0x20 }] }))), 0x982, 'TPM_RC_ATTRIBUTES, session 1');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ handle: 0x81000001 }))), 0x18b, 'not an NV index: TPM_RC_HANDLE, handle 1');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ params: Buffer.alloc(1) }))), 0x1da, 'TPM_RC_INSUFFICIENT, parameter 1');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ params: Buffer.concat([Buffer.from([0, 16]), Buffer.alloc(16, 0x61)]) }))), 0x1d5, 'TPM_RC_SIZE, parameter 1');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ params: Buffer.concat([Buffer.from([0, 32]), Buffer.alloc(30, 0x61)]) }))), 0x1da);
  assert.equal(rcOf(() => parseGuestGrant(cmd({ params: Buffer.concat([Buffer.from([0, 32]), Buffer.alloc(32, 0x7a)]) }))), 0x1c4, 'not hex: TPM_RC_VALUE, parameter 1');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ params: Buffer.concat([params, Buffer.alloc(1)]) }))), TPM_RC.SIZE, 'trailing bytes');
  assert.equal(rcOf(() => parseGuestGrant(cmd({ code: TPM_CC.NV_ReadPublic, sessions: [] }))), TPM_RC.COMMAND_CODE);
  // A truncated handle area is caught by parseCommand, as for any command.
  const short = Buffer.from('80010000000c2000560101800000', 'hex').subarray(0, 12);
  short.writeUInt32BE(12, 2);
  assert.equal(rcOf(() => parseCommand(short)), 0x19a, 'TPM_RC_INSUFFICIENT, handle 1');
  // Other vendor codes stay unknown.
  assert.equal(rcOf(() => parseCommand(Buffer.from('80010000000a20005603', 'hex'))), TPM_RC.COMMAND_CODE);
});

test('the success response is a sessions response with one empty password-session answer', () => {
  const rsp = guestGrantResponse(0x01);
  assert.equal(rsp.toString('hex'), '80020000001300000000' + '00000000' + '0000' + '01' + '0000');
  const p = parseResponse(rsp, TPM_CC.Vmseal_NV_Share);
  assert.equal(p.responseCode, TPM_RC.SUCCESS);
  assert.deepEqual(p.sessions, [{ nonce: Buffer.alloc(0), attributes: 1, hmac: Buffer.alloc(0) }]);
});
