import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, randomBytes, randomInt } from 'node:crypto';
import { XtsCipher, xtsDecryptSectors, xtsEncryptSectors } from '../../src/crypto/xts.ts';

// Known answers from IEEE Std 1619-2007 (XTS-AES), Annex B, as carried in Botan's src/tests/data/modes/xts.vec
// ("IEEE 1619-2007 VECTOR n"). Every one has a 512-byte data unit whose plaintext is bytes 00..ff twice, and a
// data unit sequence number that is exactly the plain64 sector number.
const KEY_256 = Buffer.from(
  '27182818284590452353602874713526624977572470936999595749669676273141592653589793238462643383279502884197169399375105820974944592',
  'hex',
);
const KEY_128 = Buffer.from('2718281828459045235360287471352631415926535897932384626433832795', 'hex');
const PTX = Buffer.from(Array.from({ length: 512 }, (_, i) => i & 0xff));
const VECTOR_4 = [
    '27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89cc78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412',
    '328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265',
    '5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434',
    '1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e',
    '94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3',
    'e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd',
    '74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e',
    'bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18deb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568',
  ].join(''); // AES-128, sequence number 0
const VECTOR_5 = [
    '264d3ca8512194fec312c8c9891f279fefdd608d0c027b60483a3fa811d65ee59d52d9e40ec5672d81532b38b6b089ce951f0f9c35590b8b978d175213f329bb',
    '1c2fd30f2f7f30492a61a532a79f51d36f5e31a7c9a12c286082ff7d2394d18f783e1a8e72c722caaaa52d8f065657d2631fd25bfd8e5baad6e527d763517501',
    'c68c5edc3cdd55435c532d7125c8614deed9adaa3acade5888b87bef641c4c994c8091b5bcd387f3963fb5bc37aa922fbfe3df4e5b915e6eb514717bdd2a7407',
    '9a5073f5c4bfd46adf7d282e7a393a52579d11a028da4d9cd9c77124f9648ee383b1ac763930e7162a8d37f350b2f74b8472cf09902063c6b32e8c2d9290cefb',
    'd7346d1c779a0df50edcde4531da07b099c638e83a755944df2aef1aa31752fd323dcb710fb4bfbb9d22b925bc3577e1b8949e729a90bbafeacf7f7879e7b114',
    '7e28ba0bae940db795a61b15ecf4df8db07b824bb062802cc98a9545bb2aaeed77cb3fc6db15dcd7d80d7d5bc406c4970a3478ada8899b329198eb61c193fb62',
    '75aa8ca340344a75a862aebe92eee1ce032fd950b47d7704a3876923b4ad62844bf4a09c4dbe8b4397184b7471360c9564880aedddb9baa4af2e75394b08cd32',
    'ff479c57a07d3eab5d54de5f9738b8d27f27a9f0ab11799d7b7ffefb2704c95c6ad12c39f1e867a4b7b1d7818a4b753dfd2a89ccb45e001a03a867b187f225dd',
  ].join(''); // AES-128, sequence number 1, plaintext = vector 4's ciphertext
const VECTOR_10 = [
    '1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd',
    '5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca',
    '2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f',
    '93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a',
    '84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae',
    '9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac',
    '6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385',
    '1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151',
  ].join(''); // AES-256, sequence number 0xff
const VECTOR_13 = [
    'bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1',
    'c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e',
    '919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d350875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5',
    '69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed90fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c',
    '1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7',
    '5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00',
    '77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155',
    '6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88cf6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220',
  ].join(''); // AES-256, sequence number 0xffffffff
const VECTOR_14 = [
    '64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed2350eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80',
    '8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4',
    'a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434',
    '631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d876c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff',
    '3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41bf6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6',
    '85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc',
    'e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546',
    '81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9',
  ].join(''); // AES-256, sequence number 0xffffffffff (beyond 32 bits)

/** The reference: Node's own aes-xts, one cipher object per sector, IV = plain64 of the 512-byte unit. */
function reference(encrypt: boolean, key: Buffer, firstSector: bigint, sectorSize: number, data: Buffer): Buffer {
  const alg = key.length === 64 ? 'aes-256-xts' : 'aes-128-xts';
  const out = Buffer.alloc(data.length);
  for (let i = 0; i < data.length / sectorSize; i++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE((firstSector + BigInt(i)) * BigInt(sectorSize / 512));
    const c = encrypt ? createCipheriv(alg, key, iv) : createDecipheriv(alg, key, iv);
    Buffer.concat([c.update(data.subarray(i * sectorSize, (i + 1) * sectorSize)), c.final()]).copy(out, i * sectorSize);
  }
  return out;
}

test('IEEE 1619 XTS-AES-256 vectors 10, 13, 14', () => {
  for (const [seq, hex] of [
    [0xffn, VECTOR_10],
    [0xffffffffn, VECTOR_13],
    [0xffffffffffn, VECTOR_14],
  ] as const) {
    const ct = xtsEncryptSectors(KEY_256, seq, 512, PTX);
    assert.equal(ct.toString('hex'), hex, `sequence number ${seq.toString(16)}`);
    assert.deepEqual(xtsDecryptSectors(KEY_256, seq, 512, ct), PTX);
  }
});

test('IEEE 1619 XTS-AES-128 vectors 4 and 5 as one two-sector batch', () => {
  const v4 = Buffer.from(VECTOR_4, 'hex');
  const v5 = Buffer.from(VECTOR_5, 'hex');
  const ct = xtsEncryptSectors(KEY_128, 0, 512, Buffer.concat([PTX, v4]));
  assert.deepEqual(ct, Buffer.concat([v4, v5]));
  assert.deepEqual(xtsDecryptSectors(KEY_128, 0, 512, ct), Buffer.concat([PTX, v4]));
});

test('matches per-sector Node aes-xts on random data, sector sizes and sector numbers', () => {
  const starts = [0n, 1n, 0xfffffffdn, (1n << 29n) - 2n, (1n << 40n) + 12345n, (1n << 55n) - 1n];
  for (const keyBytes of [32, 64]) {
    const key = randomBytes(keyBytes);
    const cipher = new XtsCipher(key);
    for (const sectorSize of [512, 1024, 2048, 4096]) {
      for (const first of [...starts, BigInt(randomInt(0, 2 ** 40))]) {
        const data = randomBytes(sectorSize * randomInt(1, 40));
        const ct = cipher.encryptSectors(first, sectorSize, data);
        assert.deepEqual(ct, reference(true, key, first, sectorSize, data), `encrypt ss=${sectorSize} first=${first}`);
        assert.deepEqual(cipher.decryptSectors(first, sectorSize, ct), data);
        assert.deepEqual(cipher.decryptSectors(first, sectorSize, data), reference(false, key, first, sectorSize, data));
      }
    }
  }
});

test('batches larger than the internal chunk, sector numbers as number or bigint', () => {
  const key = randomBytes(64);
  const data = randomBytes(4096 * 75);
  const want = reference(true, key, 123456789n, 4096, data);
  assert.deepEqual(xtsEncryptSectors(key, 123456789, 4096, data), want);
  assert.deepEqual(xtsEncryptSectors(key, 123456789n, 4096, data), want);
});

test('the highest sector numbers plain64 can express, and one past them', () => {
  const key = randomBytes(64);
  const data = randomBytes(4 * 512);
  const first = (1n << 64n) - 4n;
  assert.deepEqual(xtsEncryptSectors(key, first, 512, data), reference(true, key, first, 512, data));
  assert.throws(() => xtsEncryptSectors(key, first + 1n, 512, data), /64-bit IV range/);
  // With 4096-byte sectors the IV is 8 * sector: the last usable sector is (2^64 - 8) / 8.
  const last4k = ((1n << 64n) - 8n) / 8n;
  assert.equal(xtsEncryptSectors(key, last4k, 4096, data.subarray(0, 0)).length, 0);
  assert.equal(xtsEncryptSectors(key, last4k, 4096, randomBytes(4096)).length, 4096);
  assert.throws(() => xtsEncryptSectors(key, last4k + 1n, 4096, randomBytes(4096)), /64-bit IV range/);
});

test('a reused key context carries no state between calls', () => {
  const key = randomBytes(64);
  const cipher = new XtsCipher(key);
  for (let i = 0; i < 20; i++) {
    const sector = BigInt(randomInt(0, 2 ** 30));
    const data = randomBytes(4096 * randomInt(1, 24));
    const encrypt = i % 3 !== 0;
    const got = encrypt ? cipher.encryptSectors(sector, 4096, data) : cipher.decryptSectors(sector, 4096, data);
    assert.deepEqual(got, reference(encrypt, key, sector, 4096, data));
  }
});

test('in place, into a given buffer, and on unaligned views', () => {
  const key = randomBytes(64);
  const data = randomBytes(4096 * 3);
  const want = reference(true, key, 7n, 4096, data);

  const inPlace = Buffer.from(data);
  assert.equal(xtsEncryptSectors(key, 7, 4096, inPlace, inPlace), inPlace);
  assert.deepEqual(inPlace, want);

  const out = Buffer.alloc(data.length);
  assert.equal(xtsEncryptSectors(key, 7, 4096, data, out), out);
  assert.deepEqual(out, want);

  const backing = Buffer.alloc(data.length + 3);
  const unaligned = backing.subarray(1, 1 + data.length);
  data.copy(unaligned);
  const outBacking = Buffer.alloc(data.length + 3);
  const unalignedOut = outBacking.subarray(3, 3 + data.length);
  xtsEncryptSectors(key, 7, 4096, unaligned, unalignedOut);
  assert.deepEqual(unalignedOut, want);
  xtsDecryptSectors(key, 7, 4096, unalignedOut, unalignedOut);
  assert.deepEqual(unalignedOut, data);
  assert.deepEqual(unaligned, data, 'input untouched');
});

test('bad keys and arguments are refused with clear errors', () => {
  const key = randomBytes(64);
  assert.throws(() => new XtsCipher(randomBytes(48)), /32 or 64 bytes/);
  const same = randomBytes(32);
  assert.throws(() => new XtsCipher(Buffer.concat([same, same])), /halves must differ/);
  assert.throws(() => xtsEncryptSectors(key, 0, 4096, randomBytes(4095)), /not a multiple/);
  assert.throws(() => xtsEncryptSectors(key, 0, 768, randomBytes(768)), /power of two/);
  assert.throws(() => xtsEncryptSectors(key, 0, 256, randomBytes(256)), /power of two/);
  assert.throws(() => xtsEncryptSectors(key, -1, 512, randomBytes(512)), /negative/);
  assert.throws(() => xtsEncryptSectors(key, 2 ** 53, 512, randomBytes(512)), /safe integer/);
  assert.throws(() => xtsEncryptSectors(key, 0, 512, randomBytes(512), Buffer.alloc(511)), /output length/);
  assert.equal(xtsEncryptSectors(key, 0, 512, Buffer.alloc(0)).length, 0);
});
