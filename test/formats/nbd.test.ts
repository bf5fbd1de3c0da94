// The NBD codec against the numbers and layouts written in NetworkBlockDevice/nbd doc/proto.md,
// round trips, and hostile input (truncated, wrong magic, lengths that lie).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_INFO_REQUEST_LENGTH,
  NBD_INIT_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdCmd,
  NbdCmdFlag,
  NbdErrno,
  NbdFlag,
  NbdHandshakeFlag,
  NbdInfo,
  NbdOpt,
  NbdProtocolError,
  NbdRep,
  NbdReplyFlag,
  NbdReplyType,
  decodeChunkHeader,
  decodeClientFlags,
  decodeErrorChunk,
  decodeExportName,
  decodeExportNameReply,
  decodeInfo,
  decodeInfoRequest,
  decodeOffsetData,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequestHeader,
  decodeServerEntry,
  decodeServerGreeting,
  decodeSimpleReplyHeader,
  encodeClientFlags,
  encodeErrorChunk,
  encodeErrorOffsetChunk,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeInfoRequest,
  encodeNoneChunk,
  encodeOptionReply,
  encodeOptionRequest,
  encodeRequestHeader,
  encodeServerEntry,
  encodeServerGreeting,
  encodeSimpleReply,
  isErrorChunk,
  isErrorReply,
  readU64,
  writeOffsetDataHeader,
  writeU64,
} from '../../src/formats/nbd/index.ts';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('magic numbers are the ones proto.md gives', () => {
  assert.equal(Buffer.from('NBDMAGIC').readBigUInt64BE(0), NBD_INIT_MAGIC);
  assert.equal(Buffer.from('IHAVEOPT').readBigUInt64BE(0), NBD_OPTS_MAGIC);
  assert.equal(NBD_INIT_MAGIC, 0x4e42444d41474943n);
  assert.equal(NBD_OPTS_MAGIC, 0x49484156454f5054n);
  assert.equal(NBD_OPTION_REPLY_MAGIC, 0x3e889045565a9n);
  assert.equal(NBD_REQUEST_MAGIC, 0x25609513);
  assert.equal(NBD_SIMPLE_REPLY_MAGIC, 0x67446698);
  assert.equal(NBD_STRUCTURED_REPLY_MAGIC, 0x668e33ef);
});

test('option, reply, info, command and error numbers match the spec', () => {
  assert.deepEqual(
    [NbdOpt.EXPORT_NAME, NbdOpt.ABORT, NbdOpt.LIST, NbdOpt.STARTTLS, NbdOpt.INFO, NbdOpt.GO, NbdOpt.STRUCTURED_REPLY, NbdOpt.SET_META_CONTEXT],
    [1, 2, 3, 5, 6, 7, 8, 10],
  );
  assert.deepEqual([NbdRep.ACK, NbdRep.SERVER, NbdRep.INFO], [1, 2, 3]);
  assert.equal(NbdRep.ERR_UNSUP, 2 ** 31 + 1);
  assert.equal(NbdRep.ERR_INVALID, 2 ** 31 + 3);
  assert.equal(NbdRep.ERR_UNKNOWN, 2 ** 31 + 6);
  assert.equal(NbdRep.ERR_TOO_BIG, 2 ** 31 + 9);
  assert.ok(isErrorReply(NbdRep.ERR_UNSUP) && !isErrorReply(NbdRep.ACK));
  assert.deepEqual([NbdInfo.EXPORT, NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE], [0, 1, 2, 3]);
  assert.deepEqual(
    [NbdCmd.READ, NbdCmd.WRITE, NbdCmd.DISC, NbdCmd.FLUSH, NbdCmd.TRIM, NbdCmd.CACHE, NbdCmd.WRITE_ZEROES, NbdCmd.BLOCK_STATUS],
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  assert.deepEqual([NbdCmdFlag.FUA, NbdCmdFlag.NO_HOLE, NbdCmdFlag.DF, NbdCmdFlag.REQ_ONE, NbdCmdFlag.FAST_ZERO], [1, 2, 4, 8, 16]);
  assert.deepEqual(
    [NbdFlag.HAS_FLAGS, NbdFlag.READ_ONLY, NbdFlag.SEND_FLUSH, NbdFlag.SEND_FUA, NbdFlag.SEND_TRIM, NbdFlag.SEND_WRITE_ZEROES, NbdFlag.CAN_MULTI_CONN],
    [1, 2, 4, 8, 32, 64, 256],
  );
  assert.deepEqual([NbdHandshakeFlag.FIXED_NEWSTYLE, NbdHandshakeFlag.NO_ZEROES], [1, 2]);
  assert.equal(NbdReplyFlag.DONE, 1);
  assert.deepEqual([NbdReplyType.NONE, NbdReplyType.OFFSET_DATA, NbdReplyType.ERROR, NbdReplyType.ERROR_OFFSET], [0, 1, 32769, 32770]);
  assert.ok(isErrorChunk(NbdReplyType.ERROR) && !isErrorChunk(NbdReplyType.OFFSET_DATA));
  assert.deepEqual(
    [NbdErrno.EPERM, NbdErrno.EIO, NbdErrno.ENOMEM, NbdErrno.EINVAL, NbdErrno.ENOSPC, NbdErrno.EOVERFLOW, NbdErrno.ENOTSUP, NbdErrno.ESHUTDOWN],
    [1, 5, 12, 22, 28, 75, 95, 108],
  );
});

test('server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags', () => {
  const g = encodeServerGreeting(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES);
  assert.deepEqual(g, Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT'), hex('0003')]));
  assert.deepEqual(decodeServerGreeting(g), { handshakeFlags: 3 });
  assert.throws(() => decodeServerGreeting(g.subarray(0, 17)), NbdProtocolError);
  const oldstyle = Buffer.concat([Buffer.from('NBDMAGIC'), hex('0000420281861253'), Buffer.alloc(8)]);
  assert.throws(() => decodeServerGreeting(oldstyle), /oldstyle/);
  assert.throws(() => decodeServerGreeting(Buffer.concat([Buffer.from('NBDMAGIX'), g.subarray(8)])), /NBDMAGIC/);
  assert.throws(() => encodeServerGreeting(0x10000), RangeError);
});

test('client flags are 32 bits big-endian', () => {
  assert.deepEqual(encodeClientFlags(3), hex('00000003'));
  assert.equal(decodeClientFlags(hex('80000001')), 0x80000001);
  assert.throws(() => decodeClientFlags(hex('000000')), NbdProtocolError);
});

test('option request: IHAVEOPT, option, length, data', () => {
  const r = encodeOptionRequest(NbdOpt.GO, Buffer.from('abc'));
  assert.deepEqual(r, Buffer.concat([Buffer.from('IHAVEOPT'), hex('00000007 00000003'), Buffer.from('abc')]));
  assert.deepEqual(decodeOptionHeader(r), { option: 7, length: 3 });
  assert.throws(() => decodeOptionHeader(r.subarray(0, 15)), NbdProtocolError);
  const bad = Buffer.from(r);
  bad[0] = 0x41;
  assert.throws(() => decodeOptionHeader(bad), /IHAVEOPT/);
  // The length is only reported, never trusted: 0xffffffff decodes as a claim.
  assert.equal(decodeOptionHeader(Buffer.concat([Buffer.from('IHAVEOPT'), hex('00000063 ffffffff')])).length, 0xffffffff);
});

test('option reply: magic, option, type, length at offsets 0, 8, 12, 16', () => {
  const r = encodeOptionReply(NbdOpt.LIST, NbdRep.ERR_INVALID, Buffer.from('no'));
  assert.deepEqual(r.subarray(0, 8), hex('0003e889045565a9'));
  assert.equal(r.readUInt32BE(8), 3);
  assert.equal(r.readUInt32BE(12), 0x80000003);
  assert.equal(r.readUInt32BE(16), 2);
  assert.equal(r.subarray(20).toString(), 'no');
  assert.deepEqual(decodeOptionReplyHeader(r), { option: 3, type: 0x80000003, length: 2 });
  assert.throws(() => decodeOptionReplyHeader(r.subarray(0, 19)), NbdProtocolError);
  assert.throws(() => decodeOptionReplyHeader(Buffer.concat([Buffer.alloc(8), r.subarray(8)])), /magic/);
});

test('export name reply: size, flags, 124 zeroes unless NO_ZEROES', () => {
  const full = encodeExportNameReply(16 * 2 ** 20, 0x1234, false);
  assert.equal(full.length, 134);
  assert.deepEqual(full.subarray(0, 10), hex('0000000001000000 1234'));
  assert.ok(full.subarray(10).every((b) => b === 0));
  assert.equal(encodeExportNameReply(1, 1, true).length, 10);
  assert.deepEqual(decodeExportNameReply(full, false), { size: 16 * 2 ** 20, transmissionFlags: 0x1234 });
  assert.throws(() => decodeExportNameReply(full, true), /expected 10/);
  assert.throws(() => decodeExportNameReply(full.subarray(0, 133), false), NbdProtocolError);
  assert.throws(() => encodeExportNameReply(-1, 0, true), RangeError);
});

test('export names are NBD strings: UTF-8, no NUL, at most 4096 bytes', () => {
  assert.equal(decodeExportName(Buffer.from('disk-ü')), 'disk-ü');
  assert.equal(decodeExportName(Buffer.alloc(0)), '');
  assert.throws(() => decodeExportName(hex('ff fe')), /UTF-8/);
  assert.throws(() => decodeExportName(Buffer.from('a\0b')), /NUL/);
  assert.throws(() => decodeExportName(Buffer.alloc(4097, 0x61)), /4096/);
});

test('NBD_OPT_GO/INFO data: name length, name, count, info types; lengths are checked', () => {
  const data = encodeInfoRequest({ name: 'disk', requests: [NbdInfo.BLOCK_SIZE, NbdInfo.NAME] });
  assert.deepEqual(data, Buffer.concat([hex('00000004'), Buffer.from('disk'), hex('0002 0003 0001')]));
  assert.deepEqual(decodeInfoRequest(data), { name: 'disk', requests: [3, 1] });
  assert.deepEqual(decodeInfoRequest(hex('00000000 0000')), { name: '', requests: [] });
  assert.throws(() => decodeInfoRequest(hex('00000000 00')), NbdProtocolError);
  // A name length beyond the data, or beyond "option length - 6".
  assert.throws(() => decodeInfoRequest(hex('ffffffff 0000')), /name length/);
  assert.throws(() => decodeInfoRequest(Buffer.concat([hex('00000004'), Buffer.from('disk'), hex('00')])), NbdProtocolError);
  // Count disagreeing with the bytes present, either way.
  assert.throws(() => decodeInfoRequest(Buffer.concat([hex('00000000'), hex('0002 0003')])), /2 info requests/);
  assert.throws(() => decodeInfoRequest(Buffer.concat([hex('00000000'), hex('0001 0003 0001')])), /1 info requests/);
  assert.throws(() => decodeInfoRequest(Buffer.concat([hex('00000002 ffff'), hex('0000')])), /UTF-8/);
  assert.ok(MAX_INFO_REQUEST_LENGTH >= 4 + 4096 + 2 + 2 * 0xffff);
});

test('NBD_REP_INFO payloads: EXPORT is 12 bytes, BLOCK_SIZE 14, NAME and DESCRIPTION strings', () => {
  const e = encodeInfoExport(2 ** 40 + 5, NbdFlag.HAS_FLAGS | NbdFlag.READ_ONLY);
  assert.deepEqual(e, hex('0000 0000010000000005 0003'));
  assert.deepEqual(decodeInfo(e), { type: 'export', size: 2 ** 40 + 5, transmissionFlags: 3 });
  const b = encodeInfoBlockSize({ min: 1, preferred: 4096, max: 33554432 });
  assert.deepEqual(b, hex('0003 00000001 00001000 02000000'));
  assert.deepEqual(decodeInfo(b), { type: 'block-size', min: 1, preferred: 4096, max: 33554432 });
  assert.deepEqual(decodeInfo(encodeInfoName('x')), { type: 'name', name: 'x' });
  assert.deepEqual(decodeInfo(encodeInfoDescription('a disk')), { type: 'description', description: 'a disk' });
  const unknown = decodeInfo(hex('0009 aabb'));
  assert.equal(unknown.type, 'unknown');
  assert.throws(() => decodeInfo(e.subarray(0, 11)), /length must be 12/);
  assert.throws(() => decodeInfo(Buffer.concat([b, hex('00')])), /length must be 14/);
  assert.throws(() => decodeInfo(hex('00')), NbdProtocolError);
  // A size no number can hold exactly is refused rather than rounded.
  assert.throws(() => decodeInfo(hex('0000 ffffffffffffffff 0001')), /2\^53/);
  assert.throws(() => encodeInfoName('a\0'), RangeError);
});

test('NBD_REP_SERVER data: 32-bit name length, name, description', () => {
  const s = encodeServerEntry('disk', 'boot disk');
  assert.deepEqual(s.subarray(0, 8), Buffer.concat([hex('00000004'), Buffer.from('disk')]));
  assert.deepEqual(decodeServerEntry(s), { name: 'disk', description: 'boot disk' });
  assert.throws(() => decodeServerEntry(hex('00000009 6162')), /exceeds/);
  assert.throws(() => decodeServerEntry(hex('0000')), NbdProtocolError);
});

test('request header: 28 bytes, fields at 0, 4, 6, 8, 16, 24', () => {
  const h = { flags: NbdCmdFlag.FUA, type: NbdCmd.WRITE, cookie: 0xfedcba9876543210n, offset: 2 ** 40, length: 65536 };
  const b = encodeRequestHeader(h);
  assert.deepEqual(b, hex('25609513 0001 0001 fedcba9876543210 0000010000000000 00010000'));
  assert.deepEqual(decodeRequestHeader(b), h);
  assert.deepEqual(decodeRequestHeader(Buffer.concat([hex('aabbcc'), b]), 3), h);
  assert.throws(() => decodeRequestHeader(b.subarray(0, 27)), NbdProtocolError);
  assert.throws(() => decodeRequestHeader(Buffer.concat([hex('25609514'), b.subarray(4)])), /bad magic 0x25609514/);
  assert.throws(() => decodeRequestHeader(b, 1), NbdProtocolError);
  // An offset of 2^64-1 stays larger than any export size.
  const huge = decodeRequestHeader(hex('25609513 0000 0000 0000000000000000 ffffffffffffffff 00000200'));
  assert.ok(huge.offset > Number.MAX_SAFE_INTEGER);
  assert.ok(huge.offset + huge.length > 2 ** 53);
});

test('simple reply: magic, error, cookie (16 bytes)', () => {
  const r = encodeSimpleReply(NbdErrno.EINVAL, 7n);
  assert.deepEqual(r, hex('67446698 00000016 0000000000000007'));
  assert.deepEqual(decodeSimpleReplyHeader(r), { error: 22, cookie: 7n });
  assert.throws(() => decodeSimpleReplyHeader(r.subarray(0, 15)), NbdProtocolError);
  assert.throws(() => decodeSimpleReplyHeader(hex('668e33ef 00000000 0000000000000000')), /magic/);
});

test('structured chunks: header layout, OFFSET_DATA, NONE with DONE', () => {
  const none = encodeNoneChunk(9n);
  assert.deepEqual(none, hex('668e33ef 0001 0000 0000000000000009 00000000'));
  assert.deepEqual(decodeChunkHeader(none), { flags: 1, type: 0, cookie: 9n, length: 0 });
  const b = Buffer.alloc(28 + 3);
  writeOffsetDataHeader(b, 0, 5n, 4096, 3, NbdReplyFlag.DONE);
  b.write('abc', 28);
  assert.deepEqual(b.subarray(0, 28), hex('668e33ef 0001 0001 0000000000000005 0000000b 0000000000001000'));
  assert.deepEqual(decodeOffsetData(b.subarray(20)), { offset: 4096, data: Buffer.from('abc') });
  assert.throws(() => decodeOffsetData(b.subarray(20, 28)), /at least 9/);
  assert.throws(() => writeOffsetDataHeader(b, 0, 5n, 0, 0, 1), RangeError);
  assert.throws(() => decodeChunkHeader(none.subarray(0, 19)), NbdProtocolError);
});

test('error chunks: error, message length, message (and offset); hostile lengths refused', () => {
  const e = encodeErrorChunk(3n, NbdErrno.EIO, 'bad sector');
  assert.deepEqual(e.subarray(0, 26), hex('668e33ef 0001 8001 0000000000000003 00000010 00000005 000a'));
  assert.deepEqual(decodeErrorChunk(NbdReplyType.ERROR, e.subarray(20)), { error: 5, message: 'bad sector' });
  const eo = encodeErrorOffsetChunk(3n, NbdErrno.EIO, 'x', 8192);
  assert.equal(decodeChunkHeader(eo).length, 6 + 1 + 8);
  assert.deepEqual(decodeErrorChunk(NbdReplyType.ERROR_OFFSET, eo.subarray(20)), { error: 5, message: 'x', offset: 8192 });
  assert.throws(() => decodeErrorChunk(NbdReplyType.ERROR, hex('00000005 0100 41')), /message length 256/);
  assert.throws(() => decodeErrorChunk(NbdReplyType.ERROR, hex('00000000 0000')), /nonzero/);
  assert.throws(() => decodeErrorChunk(NbdReplyType.ERROR_OFFSET, hex('00000005 0000 0000')), NbdProtocolError);
  assert.throws(() => decodeErrorChunk(NbdReplyType.OFFSET_DATA, hex('00000005 0000')), /not an error chunk/);
  assert.throws(() => encodeErrorChunk(1n, 0, 'x'), RangeError);
  assert.throws(() => encodeErrorChunk(1n, 5, 'x'.repeat(4097)), RangeError);
});

test('64-bit fields: exact below 2^53, refused when a size would be inexact', () => {
  const b = Buffer.alloc(8);
  writeU64(b, 0, Number.MAX_SAFE_INTEGER);
  assert.equal(readU64(b, 0), Number.MAX_SAFE_INTEGER);
  assert.throws(() => writeU64(b, 0, 2 ** 53), RangeError);
  assert.throws(() => writeU64(b, 0, 1.5), RangeError);
});
