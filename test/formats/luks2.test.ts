import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afMerge, afSplit } from '../../src/formats/luks2/af.ts';
import {
  BINARY_HEADER_SIZE,
  encodeHeaderArea,
  headerAreaChecksum,
  luksVersion,
  parseBinaryHeader,
  verifyHeaderArea,
} from '../../src/formats/luks2/binary-header.ts';
import { LuksFormatError } from '../../src/formats/luks2/errors.ts';
import { checkVolumeKeyDigest, deriveKeyslotKey, volumeKeyDigest } from '../../src/formats/luks2/kdf.ts';
import { parseLuks1Header } from '../../src/formats/luks2/luks1-header.ts';
import { encodeLuks2Metadata, parseLuks2Metadata } from '../../src/formats/luks2/metadata.ts';
import { LUKS2_LAYOUT, buildLuks2HeaderRegion } from '../../src/formats/luks2/writer.ts';

const PASS = Buffer.from('correct horse battery staple');

function cryptsetup(args: string[]): string {
  return execFileSync('/usr/sbin/cryptsetup', args, { timeout: 60_000, encoding: 'utf8' });
}

/** A fresh image formatted by cryptsetup itself; returns its bytes (the header region is all we need). */
function cryptsetupImage(type: 'luks1' | 'luks2', extra: string[]): { bytes: Buffer; uuid: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-luks-'));
  try {
    const img = join(dir, 'img');
    const key = join(dir, 'key');
    writeFileSync(key, PASS);
    writeFileSync(img, '');
    truncateSync(img, 20 * 1024 * 1024);
    cryptsetup(['luksFormat', '--type', type, '--batch-mode', '--key-file', key, ...extra, img]);
    return { bytes: readFileSync(img), uuid: cryptsetup(['luksUUID', img]).trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const LUKS2_ARGS = ['--pbkdf', 'argon2id', '--pbkdf-memory', '32768', '--pbkdf-force-iterations', '4', '--sector-size', '4096'];

test('reads both header copies and the metadata of a cryptsetup LUKS2 image', { timeout: 60_000 }, () => {
  const { bytes, uuid } = cryptsetupImage('luks2', LUKS2_ARGS);
  assert.equal(luksVersion(bytes), 2);
  const primary = verifyHeaderArea(bytes.subarray(0, 16384), 0);
  const secondary = verifyHeaderArea(bytes.subarray(16384, 32768), 16384);
  assert.equal(primary.header.primary, true);
  assert.equal(secondary.header.primary, false);
  assert.equal(primary.header.uuid, uuid);
  assert.equal(primary.header.hdrSize, 16384);
  assert.equal(primary.header.seqid, secondary.header.seqid);
  assert.notDeepEqual(primary.header.salt, secondary.header.salt);
  assert.equal(primary.jsonText, secondary.jsonText);

  const m = parseLuks2Metadata(primary.jsonText, 16384);
  assert.equal(m.keyslots.length, 1);
  const k = m.keyslots[0]!;
  assert.equal(k.keySize, 64);
  assert.deepEqual(k.af, { stripes: 4000, hash: 'sha256' });
  assert.deepEqual(k.area, { offset: 32768, size: 258048, encryption: 'aes-xts-plain64', keySize: 64 });
  assert.equal(k.kdf.type, 'argon2id');
  assert.ok(k.kdf.type === 'argon2id' && k.kdf.memoryKiB === 32768 && k.kdf.time === 4 && k.kdf.salt.length === 32);
  const s = m.segments[0]!;
  assert.deepEqual(
    { offset: s.offset, size: s.size, ivTweak: s.ivTweak, encryption: s.encryption, sectorSize: s.sectorSize, integrity: s.integrity },
    { offset: 16777216, size: 'dynamic', ivTweak: 0n, encryption: 'aes-xts-plain64', sectorSize: 4096, integrity: false },
  );
  assert.deepEqual(m.digests[0]!.keyslots, [0]);
  assert.equal(m.digests[0]!.digest.length, 32);
  assert.deepEqual(m.config, { jsonSize: 12288, keyslotsSize: 16744448, flags: [], mandatoryRequirements: [] });
});

test('re-encodes a cryptsetup LUKS2 header byte for byte', { timeout: 60_000 }, () => {
  const { bytes } = cryptsetupImage('luks2', ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '4096']);
  for (const offset of [0, 16384]) {
    const area = bytes.subarray(offset, offset + 16384);
    const { header, jsonText } = verifyHeaderArea(area, offset);
    const again = encodeHeaderArea({ ...header, jsonText: encodeLuks2Metadata(parseLuks2Metadata(jsonText, 16384)) });
    assert.deepEqual(again, area);
  }
});

test('writes header copies that parse back and that cryptsetup luksDump accepts', { timeout: 60_000 }, (t) => {
  const region = buildLuks2HeaderRegion({
    uuid: '0b5e5c1e-2f4a-4d7e-9a51-3c0f6d8e7a12',
    headerSalts: [randomBytes(64), randomBytes(64)],
    volumeKeyBytes: 64,
    sectorSize: 4096,
    keyslot: { kdf: { type: 'pbkdf2', hash: 'sha256', iterations: 1000, salt: randomBytes(32) }, afHash: 'sha256', keySize: 64, material: randomBytes(64 * 4000) },
    digest: { hash: 'sha256', iterations: 1000, salt: randomBytes(32), digest: randomBytes(32) },
    label: 'vmseal-test',
  });
  assert.equal(region.length, LUKS2_LAYOUT.keyslotsOffset + 258048);
  const p = verifyHeaderArea(region.subarray(0, 16384), 0);
  const s = verifyHeaderArea(region.subarray(16384, 32768), 16384);
  assert.equal(p.header.label, 'vmseal-test');
  assert.equal(p.jsonText, s.jsonText);
  assert.equal(parseLuks2Metadata(p.jsonText, 16384).segments[0]!.sectorSize, 4096);

  const dir = mkdtempSync(join(tmpdir(), 'vmseal-luks-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const img = join(dir, 'img');
  writeFileSync(img, region);
  truncateSync(img, LUKS2_LAYOUT.dataOffset + 1024 * 1024);
  const dump = cryptsetup(['luksDump', img]);
  assert.match(dump, /Version:\s+2/);
  assert.match(dump, /UUID:\s+0b5e5c1e-2f4a-4d7e-9a51-3c0f6d8e7a12/);
  assert.match(dump, /Label:\s+vmseal-test/);
  assert.match(dump, /sector: 4096 \[bytes\]/);
  assert.match(dump, /offset: 16777216 \[bytes\]/);
  assert.match(dump, /cipher: aes-xts-plain64/);
  assert.match(dump, /PBKDF:\s+pbkdf2/);
  assert.match(dump, /AF stripes: 4000/);
});

function flip(b: Buffer, at: number): void {
  b[at] = b[at]! ^ 1;
}

/** Builds a header area around edited metadata, with a valid checksum, so only the edit is wrong. */
function areaWith(edit: (json: Record<string, any>) => void, base: { bytes: Buffer }): Buffer {
  const { header, jsonText } = verifyHeaderArea(base.bytes.subarray(0, 16384), 0);
  const json = JSON.parse(jsonText);
  edit(json);
  return encodeHeaderArea({ ...header, jsonText: JSON.stringify(json) });
}

function parseArea(area: Buffer): unknown {
  const { header, jsonText } = verifyHeaderArea(area, 0);
  return parseLuks2Metadata(jsonText, header.hdrSize);
}

test('hostile LUKS2 binary headers are refused with clear errors', { timeout: 60_000 }, () => {
  const base = cryptsetupImage('luks2', ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '4096']);
  const good = Buffer.from(base.bytes.subarray(0, 16384));
  const mutate = (f: (b: Buffer) => void, recompute = true): Buffer => {
    const b = Buffer.from(good);
    f(b);
    if (recompute) headerAreaChecksum(b).copy(b, 448);
    return b;
  };
  const refuse = (b: Buffer, re: RegExp) => assert.throws(() => parseArea(b), (e: unknown) => e instanceof LuksFormatError && re.test(e.message));

  refuse(mutate((b) => flip(b, BINARY_HEADER_SIZE + 10), false), /checksum mismatch/);
  refuse(mutate((b) => flip(b, 450), false), /checksum mismatch/);
  refuse(mutate((b) => b.write('XXXX', 0, 'latin1')), /bad magic/);
  refuse(mutate((b) => b.writeUInt16BE(3, 6)), /version 3/);
  refuse(mutate((b) => b.writeBigUInt64BE(12345n, 8)), /invalid hdr_size/);
  refuse(mutate((b) => b.writeBigUInt64BE(1n << 62n, 8)), /invalid hdr_size/);
  refuse(mutate((b) => b.writeBigUInt64BE(16384n, 256)), /hdr_offset/);
  refuse(mutate((b) => b.fill(0x41, 168, 208)), /uuid is not NUL-terminated/);
  refuse(mutate((b) => b.write('md5\0', 72, 'latin1')), /checksum_alg/);
  refuse(mutate((b) => b.fill(0x20, BINARY_HEADER_SIZE)), /not NUL-terminated/);
  refuse(mutate((b) => b.write('{"keyslots":', BINARY_HEADER_SIZE, 'latin1') && b.fill(0, BINARY_HEADER_SIZE + 12)), /not valid JSON/);
  assert.throws(() => parseBinaryHeader(good.subarray(0, 100)), /need 4096/);
  assert.throws(() => verifyHeaderArea(good.subarray(0, 8192), 0), /hdr_size says 16384/);
});

test('hostile LUKS2 metadata is refused with clear errors', { timeout: 60_000 }, () => {
  const base = cryptsetupImage('luks2', ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '4096']);
  const refuse = (edit: (j: Record<string, any>) => void, re: RegExp) =>
    assert.throws(
      () => parseArea(areaWith(edit, base)),
      (e: unknown) => e instanceof LuksFormatError && re.test(e.message),
      re.source,
    );
  assert.ok(parseArea(areaWith(() => undefined, base)));

  refuse((j) => (j.config.json_size = '4096'), /json_size/);
  refuse((j) => (j.segments['0'].offset = '99999999999999999999999'), /64-bit|exceeds/);
  refuse((j) => (j.segments['0'].offset = '-1'), /decimal/);
  refuse((j) => (j.segments['0'].offset = 16777216), /segment 0/);
  refuse((j) => (j.segments['0'].sector_size = 3000), /sector_size/);
  refuse((j) => (j.segments['0'].offset = '16777217'), /aligned/);
  refuse((j) => (j.keyslots['0'].area.offset = '4096'), /outside the keyslots area/);
  refuse((j) => (j.keyslots['0'].area.size = '1099511627776'), /outside the keyslots area/);
  refuse((j) => (j.keyslots['0'].af.stripes = 0), /keyslot 0/);
  refuse((j) => (j.keyslots['0'].af.stripes = 4001), /keyslot 0/);
  refuse((j) => (j.keyslots['0'].af.hash = 'md5'), /unsupported hash/);
  refuse((j) => (j.keyslots['0'].kdf.salt = 'not base64!'), /base64/);
  refuse((j) => (j.keyslots['0'].kdf.iterations = 0), /keyslot 0/);
  refuse(
    (j) => (j.keyslots['0'].kdf = { type: 'argon2id', time: 4, memory: 8 * 1024 * 1024, cpus: 4, salt: j.keyslots['0'].kdf.salt }),
    /Argon2 memory/,
  );
  refuse((j) => (j.keyslots['0'].kdf = { type: 'scrypt' }), /keyslot 0/);
  refuse((j) => (j.keyslots['1'] = { ...j.keyslots['0'] }), /overlap/);
  refuse((j) => (j.keyslots['x'] = j.keyslots['0']), /keyslots\.x: Invalid key/);
  refuse((j) => (j.digests['0'].keyslots = ['5']), /missing keyslot 5/);
  refuse((j) => (j.digests['0'].hash = 'whirlpool'), /unsupported hash/);
  refuse((j) => delete j.config, /config/);
  refuse((j) => {
    for (let i = 0; i < 40; i++) j.tokens[String(i)] = { type: 't', keyslots: [] };
  }, /more than 32/);
  // Deep nesting inside an otherwise opaque token is still just data.
  let deep: unknown = 1;
  for (let i = 0; i < 2000; i++) deep = [deep];
  assert.ok(parseArea(areaWith((j) => (j.tokens['0'] = { type: 'x', keyslots: [], deep }), base)));
});

test('AF split and merge round-trip, and every stripe matters', () => {
  for (const [hash, keySize, stripes] of [
    ['sha256', 64, 4000],
    ['sha1', 32, 4000],
    ['sha512', 17, 3],
    ['sha256', 33, 1],
  ] as const) {
    const key = randomBytes(keySize);
    const material = afSplit(key, stripes, hash);
    assert.equal(material.length, keySize * stripes);
    assert.deepEqual(afMerge(material, keySize, stripes, hash), key);
    for (const stripe of [0, Math.floor(stripes / 2), stripes - 1]) {
      const damaged = Buffer.from(material);
      flip(damaged, stripe * keySize + (keySize >> 1));
      assert.notDeepEqual(afMerge(damaged, keySize, stripes, hash), key, `stripe ${stripe}`);
    }
  }
});

test('AF split follows the LUKS diffusion (hash of be32 index and piece)', () => {
  // With stripes = 2 the material is s0 || (H(s0) XOR key), H hashing 32-byte pieces as sha256(be32(j) || piece).
  const key = randomBytes(40);
  const s0 = randomBytes(40);
  const material = afSplit(key, 2, 'sha256', () => Buffer.from(s0));
  const h = (j: number, piece: Buffer) => createHash('sha256').update(Buffer.from([0, 0, 0, j])).update(piece).digest();
  const diffused = Buffer.concat([h(0, s0.subarray(0, 32)), h(1, s0.subarray(32)).subarray(0, 8)]);
  assert.deepEqual(material.subarray(0, 40), s0);
  assert.deepEqual(material.subarray(40), Buffer.from(diffused.map((b, i) => b ^ key[i]!)));
});

test('AF refuses bad parameters', () => {
  assert.throws(() => afMerge(Buffer.alloc(100), 64, 4000, 'sha256'), /AF material/);
  assert.throws(() => afSplit(randomBytes(64), 4001, 'sha256'), /stripes/);
  assert.throws(() => afSplit(randomBytes(64), 0, 'sha256'), /stripes/);
  assert.throws(() => afSplit(randomBytes(64), 2, 'md4'), /unsupported hash/);
});

test('PBKDF2-SHA256 known answer (RFC 7914 section 11) and the digest check', async () => {
  const rfc = await volumeKeyDigest(Buffer.from('passwd'), 'sha256', Buffer.from('salt'), 1, 64);
  assert.equal(
    rfc.toString('hex'),
    '55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783',
  );
  const salt8 = Buffer.from('saltsalt');
  assert.deepEqual(
    await deriveKeyslotKey(Buffer.from('passwd'), { type: 'pbkdf2', hash: 'SHA256', iterations: 3, salt: salt8 }, 48),
    await volumeKeyDigest(Buffer.from('passwd'), 'sha256', salt8, 3, 48),
  );
  const vk = randomBytes(64);
  const salt = randomBytes(32);
  const digest = await volumeKeyDigest(vk, 'sha256', salt, 1000, 32);
  assert.equal(await checkVolumeKeyDigest(vk, { hash: 'sha256', salt, iterations: 1000, digest }), true);
  flip(vk, 0);
  assert.equal(await checkVolumeKeyDigest(vk, { hash: 'sha256', salt, iterations: 1000, digest }), false);
});

test('Argon2 variants differ and KDF bounds are enforced', async () => {
  const salt = randomBytes(32);
  const params = { time: 1, memoryKiB: 64, parallelism: 1, salt };
  const id = await deriveKeyslotKey(PASS, { type: 'argon2id', ...params }, 64);
  const i = await deriveKeyslotKey(PASS, { type: 'argon2i', ...params }, 64);
  assert.equal(id.length, 64);
  assert.notDeepEqual(id, i);
  assert.deepEqual(await deriveKeyslotKey(PASS, { type: 'argon2id', ...params }, 64), id);
  await assert.rejects(deriveKeyslotKey(PASS, { type: 'argon2id', ...params, memoryKiB: 5 * 1024 * 1024 }, 64), /Argon2 memory/);
  await assert.rejects(deriveKeyslotKey(PASS, { type: 'argon2id', ...params, parallelism: 0 }, 64), /parallelism/);
  await assert.rejects(deriveKeyslotKey(PASS, { type: 'pbkdf2', hash: 'sha256', iterations: 1, salt: Buffer.alloc(4) }, 64), /salt/);
});

test('reads a cryptsetup LUKS1 header', { timeout: 60_000 }, () => {
  const { bytes, uuid } = cryptsetupImage('luks1', ['--pbkdf-force-iterations', '1000', '--key-size', '256']);
  assert.equal(luksVersion(bytes), 1);
  const h = parseLuks1Header(bytes);
  assert.equal(h.cipherName, 'aes');
  assert.equal(h.cipherMode, 'xts-plain64');
  assert.equal(h.hashSpec, 'sha256');
  assert.equal(h.keyBytes, 32);
  assert.equal(h.uuid, uuid);
  assert.equal(h.payloadOffset, 4096);
  assert.equal(h.keyslots.length, 1);
  assert.equal(h.keyslots[0]!.index, 0);
  assert.equal(h.keyslots[0]!.stripes, 4000);
  assert.equal(h.keyslots[0]!.iterations, 1000);
  assert.equal(h.keyslots[0]!.keyMaterialOffset, 8);

  const refuse = (edit: (b: Buffer) => void, re: RegExp) => {
    const b = Buffer.from(bytes.subarray(0, 592));
    edit(b);
    assert.throws(() => parseLuks1Header(b), (e: unknown) => e instanceof LuksFormatError && re.test(e.message), re.source);
  };
  refuse((b) => b.writeUInt32BE(0x12345678, 208), /invalid state/);
  refuse((b) => b.writeUInt32BE(0, 208 + 44), /stripes 0/);
  refuse((b) => b.writeUInt32BE(0, 208 + 40), /overlaps the header/);
  refuse((b) => b.writeUInt32BE(100, 104), /overlaps the payload/);
  refuse((b) => b.write('md5\0', 72, 'latin1'), /unsupported hash/);
  refuse((b) => b.fill(0x41, 8, 40), /cipher name/);
  refuse((b) => b.writeUInt32BE(0, 108), /key size 0/);
  assert.throws(() => parseLuks1Header(bytes.subarray(0, 500)), /need 592/);
});
