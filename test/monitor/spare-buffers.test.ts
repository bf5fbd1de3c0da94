import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SpareBuffers } from '../../src/monitor/disk/buffer-pool.ts';

test('spare buffers: cut to the length asked, reused whole once given back, bounded in size and count', () => {
  const spares = new SpareBuffers(2, 1024 * 1024, 64 * 1024);
  const a = spares.take(4096);
  assert.equal(a.length, 4096);
  assert.equal(a.buffer.byteLength, 64 * 1024, 'small requests get a buffer of the minimum size');
  spares.give(a);
  const b = spares.take(32 * 1024);
  assert.equal(b.length, 32 * 1024);
  assert.equal(b.buffer, a.buffer, 'the given-back buffer serves a larger request that fits');
  const c = spares.take(32 * 1024);
  assert.notEqual(c.buffer, b.buffer, 'a buffer in use is not handed out twice');
  const huge = spares.take(2 * 1024 * 1024);
  spares.give(huge);
  spares.give(b);
  spares.give(c);
  assert.notEqual(spares.take(2 * 1024 * 1024).buffer, huge.buffer, 'a buffer above the size bound is not kept');
  const d = spares.take(1024);
  const e = spares.take(1024);
  assert.ok([b.buffer, c.buffer].includes(d.buffer) && [b.buffer, c.buffer].includes(e.buffer) && d.buffer !== e.buffer);
  const f = spares.take(70 * 1024);
  for (const x of [d, e, f]) spares.give(x);
  const given = new Set([d.buffer, e.buffer, f.buffer]);
  const again = [spares.take(1), spares.take(1), spares.take(1)];
  assert.equal(again.filter((x) => given.has(x.buffer)).length, 2, 'at most two are kept');
});
