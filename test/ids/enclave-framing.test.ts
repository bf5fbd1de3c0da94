import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ecall, EnclaveCallError, FrameDecoder, FrameKind, MAX_FRAME_BYTES, Ocall, encodeFrame } from '../../src/formats/protocol/enclave-call.ts';
import { CallPeer, RemoteCallError } from '../../src/ids/enclave/call-peer.ts';
import { EnclaveHost } from '../../src/ids/host/enclave-host.ts';
import { PROFILE } from './enclave-fixtures.ts';

const cacheDir = process.env.VMSEAL_CACHE ?? join(tmpdir(), 'vmseal-test-cache');

function header(bodyLen: number, kind: number, type: number, callId = 1): Buffer {
  const b = Buffer.alloc(10);
  b.writeUInt32BE(bodyLen, 0);
  b.writeUInt8(kind, 4);
  b.writeUInt8(type, 5);
  b.writeUInt32BE(callId, 6);
  return b;
}

describe('frame decoder', () => {
  test('reassembles frames split at every byte', () => {
    const frame = encodeFrame({ kind: FrameKind.ecall, type: Ecall.heartbeat, callId: 7, payload: Buffer.from('{"x":1}') });
    const d = new FrameDecoder();
    const got = [];
    for (const byte of Buffer.concat([frame, frame])) got.push(...d.push(Buffer.of(byte)));
    assert.equal(got.length, 2);
    assert.equal(got[1]?.callId, 7);
    assert.equal(got[1]?.payload.toString(), '{"x":1}');
  });

  test('an oversized length is refused from the length field alone, and the stream stays broken', () => {
    const d = new FrameDecoder();
    assert.throws(() => d.push(header(MAX_FRAME_BYTES + 1, FrameKind.ecall, Ecall.init)), /over the limit/);
    assert.throws(() => d.push(Buffer.alloc(4)), EnclaveCallError);
  });

  test('short bodies, unknown kinds and unknown types are refused', () => {
    assert.throws(() => new FrameDecoder().push(header(3, 1, 1)), /shorter than its/);
    assert.throws(() => new FrameDecoder().push(header(6, 9, 1)), /unknown frame kind 9/);
    assert.throws(() => new FrameDecoder().push(header(6, FrameKind.ocall, 99)), /unknown frame kind 3 \/ type 99/);
    assert.throws(() => encodeFrame({ kind: FrameKind.ecall, type: 42, callId: 1, payload: Buffer.alloc(0) }), EnclaveCallError);
  });
});

describe('call peers', () => {
  function pair() {
    const toEnclave = new PassThrough();
    const toHost = new PassThrough();
    const broken: { host?: Error; enclave?: Error } = {};
    const enclave = new CallPeer('enclave', toEnclave, toHost, async (type, payload) => {
      if (type === Ecall.heartbeat) return Buffer.concat([Buffer.from('echo:'), payload]);
      throw new Error('no such call here');
    }, (e) => (broken.enclave = e));
    const host = new CallPeer('host', toHost, toEnclave, async () => Buffer.from('read-reply'), (e) => (broken.host = e));
    return { host, enclave, toEnclave, toHost, broken };
  }

  test('calls flow both ways; a thrown error is an error result, not a break', async () => {
    const p = pair();
    assert.equal((await p.host.call(Ecall.heartbeat, Buffer.from('x'))).toString(), 'echo:x');
    assert.equal((await p.enclave.call(Ocall.channelRead, Buffer.from('f'))).toString(), 'read-reply');
    await assert.rejects(p.host.call(Ecall.pslist, Buffer.alloc(0)), (e: unknown) => e instanceof RemoteCallError && /no such call here/.test(e.message));
    assert.equal(p.broken.host, undefined);
  });

  test('garbage from the enclave breaks the host peer and fails outstanding calls', async () => {
    const p = pair();
    const { host, toHost } = p;
    const outstanding = host.call(Ecall.pslist, Buffer.alloc(0)).catch((e: Error) => e);
    toHost.write(header(0xffff_fff0, FrameKind.ocall, Ocall.log));
    assert.match(String(((await outstanding) as Error).message), /over the limit/);
    assert.ok(p.broken.host instanceof EnclaveCallError);
  });

  test('a result nobody asked for, or a call in the wrong direction, breaks the peer', () => {
    const a = pair();
    a.toHost.write(encodeFrame({ kind: FrameKind.ecallResult, type: Ecall.init, callId: 99, payload: Buffer.of(0) }));
    assert.match(String(a.broken.host?.message), /not outstanding/);
    const b = pair();
    b.toHost.write(encodeFrame({ kind: FrameKind.ecall, type: Ecall.init, callId: 1, payload: Buffer.alloc(0) }));
    assert.match(String(b.broken.host?.message), /only flows the other way/);
  });
});

describe('the real enclave process', () => {
  test('a well-framed call with a bad payload gets an error result and the enclave keeps serving', async () => {
    const enclave = await EnclaveHost.start(minimalConfig(), { cacheDir });
    try {
      await assert.rejects(enclave.heartbeat(1, Buffer.alloc(16)), (e: unknown) => e instanceof RemoteCallError && /init first/.test(e.message));
      await assert.rejects(
        enclave.init({ config: minimalConfig(), profile: `${PROFILE} `, vmId: '00'.repeat(16), hostId: 'h', hostCertificate: 'x' }),
        /kernel profile hashes to/,
      );
      await assert.rejects(enclave.init({ config: { ...minimalConfig(), checks: { 'no-such-check': {} } }, profile: PROFILE, vmId: '00'.repeat(16), hostId: 'h', hostCertificate: 'x' }), /unknown check: no-such-check/);
      const { measurement } = await enclave.init({ config: minimalConfig(), profile: PROFILE, vmId: '00'.repeat(16), hostId: 'h', hostCertificate: 'x' });
      assert.equal(measurement, enclave.measurement, 'the enclave measures itself as the loader does');
    } finally {
      await enclave.stop();
    }
  });

  test('an oversized frame from the host makes the enclave exit with an error', async () => {
    const lines: string[] = [];
    const enclave = await EnclaveHost.start(minimalConfig(), { cacheDir, onStderr: (l) => lines.push(l) });
    enclave.child.stdin.write(header(0xffff_ffff, FrameKind.ecall, Ecall.init));
    const exit = await enclave.exited;
    assert.equal(exit.code, 2);
    assert.ok(lines.some((l) => /over the limit/.test(l)), lines.join('\n'));
  });
});

function minimalConfig() {
  return {
    version: 1 as const,
    authorityCaCert: 'not checked before registration',
    authorityHpkePublicKey: Buffer.alloc(32).toString('base64'),
    authorityKeySignature: Buffer.alloc(64).toString('base64'),
    profileSha256: createHash('sha256').update(PROFILE).digest('hex'),
    checks: { pslist: {} },
  };
}
