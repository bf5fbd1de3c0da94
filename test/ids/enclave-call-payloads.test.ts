import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FrameDecoder, FrameKind, Ocall, encodeFrameHeader, pslistResultSchema } from '../../src/formats/protocol/enclave-call.ts';

const row = { pid: 1, ppid: 0, comm: 'init', uid: 0, euid: 0, state: 'S', threads: 1, kthread: false, task: '0xffff888003a4c000' };

test('the process list accepts the rows the check reports and refuses anything else', () => {
  assert.equal(pslistResultSchema.parse({ processes: [row, { ...row, uid: -1, euid: -1, pid: 0xffff_fffe }] }).processes.length, 2);
  for (const bad of [{ ...row, extra: 1 }, { ...row, task: 'ffff888003a4c000' }, { ...row, pid: 1.5 }, { ...row, comm: 'x'.repeat(65) }, { ...row, kthread: 'no' }, {}]) {
    assert.equal(pslistResultSchema.safeParse({ processes: [bad] }).success, false, JSON.stringify(bad));
  }
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
