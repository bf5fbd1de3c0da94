/**
 * The relay stream between the host library and the monitor (one upgraded connection per session):
 * replies come back in order, refusals keep their code and do not end the stream, and a hostile
 * length or a wrong upgrade is refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Fastify from 'fastify';
import { IDS_STREAM_MAX_REQUEST_BYTES, IDS_STREAM_PROTOCOL } from '../../src/formats/protocol/ids-channel.ts';
import { MonitorFrameStream } from '../../src/ids/host/frame-stream.ts';
import { IdsHostRequestError } from '../../src/ids/host/http.ts';
import { attachIdsChannelStream } from '../../src/monitor/api/ids-channel-stream.ts';
import { RefusalError } from '../../src/monitor/identity/refusal.ts';

const SESSION = 'ab'.repeat(16);

async function monitorWith(idsRead: (sessionId: string, frame: Buffer) => Promise<Buffer>) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmseal-relay-'));
  const socketPath = path.join(dir, 'monitor.sock');
  const app = Fastify();
  attachIdsChannelStream(app, { idsRead }, () => false);
  await app.listen({ path: socketPath });
  return { socketPath, close: async () => { await app.close(); await rm(dir, { recursive: true, force: true }); } };
}

test('frames go out on one connection and their replies come back in order; a refusal keeps its code', async (t) => {
  const seen: string[] = [];
  const m = await monitorWith(async (sessionId, frame) => {
    seen.push(sessionId);
    if (frame.toString() === 'replay') throw new RefusalError('REPLAY', 'seq 3, expected 4');
    // Later frames answered sooner would come back out of order if the stream did not serialise them.
    await new Promise((r) => setTimeout(r, frame.length === 1 ? 30 : 0));
    // A reply far larger than a request (a list of task records), split however the socket likes.
    if (frame.toString() === 'big') return Buffer.alloc(3_000_000, 5);
    return Buffer.concat([Buffer.from('re:'), frame]);
  });
  t.after(m.close);
  const stream = new MonitorFrameStream(m.socketPath, () => SESSION);
  t.after(() => stream.close());
  const request = Buffer.alloc(200_000, 7);
  const [a, b, c, d] = await Promise.all([stream.exchange(Buffer.from('x')), stream.exchange(Buffer.from('yy')), stream.exchange(request), stream.exchange(Buffer.from('big'))]);
  assert.equal(a.toString(), 're:x');
  assert.equal(b.toString(), 're:yy');
  assert.deepEqual(c.subarray(3), request);
  assert.deepEqual(d, Buffer.alloc(3_000_000, 5));
  await assert.rejects(stream.exchange(Buffer.from('replay')), (err: unknown) => err instanceof IdsHostRequestError && err.status === 403 && err.code === 'REPLAY' && /expected 4/.test(err.message));
  assert.equal((await stream.exchange(Buffer.from('after'))).toString(), 're:after');
  assert.deepEqual(new Set(seen), new Set([SESSION]));
});

test('a request length over the limit ends the connection without a read; a wrong upgrade is refused', async (t) => {
  let reads = 0;
  const m = await monitorWith(async (_s, f) => {
    reads++;
    return f;
  });
  t.after(m.close);
  const raw = (request: string, then?: Buffer) =>
    new Promise<string>((resolve) => {
      const s = connect(m.socketPath);
      let got = '';
      s.on('data', (d) => {
        got += d.toString('latin1');
        if (then && got.includes('\r\n\r\n')) s.write(then);
      });
      s.on('close', () => resolve(got));
      s.on('error', () => undefined);
      s.write(request);
    });
  const upgrade = (p: string, proto = IDS_STREAM_PROTOCOL) => `GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${proto}\r\n\r\n`;
  const tooLong = Buffer.alloc(4);
  tooLong.writeUInt32BE(IDS_STREAM_MAX_REQUEST_BYTES + 1);
  const cut = await raw(upgrade(`/v1/ids/sessions/${SESSION}/channel`), tooLong);
  assert.match(cut, /^HTTP\/1.1 101 /);
  assert.equal(cut.split('\r\n\r\n')[1], '');
  assert.match(await raw(upgrade('/v1/ids/sessions/not-hex/channel')), /^HTTP\/1.1 400 /);
  assert.match(await raw(upgrade(`/v1/ids/sessions/${SESSION}/channel`, 'websocket')), /^HTTP\/1.1 400 /);
  assert.equal(reads, 0);
});

test('a burst of frames far beyond the read-ahead window is paused, then every frame is answered in order', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let answered = 0;
  const m = await monitorWith(async (_s, frame) => {
    await gate;
    answered++;
    return frame;
  });
  t.after(m.close);
  const stream = new MonitorFrameStream(m.socketPath, () => SESSION);
  t.after(() => stream.close());
  const replies = Array.from({ length: 200 }, (_, i) => stream.exchange(Buffer.from(`frame ${i}`)));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(answered, 0);
  release();
  const got = await Promise.all(replies);
  assert.deepEqual(got.map((b) => b.toString()), Array.from({ length: 200 }, (_, i) => `frame ${i}`));
});
