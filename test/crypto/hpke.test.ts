import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core';
import {
  HpkeError,
  generateHpkeKeyPair,
  hpkePublicKeyFromPrivate,
  openCompact,
  openWith,
  packSealed,
  sealTo,
  sealToCompact,
  unpackSealed,
} from '../../src/crypto/hpke.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

// RFC 9180 test vector for mode 0x00, KEM 0x0020 DHKEM(X25519, HKDF-SHA256), KDF 0x0001 HKDF-SHA256,
// AEAD 0x0002 AES-256-GCM, encryptions[0] (sequence number 0, what single-shot HPKE uses). The RFC's
// appendix has no X25519/AES-256-GCM suite; this one is from the RFC's JSON test vectors
// (github.com/cfrg/draft-irtf-cfrg-hpke test-vectors.json) as transcribed by BoringSSL/AWS-LC in
// crypto/hpke/hpke_test_vectors.txt (aws/aws-lc commit 3bda7bae, lines 2101-2112).
const V = {
  info: hex('4f6465206f6e2061204772656369616e2055726e'),
  skRm: hex('497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d'),
  skEm: hex('179d4b53b6365c45b600c4163b61d95cbc2f4d9e36f1695558dce265ab8bab11'),
  pkRm: hex('430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c'),
  pkEm: hex('6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256'),
  aad: hex('436f756e742d30'),
  ct: hex('e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a'),
  pt: hex('4265617574792069732074727574682c20747275746820626561757479'),
};

async function expectHpkeError(p: Promise<unknown>, code: HpkeError['code']): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof HpkeError && err.code === code);
}

test('openWith opens the RFC 9180 vector (enc = pkEm) to its plaintext', async () => {
  assert.deepEqual(await openWith(V.skRm, V.pkEm, V.ct, { info: V.info, aad: V.aad }), V.pt);
  assert.deepEqual(await openCompact(V.skRm, Buffer.concat([V.pkEm, V.ct]), { info: V.info, aad: V.aad }), V.pt);
});

test('hpkePublicKeyFromPrivate derives the vector public keys', () => {
  assert.deepEqual(hpkePublicKeyFromPrivate(V.skRm), V.pkRm);
  assert.deepEqual(hpkePublicKeyFromPrivate(V.skEm), V.pkEm);
});

// @hpke/core does not take an ephemeral key through sealTo's public API; its test-only `ekm` parameter
// does. This checks that the library, configured exactly as src/crypto/hpke.ts configures it,
// reproduces the vector's enc and ciphertext from the vector's ephemeral key pair.
test('the library suite reproduces the vector ciphertext from the vector ephemeral key', async () => {
  const suite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Aes256Gcm() });
  const ekm = { privateKey: await suite.kem.deserializePrivateKey(V.skEm), publicKey: await suite.kem.deserializePublicKey(V.pkEm) };
  const recipientPublicKey = await suite.kem.deserializePublicKey(V.pkRm);
  const { enc, ct } = await suite.seal({ recipientPublicKey, info: V.info, ekm }, V.pt, V.aad);
  assert.deepEqual(Buffer.from(enc), V.pkEm);
  assert.deepEqual(Buffer.from(ct), V.ct);
});

test('sealTo to the vector recipient opens with openWith; info and aad are bound', async () => {
  const sealed = await sealTo(V.pkRm, V.pt, { info: V.info, aad: V.aad });
  assert.equal(sealed.enc.length, 32);
  assert.equal(sealed.ciphertext.length, V.pt.length + 16);
  assert.notDeepEqual(sealed.enc, V.pkEm, 'a fresh ephemeral key per message');
  assert.deepEqual(await openWith(V.skRm, sealed.enc, sealed.ciphertext, { info: V.info, aad: V.aad }), V.pt);
  await expectHpkeError(openWith(V.skRm, sealed.enc, sealed.ciphertext, { info: Buffer.from('other'), aad: V.aad }), 'OPEN_FAILED');
  await expectHpkeError(openWith(V.skRm, sealed.enc, sealed.ciphertext, { info: V.info }), 'OPEN_FAILED');
  await expectHpkeError(openWith(V.skRm, sealed.enc, sealed.ciphertext, { info: V.info, aad: hex('436f756e742d31') }), 'OPEN_FAILED');
});

test('generated key pairs are raw 32-byte X25519 keys that round-trip messages', async () => {
  const kp = await generateHpkeKeyPair();
  assert.equal(kp.publicKey.length, 32);
  assert.equal(kp.privateKey.length, 32);
  assert.deepEqual(hpkePublicKeyFromPrivate(kp.privateKey), kp.publicKey);
  const info = Buffer.from('vmseal/v1/launch-bundle');
  const big = Buffer.alloc(1 << 20, 7);
  const packed = await sealToCompact(kp.publicKey, big, { info });
  assert.equal(packed.length, 32 + big.length + 16);
  assert.deepEqual(await openCompact(kp.privateKey, packed, { info }), big);
  assert.deepEqual(unpackSealed(packSealed(unpackSealed(packed))), unpackSealed(packed));
  const empty = await sealToCompact(kp.publicKey, Buffer.alloc(0), { info });
  assert.equal((await openCompact(kp.privateKey, empty, { info })).length, 0);
});

test('tampering with enc or ciphertext, or the wrong private key, fails to open', async () => {
  const kp = await generateHpkeKeyPair();
  const other = await generateHpkeKeyPair();
  const opts = { info: Buffer.from('i'), aad: Buffer.from('a') };
  const packed = await sealToCompact(kp.publicKey, Buffer.from('volume key and hashes'), opts);
  for (const i of [0, 15, 31, 32, 40, packed.length - 1]) {
    const t = Buffer.from(packed);
    t[i]! ^= 0x80;
    await expectHpkeError(openCompact(kp.privateKey, t, opts), 'OPEN_FAILED');
  }
  await expectHpkeError(openCompact(other.privateKey, packed, opts), 'OPEN_FAILED');
  await expectHpkeError(openCompact(kp.privateKey, packed.subarray(0, packed.length - 1), opts), 'OPEN_FAILED');
  await expectHpkeError(openCompact(kp.privateKey, packed.subarray(0, 47), opts), 'BAD_INPUT');
  await expectHpkeError(openWith(kp.privateKey, packed.subarray(0, 31), packed.subarray(32), opts), 'BAD_INPUT');
});

test('low-order X25519 points are refused as recipient keys and as enc', async () => {
  const kp = await generateHpkeKeyPair();
  const lowOrder = [
    Buffer.alloc(32),
    hex('0100000000000000000000000000000000000000000000000000000000000000'),
    hex('e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800'),
  ];
  for (const p of lowOrder) {
    await expectHpkeError(sealTo(p, Buffer.from('x'), { info: Buffer.alloc(0) }), 'SEAL_FAILED');
    await expectHpkeError(openWith(kp.privateKey, p, Buffer.alloc(32), { info: Buffer.alloc(0) }), 'OPEN_FAILED');
  }
});

test('keys of the wrong length and missing info are refused before any crypto', async () => {
  const kp = await generateHpkeKeyPair();
  for (const bad of [Buffer.alloc(0), Buffer.alloc(31), Buffer.alloc(33), Buffer.alloc(64)]) {
    await expectHpkeError(sealTo(bad, Buffer.from('x'), { info: Buffer.alloc(0) }), 'BAD_KEY');
    await expectHpkeError(openWith(bad, Buffer.alloc(32), Buffer.alloc(16), { info: Buffer.alloc(0) }), 'BAD_KEY');
    assert.throws(() => hpkePublicKeyFromPrivate(bad), HpkeError);
  }
  await expectHpkeError(sealTo(kp.publicKey, Buffer.from('x'), {} as { info: Uint8Array }), 'BAD_INPUT');
  await expectHpkeError(sealTo(kp.publicKey, 'text' as unknown as Uint8Array, { info: Buffer.alloc(0) }), 'BAD_INPUT');
});
