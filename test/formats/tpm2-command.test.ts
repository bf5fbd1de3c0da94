// TPM 2.0 framing without a TPM: response-code encodings as Part 2 / tss2_tpm2_types.h define them,
// the checks parseCommand applies and the RC each failure answers, builders round-tripping through the
// parser, and structure codecs (NV public, PCR selection, signature, attest) on hostile input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  TPM_ALG,
  TPM_CC,
  TPM_RC,
  TPM_RH,
  TPM_ST,
  TPMA_NV,
  Tpm2FormatError,
  allCommands,
  buildCommand,
  decodePcrSelection,
  decodeRc,
  encodeNvPublic,
  encodePcrSelection,
  errorResponse,
  nvAccess,
  nvReadCommand,
  nvWriteCommand,
  nvDefineSpaceCommand,
  parseAttest,
  parseCommand,
  parseResponse,
  parseSignature,
  passwordSession,
  pcrExtendCommand,
  rcForHandle,
  rcForParameter,
  rcForSession,
  splitMessages,
} from '../../src/formats/tpm2/index.ts';

function rcOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof Tpm2FormatError, `not a Tpm2FormatError: ${String(e)}`);
    return e.rc;
  }
  assert.fail('did not throw');
}

test('response codes have the values and format-one encodings of Part 2', () => {
  assert.equal(TPM_RC.NV_AUTHORIZATION, 0x149);
  assert.equal(TPM_RC.NV_LOCKED, 0x148);
  assert.equal(TPM_RC.COMMAND_CODE, 0x143);
  assert.equal(TPM_RC.COMMAND_SIZE, 0x142);
  assert.equal(TPM_RC.AUTHSIZE, 0x144);
  assert.equal(TPM_RC.NV_SPACE, 0x14b);
  assert.equal(TPM_RC.HANDLE, 0x08b);
  assert.equal(TPM_RC.INSUFFICIENT, 0x09a);
  // TPM_RC_HANDLE + TPM_RC_1 (handle 1) = 0x18b; + TPM_RC_2 = 0x28b; parameter 1 adds TPM_RC_P (0x40); session 1 adds TPM_RC_S (0x800).
  assert.equal(rcForHandle(TPM_RC.HANDLE, 1), 0x18b);
  assert.equal(rcForHandle(TPM_RC.HANDLE, 2), 0x28b);
  assert.equal(rcForParameter(TPM_RC.SIZE, 1), 0x1d5);
  assert.equal(rcForSession(TPM_RC.AUTH_FAIL, 1), 0x98e);
  // 0x2d2 and 0x2d6 are what tpm2-tools decodes as "parameter(2): scheme/symmetric" (seen from swtpm).
  assert.equal(rcForParameter(TPM_RC.SCHEME, 2), 0x2d2);
  assert.deepEqual(decodeRc(0x2d6), { base: TPM_RC.SYMMETRIC, parameter: 2 });
  assert.deepEqual(decodeRc(0x18b), { base: TPM_RC.HANDLE, handle: 1 });
  assert.deepEqual(decodeRc(0x98e), { base: TPM_RC.AUTH_FAIL, session: 1 });
  assert.deepEqual(decodeRc(0x149), { base: 0x149 });
  assert.throws(() => rcForHandle(TPM_RC.NV_LOCKED, 1), RangeError);
});

test('errorResponse is the 10-byte TPM error response', () => {
  assert.equal(errorResponse(TPM_RC.NV_AUTHORIZATION).toString('hex'), '80010000000a00000149');
  assert.equal(errorResponse(TPM_RC.BAD_TAG, TPM_ST.RSP_COMMAND).toString('hex'), '00c40000000a0000001e');
  const r = parseResponse(errorResponse(0x18b), TPM_CC.NV_Read);
  assert.equal(r.responseCode, 0x18b);
});

test('the command table has unique codes and the NV handle positions of Part 3', () => {
  const codes = allCommands().map((c) => c.code);
  assert.equal(new Set(codes).size, codes.length);
  const h = (code: number) => allCommands().find((c) => c.code === code)!.handles;
  assert.equal(h(TPM_CC.NV_Read), 2);
  assert.equal(h(TPM_CC.NV_Certify), 3);
  assert.equal(h(TPM_CC.NV_ReadPublic), 1);
  assert.equal(h(TPM_CC.FlushContext), 0);
  assert.equal(h(TPM_CC.PolicyNV), 3);
});

test('parseCommand refuses bad framing with the RC a TPM answers', () => {
  const good = nvReadCommand(0x1500016, 8, 0, { authHandle: TPM_RH.OWNER });
  assert.equal(parseCommand(good).name, 'NV_Read');
  assert.equal(rcOf(() => parseCommand(good.subarray(0, 9))), TPM_RC.COMMAND_SIZE);
  assert.equal(rcOf(() => parseCommand(good.subarray(0, good.length - 1))), TPM_RC.COMMAND_SIZE);
  assert.equal(rcOf(() => parseCommand(Buffer.concat([good, Buffer.alloc(1)]))), TPM_RC.COMMAND_SIZE);
  const bigger = Buffer.concat([good, Buffer.alloc(5000)]);
  bigger.writeUInt32BE(bigger.length, 2);
  assert.equal(rcOf(() => parseCommand(bigger)), TPM_RC.COMMAND_SIZE);
  assert.equal(parseCommand(bigger, { maxSize: 8192 }).name, 'NV_Read');
  const tag12 = Buffer.from(good);
  tag12.writeUInt16BE(0x00c1, 0);
  assert.equal(rcOf(() => parseCommand(tag12)), TPM_RC.VALUE); // as libtpms answers
  const unknown = Buffer.from(good);
  unknown.writeUInt32BE(0x2000_0000, 6);
  assert.equal(rcOf(() => parseCommand(unknown)), TPM_RC.COMMAND_CODE);
  unknown.writeUInt32BE(0x123, 6); // a gap in the command code space
  assert.equal(rcOf(() => parseCommand(unknown)), TPM_RC.COMMAND_CODE);
  // Header says NV_Read but only one handle follows.
  const oneHandle = buildCommand(TPM_CC.NV_ReadPublic, [0x1500016], Buffer.alloc(0));
  oneHandle.writeUInt32BE(TPM_CC.NV_Read, 6);
  assert.equal(rcOf(() => parseCommand(oneHandle)), rcForHandle(TPM_RC.INSUFFICIENT, 2));
});

test('parseCommand checks the authorization area', () => {
  const cmd = nvWriteCommand(0x1500016, Buffer.from('data'), 0);
  const p = parseCommand(cmd);
  assert.equal(p.sessions.length, 1);
  assert.equal(p.sessions[0]!.handle, TPM_RH.PW);
  const authAt = 10 + 8;
  const withAuth = (n: number) => {
    const b = Buffer.from(cmd);
    b.writeUInt32BE(n, authAt);
    return b;
  };
  assert.equal(rcOf(() => parseCommand(withAuth(0))), TPM_RC.SIZE);
  assert.equal(rcOf(() => parseCommand(withAuth(8))), TPM_RC.SIZE);
  assert.equal(rcOf(() => parseCommand(withAuth(0xffffffff))), TPM_RC.SIZE);
  assert.equal(rcOf(() => parseCommand(withAuth(10))), rcForSession(TPM_RC.INSUFFICIENT, 2)); // one byte of a second session
  const reserved = Buffer.from(cmd);
  reserved[authAt + 4 + 4 + 2] = 0x08;
  assert.equal(rcOf(() => parseCommand(reserved)), rcForSession(TPM_RC.RESERVED_BITS, 1));
  const notSession = Buffer.from(cmd);
  notSession.writeUInt32BE(TPM_RH.OWNER, authAt + 4);
  assert.equal(rcOf(() => parseCommand(notSession)), rcForSession(TPM_RC.VALUE, 1));
  const fourSessions = buildCommand(TPM_CC.NV_Read, [TPM_RH.OWNER, 0x1500016], Buffer.from([0, 1, 0, 0]), [1, 2, 3, 4].map(() => passwordSession()));
  assert.equal(rcOf(() => parseCommand(fourSessions)), rcForSession(TPM_RC.SIZE, 4));
  const longHmac = buildCommand(TPM_CC.NV_Read, [TPM_RH.OWNER, 0x1500016], Buffer.from([0, 1, 0, 0]), [passwordSession(Buffer.alloc(65))]);
  assert.equal(rcOf(() => parseCommand(longHmac)), rcForSession(TPM_RC.SIZE, 1));
  // No authorizationSize at all after the handles.
  const bare = Buffer.alloc(18);
  bare.writeUInt16BE(TPM_ST.SESSIONS, 0);
  bare.writeUInt32BE(18, 2);
  bare.writeUInt32BE(TPM_CC.NV_Read, 6);
  assert.equal(rcOf(() => parseCommand(bare)), TPM_RC.AUTHSIZE);
});

test('nvAccess: index, handle position, operation and parameters of each NV command', () => {
  const idx = 0x1500016;
  const pub = { nvIndex: idx, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, authPolicy: Buffer.alloc(0), dataSize: 32 };
  const def = nvAccess(parseCommand(nvDefineSpaceCommand(pub, Buffer.from('pw'))))!;
  assert.equal(def.op, 'define');
  assert.equal(def.nvIndex, idx);
  assert.equal(def.authHandle, TPM_RH.OWNER);
  assert.deepEqual(def.publicInfo, pub);
  assert.equal(def.auth!.toString(), 'pw');
  const w = nvAccess(parseCommand(nvWriteCommand(idx, Buffer.from('abc'), 7)))!;
  assert.deepEqual([w.op, w.kind, w.nvIndex, w.handlePosition, w.authHandle, w.offset, w.data!.toString()], ['write', 'write', idx, 1, idx, 7, 'abc']);
  const r = nvAccess(parseCommand(nvReadCommand(idx, 16, 4, { authHandle: TPM_RH.OWNER })))!;
  assert.deepEqual([r.op, r.kind, r.nvIndex, r.authHandle, r.size, r.offset], ['read', 'read', idx, TPM_RH.OWNER, 16, 4]);
  const special = nvAccess(parseCommand(buildCommand(TPM_CC.NV_UndefineSpaceSpecial, [idx, TPM_RH.PLATFORM], Buffer.alloc(0), [passwordSession(), passwordSession()])))!;
  assert.deepEqual([special.op, special.nvIndex, special.handlePosition], ['undefineSpecial', idx, 0]);
  const certify = nvAccess(parseCommand(buildCommand(TPM_CC.NV_Certify, [0x80000000, TPM_RH.OWNER, idx], Buffer.from('0000' + '0010' + '0020' + '0000', 'hex'), [passwordSession(), passwordSession()])))!;
  assert.deepEqual([certify.op, certify.kind, certify.nvIndex, certify.handlePosition, certify.size], ['certify', 'read', idx, 2, 32]);
  assert.equal(nvAccess(parseCommand(pcrExtendCommand(16, [{ hashAlg: TPM_ALG.SHA256, digest: Buffer.alloc(32) }]))), undefined);
  // Parameters that lie: NV_Write data size beyond the buffer, trailing bytes, a public area of another size.
  const lying = nvWriteCommand(idx, Buffer.from('abc'), 0);
  lying.writeUInt16BE(0x0800, lying.length - 2 - 3 - 2);
  assert.equal(rcOf(() => nvAccess(parseCommand(lying))), rcForParameter(TPM_RC.INSUFFICIENT, 1));
  const trailing = buildCommand(TPM_CC.NV_ReadPublic, [idx], Buffer.alloc(1));
  assert.equal(rcOf(() => nvAccess(parseCommand(trailing))), TPM_RC.SIZE);
  const badPub = Buffer.from(encodeNvPublic(pub));
  badPub.writeUInt16BE(badPub.readUInt16BE(0) + 1, 0);
  const badDef = buildCommand(TPM_CC.NV_DefineSpace, [TPM_RH.OWNER], Buffer.concat([Buffer.from([0, 0]), badPub, Buffer.alloc(1)]), [passwordSession()]);
  assert.equal(rcOf(() => nvAccess(parseCommand(badDef))), rcForParameter(TPM_RC.SIZE, 2));
});

test('PCR selection round-trips and rejects oversized input', () => {
  const sel = [
    { hashAlg: TPM_ALG.SHA1, pcrs: [0, 7] },
    { hashAlg: TPM_ALG.SHA256, pcrs: [0, 8, 9, 23] },
  ];
  const enc = encodePcrSelection(sel);
  assert.equal(enc.toString('hex'), '00000002' + '0004' + '03' + '810000' + '000b' + '03' + '010380');
  assert.deepEqual(decodePcrSelection(enc), sel);
  assert.equal(rcOf(() => decodePcrSelection(Buffer.from('00000011', 'hex'))), TPM_RC.SIZE);
  assert.equal(rcOf(() => decodePcrSelection(Buffer.from('00000001000b05ffffffffff', 'hex'))), TPM_RC.VALUE);
});

test('parseAttest and parseSignature refuse what a TPM did not make', () => {
  assert.equal(rcOf(() => parseAttest(Buffer.from('ff544348801800', 'hex'))), TPM_RC.VALUE);
  assert.equal(rcOf(() => parseAttest(Buffer.from('ff5443478018ffff', 'hex'))), TPM_RC.SIZE);
  assert.equal(rcOf(() => parseSignature(Buffer.from('0099', 'hex'))), TPM_RC.SCHEME);
  assert.equal(rcOf(() => parseSignature(Buffer.from('0014000b0400', 'hex'))), TPM_RC.SIZE);
  assert.deepEqual(parseSignature(Buffer.from('0010', 'hex')), { sigAlg: TPM_ALG.NULL });
});

test('splitMessages frames a byte stream by header size', () => {
  const a = errorResponse(TPM_RC.HANDLE);
  const b = pcrExtendCommand(16, [{ hashAlg: TPM_ALG.SHA256, digest: Buffer.alloc(32) }]);
  const { messages, rest } = splitMessages(Buffer.concat([a, b, b.subarray(0, 5)]));
  assert.equal(messages.length, 2);
  assert.equal(rest.length, 5);
  assert.throws(() => splitMessages(Buffer.from('80010000000300000000', 'hex')), Tpm2FormatError);
});
