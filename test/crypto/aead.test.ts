import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { AEAD_OVERHEAD, AeadError, open, seal } from '../../src/crypto/aead.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

// NIST CAVP gcmEncryptExtIV256.rsp (AES-256, 96-bit IV, 128-bit tag), as transcribed in Chromium's
// quiche aes_256_gcm_encrypter_test.cc, plus Test Case 16 of McGrew & Viega, "The Galois/Counter Mode
// of Operation (GCM)" (the GCM specification submitted to NIST), appendix B.
const VECTORS = [
  { name: 'CAVP PTlen=0 AADlen=0 Count=0', key: 'b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4', iv: '516c33929df5a3284ff463d7', pt: '', aad: '', ct: '', tag: 'bdc1ac884d332457a1d2664f168c76f0' },
  { name: 'CAVP PTlen=0 AADlen=128 Count=0', key: '78dc4e0aaf52d935c3c01eea57428f00ca1fd475f5da86a49c8dd73d68c8e223', iv: 'd79cf22d504cc793c3fb6c8a', pt: '', aad: 'b96baa8c1c75a671bfb2d08d06be5f36', ct: '', tag: '3e5d486aa2e30b22e040b85723a06e76' },
  { name: 'CAVP PTlen=128 AADlen=0 Count=0', key: '31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22', iv: '0d18e06c7c725ac9e362e1ce', pt: '2db5168e932556f8089a0622981d017d', aad: '', ct: 'fa4362189661d163fcd6a56d8bf0405a', tag: 'd636ac1bbedd5cc3ee727dc2ab4a9489' },
  {
    name: 'CAVP PTlen=408 AADlen=160 Count=0',
    key: '24501ad384e473963d476edcfe08205237acfd49b5b8f33857f8114e863fec7f',
    iv: '9ff18563b978ec281b3f2794',
    pt: '27f348f9cdc0c5bd5e66b1ccb63ad920ff2219d14e8d631b3872265cf117ee86757accb158bd9abb3868fdc0d0b074b5f01b2c',
    aad: 'adb5ec720ccf9898500028bf34afccbcaca126ef',
    ct: 'eb7cb754c824e8d96f7c6d9b76c7d26fb874ffbf1d65c6f64a698d839b0b06145dae82057ad55994cf59ad7f67c0fa5e85fab8',
    tag: 'bc95c532fecc594c36d1550286a7a3f0',
  },
  {
    name: 'CAVP PTlen=408 AADlen=720 Count=0',
    key: '148579a3cbca86d5520d66c0ec71ca5f7e41ba78e56dc6eebd566fed547fe691',
    iv: 'b08a5ea1927499c6ecbfd4e0',
    pt: '9d0b15fdf1bd595f91f8b3abc0f7dec927dfd4799935a1795d9ce00c9b879434420fe42c275a7cd7b39d638fb81ca52b49dc41',
    aad: 'e4f963f015ffbb99ee3349bbaf7e8e8e6c2a71c230a48f9d59860a29091d2747e01a5ca572347e247d25f56ba7ae8e05cde2be3c97931292c02370208ecd097ef692687fecf2f419d3200162a6480a57dad408a0dfeb492e2c5d',
    ct: '2097e372950a5e9383c675e89eea1c314f999159f5611344b298cda45e62843716f215f82ee663919c64002a5c198d7878fd3f',
    tag: 'adbecdb0d5c2224d804d2886ff9a5760',
  },
  {
    name: 'GCM spec Test Case 16',
    key: 'feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308',
    iv: 'cafebabefacedbaddecaf888',
    pt: 'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39',
    aad: 'feedfacedeadbeeffeedfacedeadbeefabaddad2',
    ct: '522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662',
    tag: '76fc6ece0f4e1768cddf8853bb2d551b',
  },
];

function envelopeOf(v: (typeof VECTORS)[number]): Buffer {
  return Buffer.concat([Buffer.of(0x01), hex(v.iv), hex(v.ct), hex(v.tag)]);
}

function expectAeadError(fn: () => unknown, code: AeadError['code']): void {
  assert.throws(fn, (err: unknown) => err instanceof AeadError && err.code === code);
}

test('open() recovers the plaintext of NIST AES-256-GCM vectors laid out as envelopes', () => {
  for (const v of VECTORS) {
    assert.equal(open(hex(v.key), envelopeOf(v), hex(v.aad)).toString('hex'), v.pt, v.name);
  }
});

test('open() rejects NIST vectors with one tag bit flipped or the AAD changed', () => {
  for (const v of VECTORS) {
    const env = envelopeOf(v);
    env[env.length - 1]! ^= 0x01;
    expectAeadError(() => open(hex(v.key), env, hex(v.aad)), 'AUTH_FAILED');
    expectAeadError(() => open(hex(v.key), envelopeOf(v), Buffer.concat([hex(v.aad), Buffer.of(0)])), 'AUTH_FAILED');
  }
});

test('seal() writes version || nonce || ciphertext || tag, readable by plain AES-256-GCM', () => {
  const key = randomBytes(32);
  const pt = Buffer.from('vmseal identity proof');
  const aad = Buffer.from('context');
  const env = seal(key, pt, aad);
  assert.equal(env.length, pt.length + AEAD_OVERHEAD);
  assert.equal(env[0], 0x01);
  const d = createDecipheriv('aes-256-gcm', key, env.subarray(1, 13));
  d.setAAD(aad);
  d.setAuthTag(env.subarray(env.length - 16));
  assert.deepEqual(Buffer.concat([d.update(env.subarray(13, env.length - 16)), d.final()]), pt);
  assert.deepEqual(open(key, env, aad), pt);
});

test('seal() draws a fresh nonce each time and handles empty plaintext and absent AAD', () => {
  const key = randomBytes(32);
  const a = seal(key, Buffer.from('same'));
  const b = seal(key, Buffer.from('same'));
  assert.notDeepEqual(a.subarray(1, 13), b.subarray(1, 13));
  assert.deepEqual(open(key, a), Buffer.from('same'));
  const empty = seal(key, Buffer.alloc(0));
  assert.equal(empty.length, AEAD_OVERHEAD);
  assert.equal(open(key, empty).length, 0);
  // Absent AAD and empty AAD are the same thing.
  assert.deepEqual(open(key, a, Buffer.alloc(0)), Buffer.from('same'));
});

test('every single-bit flip anywhere in an envelope is rejected', () => {
  const key = randomBytes(32);
  const env = seal(key, Buffer.from('pause vm 7'), Buffer.from('aad'));
  for (let i = 0; i < env.length; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const t = Buffer.from(env);
      t[i]! ^= 1 << bit;
      expectAeadError(() => open(key, t, Buffer.from('aad')), i === 0 ? 'BAD_VERSION' : 'AUTH_FAILED');
    }
  }
});

test('truncated, extended, wrong-key, wrong-AAD and wrong-version envelopes are rejected', () => {
  const key = randomBytes(32);
  const env = seal(key, Buffer.from('0123456789abcdef'), Buffer.from('aad'));
  for (let len = 0; len < env.length; len++) {
    expectAeadError(() => open(key, env.subarray(0, len), Buffer.from('aad')), len < AEAD_OVERHEAD ? 'TRUNCATED' : 'AUTH_FAILED');
  }
  expectAeadError(() => open(key, Buffer.concat([env, Buffer.of(0)]), Buffer.from('aad')), 'AUTH_FAILED');
  expectAeadError(() => open(randomBytes(32), env, Buffer.from('aad')), 'AUTH_FAILED');
  expectAeadError(() => open(key, env, Buffer.from('aae')), 'AUTH_FAILED');
  expectAeadError(() => open(key, env), 'AUTH_FAILED');
  const v2 = Buffer.from(env);
  v2[0] = 0x02;
  expectAeadError(() => open(key, v2, Buffer.from('aad')), 'BAD_VERSION');
});

test('keys other than 32 bytes are refused on both sides', () => {
  for (const bad of [Buffer.alloc(0), Buffer.alloc(16), Buffer.alloc(31), Buffer.alloc(33), Buffer.alloc(64)]) {
    expectAeadError(() => seal(bad, Buffer.from('x')), 'BAD_KEY');
    expectAeadError(() => open(bad, Buffer.alloc(64)), 'BAD_KEY');
  }
});
