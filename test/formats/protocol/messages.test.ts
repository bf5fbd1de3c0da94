import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { decodeLaunchBundle, encodeLaunchBundle, type LaunchBundle } from '../../../src/formats/protocol/launch-bundle.ts';
import { decodeIdentityStatement, encodeIdentityStatement, IDENTITY_MAGIC } from '../../../src/formats/protocol/identity-proof.ts';
import { decodeCommand, decodeCommandResult, encodeCommand } from '../../../src/formats/protocol/command.ts';
import { ProtocolError } from '../../../src/formats/protocol/fields.ts';

const hex32 = () => randomBytes(32).toString('hex');

function bundle(): LaunchBundle {
  return {
    v: 1,
    hostId: 'host-1',
    name: 'web-1',
    volumeKey: randomBytes(64),
    kernelSha256: hex32(),
    initrdSha256: hex32(),
    cmdline: 'console=ttyS0 ima_policy=tcb panic=-1',
    disk: { payloadOffset: 16 << 20, sectorSize: 4096, sectors: 65536, integrityRoot: hex32() },
    launchNonce: randomBytes(16),
    policy: { idsMeasurements: [hex32()] },
  };
}

test('a launch bundle round-trips with its binary fields intact', () => {
  const b = bundle();
  const back = decodeLaunchBundle(encodeLaunchBundle(b));
  assert.deepEqual(back, b);
  assert.ok(Buffer.isBuffer(back.volumeKey) && back.volumeKey.equals(b.volumeKey));
});

test('a hostile launch bundle is refused with the field named', () => {
  const wire = JSON.parse(encodeLaunchBundle(bundle()).toString());
  const cases: Array<[string, unknown]> = [
    ['volumeKey', { ...wire, volumeKey: Buffer.alloc(32).toString('base64') }],
    ['volumeKey', { ...wire, volumeKey: '!'.repeat(88) }],
    ['kernelSha256', { ...wire, kernelSha256: 'ABC' }],
    ['cmdline', { ...wire, cmdline: 'console=ttyS0\ninit=/bin/sh' }],
    ['disk.sectorSize', { ...wire, disk: { ...wire.disk, sectorSize: 512 } }],
    ['(root)', { ...wire, extra: 1 }],
    ['hostId', { ...wire, hostId: '../etc' }],
    ['name', { ...wire, name: 'Web 1' }],
    ['v', { ...wire, v: 2 }],
  ];
  for (const [field, value] of cases) {
    assert.throws(() => decodeLaunchBundle(Buffer.from(JSON.stringify(value))), (e: unknown) => e instanceof ProtocolError && e.message.includes(field), field);
  }
  assert.throws(() => decodeLaunchBundle(Buffer.from('{not json')), /not valid JSON/);
  assert.throws(() => decodeLaunchBundle(Buffer.alloc(70_000, 0x20)), /over the limit/);
});

test('the identity statement has the documented layout and rejects anything else', () => {
  const s = { vmId: randomBytes(16), launchNonce: randomBytes(16), hostId: 'host-1' };
  const b = encodeIdentityStatement(s);
  assert.ok(b.subarray(0, 10).equals(IDENTITY_MAGIC));
  assert.ok(b.subarray(10, 26).equals(s.vmId));
  assert.ok(b.subarray(26, 42).equals(s.launchNonce));
  assert.equal(b[42], 6);
  assert.equal(b.subarray(43).toString(), 'host-1');
  assert.deepEqual(decodeIdentityStatement(b), s);
  const bad = Buffer.from(b);
  bad[0] = 0x57;
  assert.throws(() => decodeIdentityStatement(bad), /bad magic/);
  assert.throws(() => decodeIdentityStatement(b.subarray(0, b.length - 1)), /host id length/);
  assert.throws(() => decodeIdentityStatement(Buffer.concat([b, Buffer.from('x')])), /host id length/);
  assert.throws(() => decodeIdentityStatement(b.subarray(0, 20)), /bad magic/);
});

test('commands and results validate ops, ids and counters', () => {
  const c = { vmId: randomBytes(16).toString('hex'), counter: 7, op: 'pause' as const, args: {} };
  assert.deepEqual(decodeCommand(encodeCommand(c)), c);
  for (const bad of [{ ...c, op: 'migrate' }, { ...c, counter: 0 }, { ...c, counter: 1.5 }, { ...c, vmId: 'x' }, { ...c, args: { force: true } }]) {
    assert.throws(() => decodeCommand(Buffer.from(JSON.stringify(bad))), ProtocolError);
  }
  assert.throws(() => decodeCommandResult(Buffer.from(JSON.stringify({ ...c, ok: true }))), /state/);
});
