import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EnclaveCallError, FrameDecoder, FrameKind, Ocall, decodePsRows, encodeFrameHeader, encodePsRows } from '../../src/formats/protocol/enclave-call.ts';

const row = { pid: 1, ppid: 0, comm: 'init', uid: 0, euid: 0, state: 'S', threads: 1, kthread: false, task: '0xffff888003a4c000' };

test('the process list round-trips the rows the check reports and refuses anything else', () => {
  const rows = [row, { ...row, uid: -1, euid: -1, pid: 0xffff_fffe, comm: 'kworker/0:1H-é', kthread: true, task: '0x0' }];
  assert.deepEqual(decodePsRows(encodePsRows(rows)), rows);
  for (const bad of [{ ...row, task: 'ffff888003a4c000' }, { ...row, pid: 1.5 }, { ...row, uid: -0x8000_0001 }, { ...row, comm: 'x'.repeat(65) }, { ...row, state: 'S'.repeat(9) }]) {
    assert.throws(() => encodePsRows([bad]), EnclaveCallError, JSON.stringify(bad));
  }
  const good = encodePsRows([row]);
  const tampered = (at: number, patch: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good);
    patch(b.subarray(at));
    return b;
  };
  for (const bad of [
    good.subarray(0, good.length - 1), // truncated
    Buffer.concat([good, Buffer.of(0)]), // trailing byte
    tampered(0, (b) => b.writeUInt32LE(0xffff_ffff)), // a count the input cannot hold
    tampered(4, (b) => b.writeDoubleLE(0.5)), // pid not an integer
    tampered(4 + 8, (b) => b.writeDoubleLE(2 ** 32)), // ppid over u32
    tampered(4 + 40, (b) => b.writeUInt8(2)), // kthread neither 0 nor 1
    tampered(4 + 49, (b) => b.writeUInt8(200)), // state longer than the input
  ]) {
    assert.throws(() => decodePsRows(bad), EnclaveCallError);
  }
  assert.deepEqual(decodePsRows(encodePsRows([])), []);
});

test('a header written before a payload in pieces frames it exactly, however the stream splits it', () => {
  const pieces = [Buffer.of(0), Buffer.alloc(300_000, 7), Buffer.from('tail')];
  const total = pieces.reduce((n, p) => n + p.length, 0);
  const stream = Buffer.concat([encodeFrameHeader(FrameKind.ocallResult, Ocall.channelRead, 9, total), ...pieces]);
  const d = new FrameDecoder();
  const frames = [];
  for (let at = 0; at < stream.length; at += 65_536) frames.push(...d.push(stream.subarray(at, at + 65_536)));
  assert.equal(frames.length, 1);
  assert.equal(frames[0]?.callId, 9);
  assert.deepEqual(frames[0]?.payload, Buffer.concat(pieces));
  assert.throws(() => encodeFrameHeader(FrameKind.ocallResult, 42, 1, 0), /unknown frame kind/);
});
