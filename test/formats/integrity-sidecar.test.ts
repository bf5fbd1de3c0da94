import { test } from 'node:test';
import assert from 'node:assert/strict';
import { paddedLevelBytes, treeLevelEntries } from '../../src/crypto/integrity-tree.ts';
import {
  SIDECAR_HEADER_BYTES,
  SIDECAR_MAX_SECTORS,
  SidecarFormatError,
  decodeSidecarHeader,
  encodeSidecarHeader,
  nodeOffset,
  sidecarGeometry,
} from '../../src/formats/integrity-sidecar.ts';

test('level geometry: entries per level, node counts, offsets, file size', () => {
  const cases: [number, number[]][] = [
    [1, [1, 1]],
    [2, [2, 1]],
    [128, [128, 1]],
    [129, [129, 2, 1]],
    [16384, [16384, 128, 1]],
    [16385, [16385, 129, 2, 1]],
    [65536, [65536, 512, 4, 1]], // the 256 MiB demo disk
  ];
  for (const [n, entries] of cases) {
    const g = sidecarGeometry(n);
    assert.deepEqual(g.levels.map((l) => l.entries), entries, `n=${n}`);
    assert.deepEqual(g.levels.map((l) => l.nodes), entries.map((e) => Math.ceil(e / 128)), `n=${n}`);
    let offset = 4096;
    for (const l of g.levels) {
      assert.equal(l.offset, offset, `n=${n}`);
      offset += l.nodes * 4096;
    }
    assert.equal(g.fileSize, offset);
    // The crypto side's own idea of the shape agrees with the file's.
    assert.deepEqual(treeLevelEntries(n), entries);
    assert.deepEqual(g.levels.map((l) => l.nodes * 4096), entries.map(paddedLevelBytes));
  }
  const demo = sidecarGeometry(65536);
  assert.equal(demo.fileSize, 4096 + (512 + 4 + 1 + 1) * 4096);
  assert.equal(nodeOffset(demo, 1, 3), demo.levels[1]!.offset + 3 * 4096);
  assert.throws(() => nodeOffset(demo, 1, 4), RangeError);
  assert.throws(() => nodeOffset(demo, 4, 0), RangeError);
  assert.throws(() => nodeOffset(demo, 0, -1), RangeError);
});

test('the largest allowed disk has a bounded sidecar; larger, empty or fractional counts are refused', () => {
  const g = sidecarGeometry(SIDECAR_MAX_SECTORS);
  assert.equal(g.levels[0]!.nodes * 4096, SIDECAR_MAX_SECTORS * 32);
  for (const bad of [0, -1, 1.5, SIDECAR_MAX_SECTORS + 1, Number.MAX_SAFE_INTEGER, Number.NaN]) {
    assert.throws(() => sidecarGeometry(bad), SidecarFormatError, String(bad));
    assert.throws(() => encodeSidecarHeader(bad), SidecarFormatError, String(bad));
  }
});

test('header: exact layout, round trip', () => {
  const h = encodeSidecarHeader(65536);
  assert.equal(h.length, SIDECAR_HEADER_BYTES);
  assert.equal(h.subarray(0, 16).toString('ascii'), 'VMSEAL-INTEGRIT1');
  assert.equal(h.readUInt32LE(16), 2);
  assert.equal(h.readUInt32LE(20), 4096);
  assert.equal(h.readBigUInt64LE(24), 65536n);
  assert.equal(h.readUInt32LE(32), 128);
  assert.ok(h.subarray(36).every((b) => b === 0));
  assert.equal(decodeSidecarHeader(h), 65536);
  assert.equal(decodeSidecarHeader(encodeSidecarHeader(1)), 1);
  assert.equal(decodeSidecarHeader(encodeSidecarHeader(SIDECAR_MAX_SECTORS)), SIDECAR_MAX_SECTORS);
});

test('hostile headers are refused with a clear error', () => {
  const good = encodeSidecarHeader(1000);
  const mutate = (f: (h: Buffer) => void): Buffer => {
    const h = Buffer.from(good);
    f(h);
    return h;
  };
  const cases: [string, Buffer, RegExp][] = [
    ['short', good.subarray(0, 4095), /header is 4095 bytes/],
    ['empty', Buffer.alloc(0), /header is 0 bytes/],
    ['magic', mutate((h) => (h[15] = 0x32)), /bad magic/],
    ['version 0', mutate((h) => h.writeUInt32LE(0, 16)), /version 0 is not supported \(only 2\)/],
    ['version 3', mutate((h) => h.writeUInt32LE(3, 16)), /version 3 is not supported \(only 2\)/],
    // A version 1 (HMAC-SHA256) sidecar: told apart from damage, with what to do about it.
    ['version 1', mutate((h) => h.writeUInt32LE(1, 16)), /version 1 \(HMAC-SHA256 tree\) is no longer supported: re-seal the image/],
    ['sector size', mutate((h) => h.writeUInt32LE(512, 20)), /sector size 512/],
    ['arity', mutate((h) => h.writeUInt32LE(64, 32)), /arity 64/],
    ['zero sectors', mutate((h) => h.writeBigUInt64LE(0n, 24)), /sector count 0 /],
    ['huge sectors', mutate((h) => h.writeBigUInt64LE(0xffffffffffffffffn, 24)), /sector count 18446744073709551615/],
    ['just over the bound', mutate((h) => h.writeBigUInt64LE(BigInt(SIDECAR_MAX_SECTORS) + 1n, 24)), /outside 1\.\./],
    ['reserved byte', mutate((h) => (h[4095] = 1)), /byte 4095 is not zero/],
    ['reserved byte early', mutate((h) => (h[36] = 0xff)), /byte 36 is not zero/],
  ];
  for (const [name, h, message] of cases) assert.throws(() => decodeSidecarHeader(h), (e: unknown) => e instanceof SidecarFormatError && message.test(e.message), name);
});
