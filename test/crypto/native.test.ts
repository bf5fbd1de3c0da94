import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { NativeXtsCipher, blake3Keyed, blake3KeyedInto, treeLeavesNative, xtsDecryptNative, xtsEncryptNative } from '../../src/crypto/native.ts';
import { XtsCipher } from '../../src/crypto/xts.ts';
import { b3sumKeyed, u64le } from './b3sum-oracle.ts';

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

test('blake3Keyed equals b3sum --keyed: empty, 1 byte, around the 1024-byte chunk, 4096, many chunks', T, () => {
  const key = randomBytes(32);
  const sizes = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 4096, 4108, 4112, 8193, 65536 + 7, 1_000_003];
  const inputs = sizes.map((n) => randomBytes(n));
  const want = b3sumKeyed(key, inputs);
  inputs.forEach((data, i) => {
    assert.deepEqual(blake3Keyed(key, data), want[i], `${sizes[i]} bytes`);
    // Split into parts anywhere: the hash is over their concatenation.
    const cut1 = Math.floor(data.length / 3);
    const cut2 = Math.floor((2 * data.length) / 3) + (data.length > 1 ? 1 : 0);
    const parts = [data.subarray(0, cut1), Buffer.alloc(0), data.subarray(cut1, cut2), data.subarray(cut2)];
    assert.deepEqual(blake3Keyed(key, ...parts), want[i], `${sizes[i]} bytes in parts`);
  });
  // The key matters: the same input under another key is another hash (and b3sum agrees).
  const other = randomBytes(32);
  assert.deepEqual(blake3Keyed(other, inputs[9]!), b3sumKeyed(other, [inputs[9]!])[0]);
  assert.notDeepEqual(blake3Keyed(other, inputs[9]!), want[9]);
});

test('treeLeavesNative: leaf_n = BLAKE3-keyed(K, sector ‖ "leaf" ‖ u64le(n)), checked with b3sum, 64-bit sector numbers', T, () => {
  const key = randomBytes(32);
  // 1..16 sectors are hashed as one SIMD batch; 37 is two full batches and a partial one.
  for (const count of [1, 5, 16, 17, 37]) {
    const data = randomBytes(4096 * count);
    for (const first of [0, 3, 2 ** 32 - 2, Number.MAX_SAFE_INTEGER - 40]) {
      const got = Buffer.alloc(count * 32 + 8, 0xaa);
      treeLeavesNative(key, first, data, got);
      const want = b3sumKeyed(
        key,
        Array.from({ length: count }, (_, i) => Buffer.concat([data.subarray(i * 4096, (i + 1) * 4096), Buffer.from('leaf'), u64le(BigInt(first) + BigInt(i))])),
      );
      assert.deepEqual(got.subarray(0, count * 32), Buffer.concat(want), `${count} sectors from ${first}`);
      assert.ok(got.subarray(count * 32).equals(Buffer.alloc(8, 0xaa)), 'nothing written past the leaves');
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
    ['leaf key too short', () => treeLeavesNative(key.subarray(0, 31), 0, data, out), /integrity key must be 32 bytes/],
    ['leaf key too long', () => treeLeavesNative(key.subarray(0, 33), 0, data, out), /integrity key must be 32 bytes/],
    ['leaf output too small', () => treeLeavesNative(key.subarray(0, 32), 0, Buffer.alloc(8192), Buffer.alloc(63)), /outLeaves is smaller/],
    ['leaf data misaligned', () => treeLeavesNative(key.subarray(0, 32), 0, Buffer.alloc(4097), out), /not a multiple of 4096/],
    ['leaf sector unsafe', () => treeLeavesNative(key.subarray(0, 32), 2 ** 60, data, out), /not a safe integer/],
    ['leaf sector negative', () => treeLeavesNative(key.subarray(0, 32), -1, data, out), /negative/],
    ['blake3 key too short', () => blake3KeyedInto(out.subarray(0, 32), key.subarray(0, 16), data), /integrity key must be 32 bytes/],
    ['blake3 key not bytes', () => blake3KeyedInto(out.subarray(0, 32), 'k'.repeat(32) as unknown as Buffer, data), /must be a Buffer/],
    ['blake3 output not 32 bytes', () => blake3KeyedInto(out.subarray(0, 31), key.subarray(0, 32), data), /out must be 32 bytes/],
    ['blake3 part not bytes', () => blake3KeyedInto(out.subarray(0, 32), key.subarray(0, 32), data, 7 as unknown as Buffer), /part must be a Buffer/],
    ['blake3 too many parts', () => blake3KeyedInto(out.subarray(0, 32), key.subarray(0, 32), ...Array.from({ length: 9 }, () => data)), /up to 8 parts/],
  ];
  for (const [name, run, message] of cases) {
    assert.throws(run, message, name);
    assert.ok(out.equals(Buffer.alloc(4096)), `${name}: out untouched`);
  }
});

test('empty input is a no-op', T, () => {
  const out = Buffer.alloc(16, 1);
  xtsEncryptNative(randomBytes(64), 0n, 8, 4096, Buffer.alloc(0), out);
  treeLeavesNative(randomBytes(32), 0, Buffer.alloc(0), out);
  assert.ok(out.equals(Buffer.alloc(16, 1)));
});

test('NativeXtsCipher refuses a key with equal halves when made', T, () => {
  const half = randomBytes(32);
  assert.throws(() => new NativeXtsCipher(Buffer.concat([half, half])), /halves must differ/);
  assert.throws(() => new NativeXtsCipher(randomBytes(32)), /64 bytes/);
});
