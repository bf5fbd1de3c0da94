import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XtsCipher } from '../../src/crypto/xts.ts';
import { LuksFormatError } from '../../src/formats/luks2/errors.ts';
import { WrongPassphraseError, openImage } from '../../src/client/image-import.ts';
import { sealImage } from '../../src/client/image-seal.ts';
import { UnsupportedCipherError } from '../../src/client/luks-keyslot.ts';

const CRYPTSETUP = '/usr/sbin/cryptsetup';
const PASS = Buffer.from('tenant passphrase \u00e9\n');
const FAST_PBKDF2 = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
const FAST_ARGON2 = ['--pbkdf', 'argon2id', '--pbkdf-memory', '32768', '--pbkdf-force-iterations', '4'];
const MiB = 1024 * 1024;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool with a hard timeout; never throws on a non-zero exit (the caller asserts on it). */
function run(cmd: string, args: string[], timeout = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, killSignal: 'SIGKILL', maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

async function workDir(t: { after(fn: () => Promise<void>): void }): Promise<{ dir: string; keyFile: string; path(name: string): string }> {
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-image-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'passphrase');
  await writeFile(keyFile, PASS);
  return { dir, keyFile, path: (name) => join(dir, name) };
}

/** The volume key as cryptsetup itself recovers it. */
async function dumpVolumeKey(img: string, keyFile: string): Promise<Buffer> {
  const out = await ok(CRYPTSETUP, ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file', keyFile, img]);
  const lines = out.split('\n');
  const start = lines.findIndex((l) => l.startsWith('MK dump:'));
  assert.ok(start >= 0, out);
  const hex: string[] = [lines[start]!.slice('MK dump:'.length)];
  for (let i = start + 1; i < lines.length && /^\s+([0-9a-f]{2}\s*)+$/.test(lines[i]!); i++) hex.push(lines[i]!);
  return Buffer.from(hex.join('').replace(/\s+/g, ''), 'hex');
}

async function decryptPayload(img: string, key: Buffer, sectorSize: number, offset: number, size: number): Promise<Buffer> {
  const bytes = await readFile(img);
  return new XtsCipher(key).decryptSectors(0, sectorSize, bytes.subarray(offset, offset + size));
}

test('a sealed image: cryptsetup accepts it, recovers our key, and decrypts our data', { timeout: 180_000 }, async (t) => {
  const w = await workDir(t);
  const raw = randomBytes(5 * MiB + 1000); // not a whole number of sectors: the tail is zero-padded
  await writeFile(w.path('raw'), raw);
  const progress: number[] = [];
  const chunks: Buffer[] = [];
  const sealed = await sealImage({
    input: w.path('raw'),
    output: w.path('img'),
    passphrase: PASS,
    pbkdf: 'pbkdf2',
    kdfCost: { iterations: 1000 },
    onProgress: (done, total) => {
      assert.equal(total, raw.length);
      progress.push(done);
    },
    onCiphertext: (first, ct) => {
      assert.equal(first * 4096, chunks.reduce((n, c) => n + c.length, 0));
      chunks.push(Buffer.from(ct));
    },
  });
  const sectors = Math.ceil(raw.length / 4096);
  assert.equal(sealed.sectors, sectors);
  assert.equal(sealed.sectorSize, 4096);
  assert.equal(sealed.payloadOffset, 16 * MiB);
  assert.equal(sealed.volumeKey.length, 64);
  assert.equal((await stat(w.path('img'))).size, 16 * MiB + sectors * 4096);
  assert.equal((await stat(w.path('img'))).mode & 0o777, 0o600);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
  assert.equal(progress.at(-1), raw.length);

  const dump = await ok(CRYPTSETUP, ['luksDump', w.path('img')]);
  assert.match(dump, /Version:\s+2/);
  assert.match(dump, new RegExp(`UUID:\\s+${sealed.uuid}`));
  assert.match(dump, /cipher: aes-xts-plain64/);
  assert.match(dump, /sector: 4096 \[bytes\]/);
  assert.match(dump, /offset: 16777216 \[bytes\]/);
  assert.match(dump, /Key:\s+512 bits/);
  assert.match(dump, /PBKDF:\s+pbkdf2/);
  assert.match(dump, /Iterations:\s+1000\n/);

  assert.equal((await run(CRYPTSETUP, ['open', '--test-passphrase', '--key-file', w.keyFile, w.path('img')])).code, 0);
  await writeFile(w.path('wrong'), 'tenant passphrase');
  assert.notEqual((await run(CRYPTSETUP, ['open', '--test-passphrase', '--key-file', w.path('wrong'), w.path('img')])).code, 0);
  assert.deepEqual(await dumpVolumeKey(w.path('img'), w.keyFile), sealed.volumeKey);

  const opened = await openImage({ path: w.path('img'), passphrase: PASS });
  assert.deepEqual(opened.volumeKey, sealed.volumeKey);
  assert.deepEqual(
    { format: opened.format, sectorSize: opened.sectorSize, payloadOffset: opened.payloadOffset, size: opened.size, uuid: opened.uuid },
    { format: 'luks2', sectorSize: 4096, payloadOffset: 16 * MiB, size: sectors * 4096, uuid: sealed.uuid },
  );
  const padded = Buffer.concat([raw, Buffer.alloc(sectors * 4096 - raw.length)]);
  assert.deepEqual(await decryptPayload(w.path('img'), sealed.volumeKey, 4096, opened.payloadOffset, opened.size), padded);
  assert.deepEqual(Buffer.concat(chunks), (await readFile(w.path('img'))).subarray(16 * MiB));

  // The data oracle for our encryption: cryptsetup's offline re-encryption (no device-mapper needed) must
  // decrypt our sectors to re-encrypt them under a new key; had we used another tweak, the result is garbage.
  await ok(CRYPTSETUP, ['reencrypt', '--force-offline-reencrypt', '--batch-mode', '--key-file', w.keyFile, ...FAST_PBKDF2, w.path('img')]);
  const after = await openImage({ path: w.path('img'), passphrase: PASS });
  assert.notDeepEqual(after.volumeKey, sealed.volumeKey);
  assert.deepEqual(after.volumeKey, await dumpVolumeKey(w.path('img'), w.keyFile));
  assert.deepEqual(await decryptPayload(w.path('img'), after.volumeKey, 4096, after.payloadOffset, after.size), padded);
});

test('an argon2id sealed image opens with cryptsetup', { timeout: 120_000 }, async (t) => {
  const w = await workDir(t);
  await writeFile(w.path('raw'), randomBytes(64 * 1024));
  const sealed = await sealImage({
    input: w.path('raw'),
    output: w.path('img'),
    passphrase: PASS,
    pbkdf: 'argon2id',
    kdfCost: { iterations: 4, memoryKiB: 32768, parallelism: 4 },
  });
  const dump = await ok(CRYPTSETUP, ['luksDump', w.path('img')]);
  assert.match(dump, /PBKDF:\s+argon2id/);
  assert.match(dump, /Time cost:\s+4/);
  assert.match(dump, /Memory:\s+32768/);
  assert.match(dump, /Threads:\s+4/);
  assert.equal((await run(CRYPTSETUP, ['open', '--test-passphrase', '--key-file', w.keyFile, w.path('img')])).code, 0);
  assert.deepEqual(await dumpVolumeKey(w.path('img'), w.keyFile), sealed.volumeKey);
  assert.deepEqual((await openImage({ path: w.path('img'), passphrase: PASS })).volumeKey, sealed.volumeKey);
});

test('data cryptsetup encrypts with 4096-byte sectors decrypts to the plaintext', { timeout: 120_000 }, async (t) => {
  const w = await workDir(t);
  const plain = randomBytes(36 * MiB);
  await writeFile(w.path('disk'), plain);
  // In-place encryption of a plain file: the data moves behind a 16 MiB header, the device shrinks by 32 MiB.
  await ok(CRYPTSETUP, [
    'reencrypt', '--encrypt', '--type', 'luks2', '--sector-size', '4096', '--reduce-device-size', '32M',
    '--batch-mode', '--key-file', w.keyFile, ...FAST_PBKDF2, w.path('disk'),
  ]);
  const opened = await openImage({ path: w.path('disk'), passphrase: PASS });
  assert.equal(opened.sectorSize, 4096);
  assert.deepEqual(opened.volumeKey, await dumpVolumeKey(w.path('disk'), w.keyFile));
  const data = 4 * MiB;
  const got = await decryptPayload(w.path('disk'), opened.volumeKey, 4096, opened.payloadOffset, data);
  assert.deepEqual(got, plain.subarray(0, data));
});

test('images made by cryptsetup luksFormat open with cryptsetup\'s volume key', { timeout: 180_000 }, async (t) => {
  const w = await workDir(t);
  const cases: { name: string; args: string[]; format: 'luks1' | 'luks2'; sectorSize: number; keyBits: number }[] = [
    { name: 'luks2-pbkdf2', args: ['--type', 'luks2', '--sector-size', '4096', ...FAST_PBKDF2], format: 'luks2', sectorSize: 4096, keyBits: 512 },
    { name: 'luks2-argon2id', args: ['--type', 'luks2', '--sector-size', '4096', ...FAST_ARGON2], format: 'luks2', sectorSize: 4096, keyBits: 512 },
    { name: 'luks2-argon2i-512', args: ['--type', 'luks2', '--sector-size', '512', '--pbkdf', 'argon2i', '--pbkdf-memory', '32768', '--pbkdf-force-iterations', '4'], format: 'luks2', sectorSize: 512, keyBits: 512 },
    { name: 'luks2-256bit', args: ['--type', 'luks2', '--key-size', '256', '--sector-size', '4096', ...FAST_PBKDF2], format: 'luks2', sectorSize: 4096, keyBits: 256 },
    { name: 'luks1-512bit', args: ['--type', 'luks1', '--key-size', '512', '--pbkdf-force-iterations', '1000'], format: 'luks1', sectorSize: 512, keyBits: 512 },
    { name: 'luks1-256bit-sha1', args: ['--type', 'luks1', '--key-size', '256', '--hash', 'sha1', '--pbkdf-force-iterations', '1000'], format: 'luks1', sectorSize: 512, keyBits: 256 },
  ];
  for (const c of cases) {
    const img = w.path(c.name);
    await writeFile(img, '');
    await truncate(img, 20 * MiB);
    await ok(CRYPTSETUP, ['luksFormat', '--batch-mode', '--key-file', w.keyFile, ...c.args, img]);
    const opened = await openImage({ path: img, passphrase: PASS });
    assert.deepEqual(opened.volumeKey, await dumpVolumeKey(img, w.keyFile), c.name);
    assert.equal(opened.format, c.format, c.name);
    assert.equal(opened.sectorSize, c.sectorSize, c.name);
    assert.equal(opened.keyBits, c.keyBits, c.name);
    assert.equal(opened.payloadOffset + opened.size, 20 * MiB, c.name);
    assert.equal(opened.keyslot, 0, c.name);
  }
  await assert.rejects(
    openImage({ path: w.path('luks2-argon2id'), passphrase: PASS, maxKdfMemoryKiB: 16384 }),
    /wants 32768 KiB of Argon2 memory, above the limit of 16384/,
  );

  // Any keyslot that opens will do; a passphrase no keyslot takes is a WrongPassphraseError.
  for (const name of ['luks2-pbkdf2', 'luks1-512bit']) {
    const second = w.path('second');
    await writeFile(second, 'second passphrase');
    await ok(CRYPTSETUP, ['luksAddKey', '--batch-mode', '--key-file', w.keyFile, '--pbkdf-force-iterations', '1000', ...(name.startsWith('luks2') ? ['--pbkdf', 'pbkdf2'] : []), w.path(name), second]);
    const bySecond = await openImage({ path: w.path(name), passphrase: Buffer.from('second passphrase') });
    assert.equal(bySecond.keyslot, 1, name);
    assert.deepEqual(bySecond.volumeKey, await dumpVolumeKey(w.path(name), w.keyFile), name);
    await assert.rejects(openImage({ path: w.path(name), passphrase: Buffer.from('nope') }), WrongPassphraseError);
  }
});

test('QEMU\'s LUKS1 driver and our XTS agree in both directions', { timeout: 180_000 }, async (t) => {
  const w = await workDir(t);
  const secret = ['--object', `secret,id=sec0,file=${w.keyFile}`];
  const plain = randomBytes(3 * MiB);
  await writeFile(w.path('plain'), plain);
  await ok('qemu-img', ['convert', ...secret, '-O', 'luks', '-o', 'key-secret=sec0,iter-time=10', w.path('plain'), w.path('img')]);

  const opened = await openImage({ path: w.path('img'), passphrase: PASS });
  assert.equal(opened.format, 'luks1');
  assert.equal(opened.sectorSize, 512);
  assert.equal(opened.keyBits, 512);
  assert.equal(opened.size, plain.length);
  assert.deepEqual(await decryptPayload(w.path('img'), opened.volumeKey, 512, opened.payloadOffset, opened.size), plain);

  // Now we encrypt new data into the image and QEMU must read it back.
  const fresh = randomBytes(plain.length);
  const image = await readFile(w.path('img'));
  new XtsCipher(opened.volumeKey).encryptSectors(0, 512, fresh).copy(image, opened.payloadOffset);
  await writeFile(w.path('img'), image);
  await ok('qemu-img', ['convert', ...secret, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${w.path('img')}`, '-O', 'raw', w.path('out')]);
  assert.deepEqual(await readFile(w.path('out')), fresh);
});

test('QEMU 7.2 cannot open LUKS2, so it is no oracle for our images', { timeout: 60_000 }, async (t) => {
  const w = await workDir(t);
  await writeFile(w.path('raw'), randomBytes(4096));
  await sealImage({ input: w.path('raw'), output: w.path('img'), passphrase: PASS, pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
  const r = await run('qemu-img', ['info', '--object', `secret,id=sec0,file=${w.keyFile}`, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${w.path('img')}`]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /LUKS version 2 is not supported/);
});

test('unsupported ciphers are refused before any key is derived', { timeout: 120_000 }, async (t) => {
  const w = await workDir(t);
  for (const type of ['luks1', 'luks2']) {
    const img = w.path(type);
    await writeFile(img, '');
    await truncate(img, 20 * MiB);
    await ok(CRYPTSETUP, ['luksFormat', '--batch-mode', '--type', type, '--cipher', 'aes-cbc-essiv:sha256', '--key-size', '256', '--key-file', w.keyFile, ...FAST_PBKDF2, img]);
    await assert.rejects(
      openImage({ path: img, passphrase: PASS }),
      (e: unknown) => e instanceof UnsupportedCipherError && /aes-cbc-essiv:sha256/.test(e.message),
    );
  }
});

test('damaged and hostile images fail cleanly; a damaged primary header falls back to the secondary', { timeout: 120_000 }, async (t) => {
  const w = await workDir(t);
  await writeFile(w.path('raw'), randomBytes(256 * 1024));
  const sealed = await sealImage({ input: w.path('raw'), output: w.path('img'), passphrase: PASS, pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
  const good = await readFile(w.path('img'));
  const variant = async (name: string, edit: (b: Buffer) => Buffer | void): Promise<string> => {
    const b = Buffer.from(good);
    const out = edit(b) ?? b;
    await writeFile(w.path(name), out);
    return w.path(name);
  };

  const primaryBroken = await variant('primary', (b) => void (b[4096 + 20] = b[4096 + 20]! ^ 1));
  assert.deepEqual((await openImage({ path: primaryBroken, passphrase: PASS })).volumeKey, sealed.volumeKey);
  assert.equal((await run(CRYPTSETUP, ['open', '--test-passphrase', '--key-file', w.keyFile, primaryBroken])).code, 0);

  const bothBroken = await variant('both', (b) => {
    b[4096 + 20] = b[4096 + 20]! ^ 1;
    b[16384 + 4096 + 20] = b[16384 + 4096 + 20]! ^ 1;
  });
  await assert.rejects(openImage({ path: bothBroken, passphrase: PASS }), (e: unknown) => e instanceof LuksFormatError && /no valid LUKS2 header/.test(e.message));

  const keyslotBroken = await variant('keyslot', (b) => void (b[32768 + 1000] = b[32768 + 1000]! ^ 1));
  await assert.rejects(openImage({ path: keyslotBroken, passphrase: PASS }), WrongPassphraseError);

  const truncated = await variant('truncated', (b) => b.subarray(0, 10000));
  await assert.rejects(openImage({ path: truncated, passphrase: PASS }), /no valid LUKS2 header.*runs past the end/);
  const headerOnly = await variant('header-only', (b) => b.subarray(0, 1024 * 1024));
  await assert.rejects(openImage({ path: headerOnly, passphrase: PASS }), /shorter than its data offset/);

  const notLuks = await variant('random', () => randomBytes(64 * 1024));
  await assert.rejects(openImage({ path: notLuks, passphrase: PASS }), /not a LUKS image/);
  const tiny = await variant('tiny', () => Buffer.from('LUKS'));
  await assert.rejects(openImage({ path: tiny, passphrase: PASS }), /not a LUKS image/);
  await assert.rejects(openImage({ path: w.path('img'), passphrase: Buffer.alloc(0) }), /empty passphrase/);
  await assert.rejects(openImage({ path: w.dir, passphrase: PASS }), /not a regular file/);
});

test('sealing refuses to clobber, refuses bad input, and leaves nothing behind on failure', { timeout: 60_000 }, async (t) => {
  const w = await workDir(t);
  await writeFile(w.path('raw'), randomBytes(9 * MiB));
  await writeFile(w.path('empty'), '');
  await writeFile(w.path('existing'), 'keep me');
  const base = { passphrase: PASS, pbkdf: 'pbkdf2' as const, kdfCost: { iterations: 1000 } };

  await assert.rejects(sealImage({ ...base, input: w.path('raw'), output: w.path('existing') }), /already exists/);
  assert.equal(await readFile(w.path('existing'), 'utf8'), 'keep me');
  await assert.rejects(sealImage({ ...base, input: w.path('empty'), output: w.path('x') }), /is empty/);
  await assert.rejects(sealImage({ ...base, input: w.path('raw'), output: w.path('x'), kdfCost: { iterations: 999 } }), /minimum/);
  await assert.rejects(sealImage({ ...base, input: w.path('raw'), output: w.path('x'), passphrase: Buffer.alloc(0) }), /passphrase/);
  await assert.rejects(sealImage({ ...base, input: w.path('missing'), output: w.path('x') }), /ENOENT/);

  let calls = 0;
  await assert.rejects(
    sealImage({
      ...base,
      input: w.path('raw'),
      output: w.path('x'),
      onCiphertext: () => {
        if (++calls === 2) throw new Error('sidecar writer failed');
      },
    }),
    /sidecar writer failed/,
  );
  assert.deepEqual((await readdir(w.dir)).sort(), ['empty', 'existing', 'passphrase', 'raw']);

  const replaced = await sealImage({ ...base, input: w.path('raw'), output: w.path('existing'), overwrite: true });
  assert.deepEqual((await openImage({ path: w.path('existing'), passphrase: PASS })).volumeKey, replaced.volumeKey);
});
