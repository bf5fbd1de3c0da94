import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { NativeXtsCipher, hmacLeavesNative, xtsDecryptNative, xtsEncryptNative } from '../../src/crypto/native.ts';
import { XtsCipher } from '../../src/crypto/xts.ts';
import { TreeHasher } from '../../src/crypto/integrity-tree.ts';

const T = { timeout: 30_000 };

test('native XTS equals XtsCipher for several sector sizes and sector numbers, both directions', T, () => {
  const key = randomBytes(64);
  const js = new XtsCipher(key);
  const native = new NativeXtsCipher(key);
  const starts: bigint[] = [0n, 1n, 12345n, 0xffff_ffffn, 0x1_0000_0001n, 0x7_1234_5678n];
  for (const sectorSize of [512, 1024, 4096, 65536]) {
    for (const first of starts) {
      const plain = randomBytes(sectorSize * 5);
      const want = js.encryptSectors(first, sectorSize, plain);
      const got = native.encryptSectors(first, sectorSize, plain);
      assert.ok(got.equals(want), `encrypt, sector size ${sectorSize}, first sector ${first}`);
      assert.ok(!got.equals(plain));
      const back = native.decryptSectors(first, sectorSize, got);
      assert.ok(back.equals(plain), `decrypt, sector size ${sectorSize}, first sector ${first}`);
      assert.ok(js.decryptSectors(first, sectorSize, got).equals(plain));
    }
  }
});

test('native XTS in place equals out of place', T, () => {
  const key = randomBytes(64);
  const plain = randomBytes(4096 * 3);
  const want = new NativeXtsCipher(key).encryptSectors(7, 4096, plain);
  const buf = Buffer.from(plain);
  new NativeXtsCipher(key).encryptSectors(7, 4096, buf, buf);
  assert.ok(buf.equals(want));
  new NativeXtsCipher(key).decryptSectors(7, 4096, buf, buf);
  assert.ok(buf.equals(plain));
});

test('native XTS follows the LUKS2 plain64 rule: 4096-byte sector k has IV 8k, checked against one-shot aes-256-xts', T, () => {
  const key = randomBytes(64);
  const first = 0x1_2345_6789n; // beyond 2^32, so the IV's high word matters
  const plain = randomBytes(4096 * 3);
  const got = new NativeXtsCipher(key).encryptSectors(first, 4096, plain);
  for (let s = 0; s < 3; s++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE((first + BigInt(s)) * 8n);
    const one = createCipheriv('aes-256-xts', key, iv).update(plain.subarray(s * 4096, (s + 1) * 4096));
    assert.ok(one.equals(got.subarray(s * 4096, (s + 1) * 4096)), `sector ${s}`);
  }
  // The raw form: explicit first IV and step.
  const raw = Buffer.alloc(plain.length);
  xtsEncryptNative(key, first * 8n, 8, 4096, plain, raw);
  assert.ok(raw.equals(got));
  xtsDecryptNative(key, first * 8n, 8, 4096, raw, raw);
  assert.ok(raw.equals(plain));
});

test('native leaves equal TreeHasher.leaves byte for byte', T, () => {
  for (const keyLength of [16, 32, 64]) {
    const key = randomBytes(keyLength);
    const data = randomBytes(4096 * 9);
    for (const first of [0, 3, 2 ** 32 + 5, Number.MAX_SAFE_INTEGER - 20]) {
      const want = Buffer.alloc(9 * 32);
      new TreeHasher(key).leaves(first, data, want, 0);
      const got = Buffer.alloc(9 * 32 + 8, 0xaa);
      hmacLeavesNative(key, first, 4096, data, got);
      assert.ok(got.subarray(0, 9 * 32).equals(want), `key ${keyLength} bytes, first sector ${first}`);
      assert.ok(got.subarray(9 * 32).equals(Buffer.alloc(8, 0xaa)), 'nothing written past the leaves');
    }
  }
});

test('bad arguments throw clear errors and write nothing', T, () => {
  const key = randomBytes(64);
  const data = randomBytes(4096);
  const out = Buffer.alloc(4096);
  const cases: [string, () => void, RegExp][] = [
    ['short key', () => xtsEncryptNative(key.subarray(0, 32), 0n, 8, 4096, data, out), /key must be 64 bytes/],
    ['equal key halves', () => xtsEncryptNative(Buffer.concat([key.subarray(0, 32), key.subarray(0, 32)]), 0n, 8, 4096, data, out), /halves must differ/],
    ['misaligned length', () => xtsEncryptNative(key, 0n, 8, 4096, data.subarray(0, 4000), out), /not a multiple of sectorSize/],
    ['out too small', () => xtsDecryptNative(key, 0n, 8, 4096, data, Buffer.alloc(4095)), /out is smaller than data/],
    ['partial overlap', () => xtsEncryptNative(key, 0n, 1, 512, out.subarray(0, 1024), out.subarray(512, 1536)), /overlaps/],
    ['sector size not a power of two', () => xtsEncryptNative(key, 0n, 1, 768, data.subarray(0, 1536), out), /power of two/],
    ['IV overflow', () => xtsEncryptNative(key, (1n << 64n) - 8n, 8, 4096, Buffer.alloc(8192), Buffer.alloc(8192)), /64-bit IV range/],
    ['IV not a bigint', () => xtsEncryptNative(key, 1 as unknown as bigint, 8, 4096, data, out), /bigint/],
    ['IV negative', () => xtsEncryptNative(key, -1n, 8, 4096, data, out), /bigint from 0/],
    ['zero IV step', () => xtsEncryptNative(key, 0n, 0, 4096, data, out), /ivStep/],
    ['data not bytes', () => xtsEncryptNative(key, 0n, 8, 4096, 'x' as unknown as Buffer, out), /data must be a Buffer/],
    ['data a wider typed array', () => xtsEncryptNative(key, 0n, 8, 4096, new Uint32Array(1024) as unknown as Buffer, out), /data must be a Buffer/],
    ['missing out', () => (xtsEncryptNative as unknown as (...a: unknown[]) => void)(key, 0n, 8, 4096, data), /out must be a Buffer/],
    ['sector beyond IV range', () => new NativeXtsCipher(key).encryptSectors(1n << 62n, 4096, data, out), /64-bit IV range/],
    ['leaf key too short', () => hmacLeavesNative(key.subarray(0, 8), 0, 4096, data, out), /16\.\.64 bytes/],
    ['leaf key too long', () => hmacLeavesNative(Buffer.alloc(65, 1), 0, 4096, data, out), /16\.\.64 bytes/],
    ['leaf output too small', () => hmacLeavesNative(key, 0, 4096, Buffer.alloc(8192), Buffer.alloc(63)), /outLeaves is smaller/],
    ['leaf data misaligned', () => hmacLeavesNative(key, 0, 4096, Buffer.alloc(4097), out), /not a multiple of sectorSize/],
    ['leaf sector unsafe', () => hmacLeavesNative(key, 2 ** 60, 4096, data, out), /not a safe integer/],
    ['leaf sector negative', () => hmacLeavesNative(key, -1, 4096, data, out), /negative/],
  ];
  for (const [name, run, message] of cases) {
    assert.throws(run, message, name);
    assert.ok(out.equals(Buffer.alloc(4096)), `${name}: out untouched`);
  }
});

test('empty input is a no-op', T, () => {
  const out = Buffer.alloc(16, 1);
  xtsEncryptNative(randomBytes(64), 0n, 8, 4096, Buffer.alloc(0), out);
  hmacLeavesNative(randomBytes(32), 0, 4096, Buffer.alloc(0), out);
  assert.ok(out.equals(Buffer.alloc(16, 1)));
});

test('NativeXtsCipher refuses a key with equal halves when made', T, () => {
  const half = randomBytes(32);
  assert.throws(() => new NativeXtsCipher(Buffer.concat([half, half])), /halves must differ/);
  assert.throws(() => new NativeXtsCipher(randomBytes(32)), /64 bytes/);
});
