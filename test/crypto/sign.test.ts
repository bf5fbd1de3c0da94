import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  SigningKeyError,
  ed25519PublicKeyFromPrivate,
  ed25519PublicKeyObject,
  ed25519RawPublicKey,
  ed25519Sign,
  ed25519Verify,
  generateEd25519KeyPair,
} from '../../src/crypto/sign.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

// RFC 8032 section 7.1: TEST 1, TEST 2, TEST 3 and TEST SHA(abc).
const RFC8032 = [
  {
    name: 'TEST 1',
    secret: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    public: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    message: '',
    signature: 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    name: 'TEST 2',
    secret: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    public: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    message: '72',
    signature: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
  {
    name: 'TEST 3',
    secret: 'c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7',
    public: 'fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025',
    message: 'af82',
    signature: '6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a',
  },
  {
    name: 'TEST SHA(abc)',
    secret: '833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42',
    public: 'ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf',
    message: createHash('sha512').update('abc').digest('hex'),
    signature: 'dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704',
  },
];

test('RFC 8032 vectors: public key from secret, deterministic signature, verification', () => {
  for (const v of RFC8032) {
    assert.equal(ed25519PublicKeyFromPrivate(hex(v.secret)).toString('hex'), v.public, v.name);
    assert.equal(ed25519Sign(hex(v.secret), hex(v.message)).toString('hex'), v.signature, v.name);
    assert.equal(ed25519Verify(hex(v.public), hex(v.message), hex(v.signature)), true, v.name);
  }
});

test('a changed message, signature or key does not verify', () => {
  const v = RFC8032[2]!;
  const sig = hex(v.signature);
  assert.equal(ed25519Verify(hex(v.public), hex('af83'), sig), false);
  assert.equal(ed25519Verify(hex(v.public), hex('af8200'), sig), false);
  for (const i of [0, 31, 32, 63]) {
    const bad = Buffer.from(sig);
    bad[i]! ^= 0x01;
    assert.equal(ed25519Verify(hex(v.public), hex(v.message), bad), false, `signature byte ${i}`);
  }
  assert.equal(ed25519Verify(hex(RFC8032[0]!.public), hex(v.message), sig), false);
  assert.equal(ed25519Verify(hex(v.public), hex(v.message), sig.subarray(0, 63)), false);
  assert.equal(ed25519Verify(hex(v.public), hex(v.message), Buffer.concat([sig, Buffer.of(0)])), false);
});

test('generated key pairs sign and verify, and round-trip through KeyObjects', () => {
  const { publicKey, privateKey } = generateEd25519KeyPair();
  assert.equal(publicKey.length, 32);
  assert.equal(privateKey.length, 32);
  assert.deepEqual(ed25519PublicKeyFromPrivate(privateKey), publicKey);
  assert.deepEqual(ed25519RawPublicKey(ed25519PublicKeyObject(publicKey)), publicKey);
  const sig = ed25519Sign(privateKey, Buffer.from('authority approves IDS measurement'));
  assert.equal(sig.length, 64);
  assert.equal(ed25519Verify(publicKey, Buffer.from('authority approves IDS measurement'), sig), true);
});

test('raw keys of the wrong length are refused with SigningKeyError', () => {
  for (const bad of [Buffer.alloc(0), Buffer.alloc(31), Buffer.alloc(33), Buffer.alloc(64)]) {
    assert.throws(() => ed25519Sign(bad, Buffer.from('m')), SigningKeyError);
    assert.throws(() => ed25519Verify(bad, Buffer.from('m'), Buffer.alloc(64)), SigningKeyError);
    assert.throws(() => ed25519PublicKeyFromPrivate(bad), SigningKeyError);
  }
});
