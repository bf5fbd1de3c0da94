// The bookkeeping shared by swtpm's data and control channels: one request on the wire at a time, answers
// matched in order, a picker that holds some requests back, and a failure that rejects everything.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SerialRequests } from '../../src/monitor/vtpm/serial-requests.ts';

test('one request in flight at a time, answered in order', async () => {
  const sent: string[] = [];
  const q = new SerialRequests<string>({ send: (r) => sent.push(r), close: () => assert.fail('not failed') });
  const a = q.submit('a');
  const b = q.submit('b');
  assert.deepEqual(sent, ['a'], 'b waits for a');
  assert.equal(q.inFlight, 'a');
  q.complete(Buffer.from('A'));
  assert.deepEqual(sent, ['a', 'b']);
  q.complete(Buffer.from('B'));
  assert.deepEqual([(await a).toString(), (await b).toString()], ['A', 'B']);
  assert.equal(q.inFlight, undefined);
});

test('the picker holds requests back until next() is called with it willing', async () => {
  const sent: string[] = [];
  let onlyX = true;
  const q = new SerialRequests<string>({ send: (r) => sent.push(r), close: () => undefined, pick: (w) => (onlyX ? w.indexOf('x') : 0) });
  const g = q.submit('guest');
  assert.deepEqual(sent, [], 'not eligible');
  const x = q.submit('x');
  assert.deepEqual(sent, ['x'], 'the eligible one overtakes');
  q.complete(Buffer.from('X'));
  assert.deepEqual(sent, ['x'], 'the guest still waits');
  onlyX = false;
  q.next();
  assert.deepEqual(sent, ['x', 'guest']);
  q.complete(Buffer.from('G'));
  assert.equal((await x).toString(), 'X');
  assert.equal((await g).toString(), 'G');
});

test('a failure rejects the request in flight, the waiting ones and later ones, and closes once', async () => {
  let closed = 0;
  const q = new SerialRequests<string>({ send: () => undefined, close: () => closed++ });
  const a = q.submit('a');
  const b = q.submit('b');
  q.fail(new Error('gone'));
  q.fail(new Error('again'));
  await assert.rejects(a, /gone/);
  await assert.rejects(b, /gone/);
  await assert.rejects(q.submit('c'), /gone/);
  assert.equal(closed, 1);
  assert.equal(q.failed?.message, 'gone');
  q.complete(Buffer.from('late'));
  assert.equal(q.inFlight, undefined);
});

test('a send that throws fails the channel', async () => {
  let closed = 0;
  const q = new SerialRequests<string>({ send: () => { throw new Error('EPIPE'); }, close: () => closed++ });
  await assert.rejects(q.submit('a'), /EPIPE/);
  assert.equal(closed, 1);
});
