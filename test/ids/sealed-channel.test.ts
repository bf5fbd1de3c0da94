/**
 * The sealed IDS channel with a malicious host library in the middle: it may tamper with, replay,
 * reorder and forge frames, and it keeps every frame it relays. Guest RAM is a Buffer read through
 * the monitor's real read executor; the frames are the real ones of SealedChannelClient and IdsSessions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { IdsChannelError, deriveIdsChannelKeys, sealIdsRequest } from '../../src/crypto/ids-channel.ts';
import { ProtocolError } from '../../src/formats/protocol/fields.ts';
import { decodeReadOps, decodeReadResults, encodeReadOps, encodeReadResults } from '../../src/formats/protocol/ids-channel.ts';
import { READ_LIMITS, type ReadOp, type ReadResult } from '../../src/formats/protocol/ids-read.ts';
import { SealedChannelClient, type FrameTransport } from '../../src/ids/channel/sealed-channel-client.ts';
import { RefusalError } from '../../src/monitor/identity/refusal.ts';
import { signedRegistration, world, type World } from './ids-fixtures.ts';

const SECRET = Buffer.from('VMSEAL-GUEST-SECRET: root password is hunter2, do not leak', 'ascii');
const SECRET_AT = 0x12_3000;

async function session(t: Parameters<typeof world>[0], opts: { benchPlainChannel?: boolean } = {}) {
  const w = await world(t, opts);
  w.ram.ram.fill(0x41, SECRET_AT - 4096, SECRET_AT + 8192);
  SECRET.copy(w.ram.ram, SECRET_AT);
  const { reg, request } = await signedRegistration(w);
  const { sessionId } = await w.sessions.register({ vmId: w.vmId, idsMeasurements: [reg.header.measurement] }, request);
  return { w, reg, sessionId };
}

/** The monitor's reads endpoint as the host library reaches it. */
function monitorTransport(w: World, sessionId: string): FrameTransport {
  return (frame) => w.sessions.read(sessionId, frame, w.memory);
}

function client(sessionId: string, sessionKey: Buffer, transport: FrameTransport, mode?: 'plain'): SealedChannelClient {
  return new SealedChannelClient({ sessionId, sessionKey, transport, ...(mode ? { mode } : {}) });
}

const ops: ReadOp[] = [
  { kind: 'phys', addr: BigInt(SECRET_AT), len: SECRET.length },
  { kind: 'phys', addr: 0x1000n, len: 64 },
];

async function refusal(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof RefusalError && err.code === code);
}

test('an honest batch round-trips through the sealed channel and reads the guest', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const c = client(sessionId, reg.sessionKey, monitorTransport(w, sessionId));
  const [a, b] = await c.read(ops);
  assert.ok(a?.ok && b?.ok);
  assert.deepEqual(a.data, SECRET);
  assert.deepEqual(b.data, w.ram.ram.subarray(0x1000, 0x1040));
  const [outside] = await c.read([{ kind: 'phys', addr: 1n << 40n, len: 8 }]);
  assert.equal(outside?.ok, false);
  assert.equal(c.seq, 2);
});

test('300 task_struct-sized reads (10 KiB each) round-trip in one batch', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const c = client(sessionId, reg.sessionKey, monitorTransport(w, sessionId));
  const batch: ReadOp[] = Array.from({ length: 300 }, (_, i) => ({ kind: 'phys', addr: BigInt(i * 10_240), len: 10_240 }));
  const results = await c.read(batch);
  assert.equal(results.length, 300);
  results.forEach((r, i) => {
    assert.ok(r.ok);
    assert.ok(r.data.equals(w.ram.ram.subarray(i * 10_240, (i + 1) * 10_240)), `entry ${i}`);
  });
});

test('the host sees no guest byte: a known guest string never appears in any relayed frame', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const seen: Buffer[] = [];
  const inner = monitorTransport(w, sessionId);
  const c = client(sessionId, reg.sessionKey, async (frame) => {
    seen.push(frame);
    const rsp = await inner(frame);
    seen.push(rsp);
    return rsp;
  });
  for (let i = 0; i < 3; i++) assert.deepEqual((await c.read(ops))[0], { ok: true, data: SECRET });
  const needle = SECRET.subarray(0, 16);
  for (const f of seen) assert.equal(f.includes(needle), false);
  assert.equal(Buffer.concat(seen).includes(needle), false);
});

test('the plain mode (benchmark (b) only) does show guest bytes, and a sealed monitor refuses its frames', async (t) => {
  const plain = await session(t, { benchPlainChannel: true });
  const seen: Buffer[] = [];
  const inner = monitorTransport(plain.w, plain.sessionId);
  const c = client(plain.sessionId, plain.reg.sessionKey, async (f) => {
    const r = await inner(f);
    seen.push(r);
    return r;
  }, 'plain');
  assert.deepEqual((await c.read(ops))[0], { ok: true, data: SECRET });
  assert.ok(seen[0]!.includes(SECRET), 'the check above could not fail if plaintext were never visible');

  const sealed = await session(t);
  const frame = sealIdsRequest(deriveIdsChannelKeys(sealed.reg.sessionKey, Buffer.from(sealed.sessionId, 'hex')), 'plain', 1, encodeReadOps(ops));
  await refusal(sealed.w.sessions.read(sealed.sessionId, frame, sealed.w.memory), 'TAMPER');
});

test('a tampered request is refused whatever region is touched, and does not advance the session', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const keys = deriveIdsChannelKeys(reg.sessionKey, Buffer.from(sessionId, 'hex'));
  const frame = sealIdsRequest(keys, 'sealed', 1, encodeReadOps(ops));
  const regions = { seq: [0, 7], body: [8, frame.length - 17], tag: [frame.length - 16, frame.length - 1] };
  const before = w.ram.reads;
  for (const positions of Object.values(regions)) {
    for (const at of positions) {
      const bad = Buffer.from(frame);
      bad[at]! ^= 0x01;
      await refusal(w.sessions.read(sessionId, bad, w.memory), 'TAMPER');
    }
  }
  await refusal(w.sessions.read(sessionId, frame.subarray(0, frame.length - 1), w.memory), 'TAMPER');
  await refusal(w.sessions.read(sessionId, Buffer.concat([frame, Buffer.of(0)]), w.memory), 'TAMPER');
  assert.equal(w.ram.reads, before, 'nothing was read for a refused frame');
  assert.ok(w.alerts.list().filter((a) => a.kind === 'TAMPER').length >= 8);
  // The untouched frame still has seq 1: the refusals above changed nothing.
  const rsp = await w.sessions.read(sessionId, frame, w.memory);
  assert.ok(rsp.length > 0);
});

test('a tampered response is detected in every region, and the channel then closes', async (t) => {
  for (const region of ['seq', 'body', 'tag'] as const) {
    const { w, reg, sessionId } = await session(t);
    const inner = monitorTransport(w, sessionId);
    const c = client(sessionId, reg.sessionKey, async (f) => {
      const r = Buffer.from(await inner(f));
      const at = region === 'seq' ? 7 : region === 'body' ? 8 + 5 : r.length - 3;
      r[at]! ^= 0x80;
      return r;
    });
    await assert.rejects(c.read(ops), (e: unknown) => e instanceof IdsChannelError && e.code === (region === 'seq' ? 'WRONG_SEQ' : 'AUTH_FAILED'), region);
    await assert.rejects(c.read(ops), IdsChannelError);
  }
});

test('a replayed request is refused and reads nothing', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const captured: Buffer[] = [];
  const inner = monitorTransport(w, sessionId);
  const c = client(sessionId, reg.sessionKey, async (f) => {
    captured.push(f);
    return inner(f);
  });
  await c.read(ops);
  const before = w.ram.reads;
  await refusal(w.sessions.read(sessionId, captured[0]!, w.memory), 'REPLAY');
  assert.equal(w.ram.reads, before);
  assert.equal(w.alerts.list().at(-1)?.kind, 'REPLAY');
  assert.equal(w.alerts.list().at(-1)?.vmId, w.vmId);
  await c.read(ops); // the honest IDS carries on
});

test('reordered requests: a later seq is refused until the earlier one has run', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const keys = deriveIdsChannelKeys(reg.sessionKey, Buffer.from(sessionId, 'hex'));
  const f1 = sealIdsRequest(keys, 'sealed', 1, encodeReadOps(ops));
  const f2 = sealIdsRequest(keys, 'sealed', 2, encodeReadOps(ops));
  await refusal(w.sessions.read(sessionId, f2, w.memory), 'REPLAY');
  await w.sessions.read(sessionId, f1, w.memory);
  await w.sessions.read(sessionId, f2, w.memory);
  await refusal(w.sessions.read(sessionId, f1, w.memory), 'REPLAY');
});

test('a response replayed for another request is refused by the IDS', async (t) => {
  const { w, reg, sessionId } = await session(t);
  const inner = monitorTransport(w, sessionId);
  let first: Buffer | undefined;
  const c = client(sessionId, reg.sessionKey, async (f) => {
    const r = await inner(f);
    first ??= r;
    return first;
  });
  await c.read(ops);
  await assert.rejects(c.read(ops), (e: unknown) => e instanceof IdsChannelError && e.code === 'WRONG_SEQ');

  // Same seq, another request: the response is bound to SHA-256 of the request it answers.
  const other = await session(t);
  const keys = deriveIdsChannelKeys(other.reg.sessionKey, Buffer.from(other.sessionId, 'hex'));
  const realRequest = sealIdsRequest(keys, 'sealed', 1, encodeReadOps(ops));
  const response = await other.w.sessions.read(other.sessionId, realRequest, other.w.memory);
  const c2 = client(other.sessionId, other.reg.sessionKey, async () => response);
  await assert.rejects(c2.read([{ kind: 'phys', addr: 0n, len: 8 }]), (e: unknown) => e instanceof IdsChannelError && e.code === 'AUTH_FAILED');
});

test('requests forged by the host without the session key are refused and read nothing', async (t) => {
  const { w, sessionId } = await session(t);
  const before = w.ram.reads;
  const wrongKeys = deriveIdsChannelKeys(randomBytes(32), Buffer.from(sessionId, 'hex'));
  await refusal(w.sessions.read(sessionId, sealIdsRequest(wrongKeys, 'sealed', 1, encodeReadOps(ops)), w.memory), 'TAMPER');
  // The plaintext encoding with a made-up tag, a bare seq, and random junk.
  const seq = Buffer.alloc(8);
  seq.writeBigUInt64BE(1n);
  await refusal(w.sessions.read(sessionId, Buffer.concat([seq, encodeReadOps(ops), randomBytes(16)]), w.memory), 'TAMPER');
  await refusal(w.sessions.read(sessionId, seq, w.memory), 'TAMPER');
  for (const n of [0, 1, 23, 24, 100, 5000]) await refusal(w.sessions.read(sessionId, randomBytes(n), w.memory), 'TAMPER');
  assert.equal(w.ram.reads, before);
  await assert.rejects(w.sessions.read('00'.repeat(16), sealIdsRequest(wrongKeys, 'sealed', 1, encodeReadOps(ops)), w.memory), /no IDS session/);
});

test('read-op and result encodings round-trip and refuse hostile input', () => {
  const all: ReadOp[] = [
    { kind: 'phys', addr: 0xffff_ffff_ffff_ffffn, len: 0 },
    { kind: 'kv', addr: 0xffff_ffff_8100_0000n, len: READ_LIMITS.maxOpBytes },
    { kind: 'uv', cr3: 0x1234_5000n, addr: 0x7fff_0000n, len: 9 },
    { kind: 'list', head: 0xffff_ffff_8200_0000n, linkOffset: 0x4d8, len: 10_240, max: READ_LIMITS.maxListEntries },
    {
      kind: 'gather',
      head: 0xffff_ffff_8200_0000n,
      linkOffset: 0x4d8,
      max: 400,
      ranges: [{ off: 0, len: 16 }, { off: 0x4d0, len: 24 }],
      follow: [{ ptrOffset: 0x720, ranges: [{ off: 4, len: 16 }] }, { ptrOffset: 0x728, ranges: [] }],
    },
  ];
  assert.deepEqual(decodeReadOps(encodeReadOps(all)), all);
  const results: ReadResult[] = [
    { ok: true, data: Buffer.from('abc') },
    { ok: true, data: Buffer.alloc(16, 7), bases: [1n, 2n] },
    { ok: false, error: 'unmapped at 0xdead' },
    { ok: false, error: 'é'.repeat(2000) },
  ];
  const back = decodeReadResults(encodeReadResults(results));
  assert.deepEqual(back.slice(0, 3), results.slice(0, 3));
  assert.ok(!back[3]!.ok && Buffer.byteLength(back[3]!.error) <= 1024 && back[3]!.error.startsWith('éé'));

  const enc = encodeReadOps(all);
  for (let n = 0; n < enc.length; n++) assert.throws(() => decodeReadOps(enc.subarray(0, n)), ProtocolError);
  assert.throws(() => decodeReadOps(Buffer.concat([enc, Buffer.of(0)])), /trailing/);
  const huge = Buffer.alloc(4);
  huge.writeUInt32LE(0xffff_ffff);
  assert.throws(() => decodeReadOps(huge), /over the limit/);
  huge.writeUInt32LE(4000);
  assert.throws(() => decodeReadOps(huge), /cannot fit/);
  const badKind = Buffer.from(enc);
  badKind[4] = 9;
  assert.throws(() => decodeReadOps(badKind), /unknown kind/);
  const tooLong = Buffer.from(enc);
  tooLong.writeUInt32LE(READ_LIMITS.maxOpBytes + 1, 4 + 1 + 8);
  assert.throws(() => decodeReadOps(tooLong), /outside/);
  // A gather whose range count byte is over the limit, and one whose range runs past maxOpBytes.
  const gatherAt = enc.length - encodeReadOps([all[4]!]).length + 4;
  const tooManyRanges = Buffer.from(enc);
  tooManyRanges[gatherAt + 1 + 8 + 4 + 4] = READ_LIMITS.maxGatherRanges + 1;
  assert.throws(() => decodeReadOps(tooManyRanges), /ranges is over the limit/);
  const pastEnd = Buffer.from(enc);
  pastEnd.writeUInt32LE(READ_LIMITS.maxOpBytes, gatherAt + 1 + 8 + 4 + 4 + 1);
  assert.throws(() => decodeReadOps(pastEnd), /outside/);

  const r = encodeReadResults(results);
  for (let n = 0; n < r.length; n += 7) assert.throws(() => decodeReadResults(r.subarray(0, n)), ProtocolError);
  // A claimed 1 GiB result in a 13-byte input: refused without allocating it.
  const liar = Buffer.alloc(13);
  liar.writeUInt32LE(1, 0);
  liar.writeUInt32LE(1 << 30, 5);
  assert.throws(() => decodeReadResults(liar), /over the batch limit|truncated/);
  const manyBases = Buffer.alloc(9);
  manyBases.writeUInt32LE(1, 0);
  manyBases[4] = 1;
  manyBases.writeUInt32LE(READ_LIMITS.maxListEntries, 5);
  assert.throws(() => decodeReadResults(manyBases), /truncated/);
});
