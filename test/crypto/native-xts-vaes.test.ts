/**
 * The addon's AES-256-XTS has two implementations: its own VAES/AVX-512 one, used where the CPU has it, and
 * OpenSSL's (native/sector_crypto.c). A child process with VMSEAL_NO_VAES set computes the same inputs on
 * OpenSSL's path; both must equal each other and XtsCipher (node:crypto), for both directions, long sectors,
 * tweaks beyond 32 bits and the thread-pool job.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { xtsDecryptNative, xtsEncryptNative } from '../../src/crypto/native.ts';
import { XtsCipher } from '../../src/crypto/xts.ts';

const repo = resolve(import.meta.dirname, '..', '..');

/** Deterministic bytes, so that the child computes on the same inputs without being sent them. */
const CASES = `
import { createHash } from 'node:crypto';
const bytes = (label, n) => {
  const parts = [];
  for (let i = 0; parts.length * 32 < n; i++) parts.push(createHash('sha256').update(label + ':' + i).digest());
  return Buffer.concat(parts).subarray(0, n);
};
export const cases = [];
for (const [sectorSize, firstIv, step, sectors] of [[512, 0n, 1, 9], [4096, 8n * 0x1_0000_0003n, 8, 5], [65536, 128n * 0x1ff_ffffn, 128, 2], [1024, 6n, 2, 33]]) {
  cases.push({ key: bytes('key' + sectorSize, 64), firstIv, step, sectorSize, data: bytes('data' + sectorSize, sectorSize * sectors) });
}
`;

interface Case {
  key: Buffer;
  firstIv: bigint;
  step: number;
  sectorSize: number;
  data: Buffer;
}

const RUN = `
const { cases } = await import('data:text/javascript,' + encodeURIComponent(process.env.CASES));
const { xtsEncryptNative, xtsDecryptNative } = await import('./src/crypto/native.ts');
const out = cases.map((c) => {
  const enc = Buffer.alloc(c.data.length), dec = Buffer.alloc(c.data.length);
  xtsEncryptNative(c.key, c.firstIv, c.step, c.sectorSize, c.data, enc);
  xtsDecryptNative(c.key, c.firstIv, c.step, c.sectorSize, c.data, dec);
  return [enc.toString('hex'), dec.toString('hex')];
});
process.stdout.write(JSON.stringify(out));
`;

test("the addon's VAES XTS equals OpenSSL's path and XtsCipher", async () => {
  const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', RUN], {
    cwd: repo,
    env: { ...process.env, VMSEAL_NO_VAES: '1', CASES },
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  assert.equal(child.status, 0, child.stderr);
  const openssl = JSON.parse(child.stdout) as [string, string][];
  const { cases } = (await import(`data:text/javascript,${encodeURIComponent(CASES)}`)) as { cases: Case[] };
  assert.equal(openssl.length, cases.length);
  cases.forEach((c, i) => {
    const enc = Buffer.alloc(c.data.length);
    const dec = Buffer.alloc(c.data.length);
    xtsEncryptNative(c.key, c.firstIv, c.step, c.sectorSize, c.data, enc);
    xtsDecryptNative(c.key, c.firstIv, c.step, c.sectorSize, c.data, dec);
    const what = `sector size ${c.sectorSize}, first IV ${c.firstIv}`;
    assert.equal(enc.toString('hex'), openssl[i]![0], `encrypt, ${what}`);
    assert.equal(dec.toString('hex'), openssl[i]![1], `decrypt, ${what}`);
    // XtsCipher numbers sectors; its IV is sector * (sectorSize / 512), which these cases follow.
    const js = new XtsCipher(c.key);
    assert.equal(c.firstIv % BigInt(c.step), 0n);
    assert.ok(js.encryptSectors(c.firstIv / BigInt(c.step), c.sectorSize, c.data).equals(enc), `XtsCipher encrypt, ${what}`);
    assert.ok(js.decryptSectors(c.firstIv / BigInt(c.step), c.sectorSize, c.data).equals(dec), `XtsCipher decrypt, ${what}`);
    assert.notEqual(createHash('sha256').update(enc).digest('hex'), createHash('sha256').update(c.data).digest('hex'));
  });
});
