/**
 * IMA measurement lists against vectors written by real kernels: the demo guest's own lists (binary
 * and ASCII, captured once), and lines from Keylime's test suite and docs (ima, ima-ng, ima-sig with RSA
 * and EC signatures, ima-buf). Template hashes are recomputed and must equal what the kernel recorded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  computeBootAggregate, findBootAggregate, findTemplateHashMismatch, formatImaAscii, imaTemplateHash, ImaLogError,
  matchImaPrefix, parseImaAscii, parseImaBinary, replayImaLog,
} from '../../src/formats/ima.ts';

const dir = new URL('./ima-fixtures/', import.meta.url);
const guestAscii = readFileSync(new URL('guest-ascii_runtime_measurements', dir), 'utf8');
const guestBinary = readFileSync(new URL('guest-binary_runtime_measurements', dir));
const keylime = readFileSync(new URL('keylime-vectors.txt', dir), 'utf8');

test('the guest binary list parses and matches the ASCII list the kernel printed', () => {
  const bin = parseImaBinary(guestBinary);
  const ascii = parseImaAscii(guestAscii);
  assert.equal(bin.length, guestAscii.trim().split('\n').length);
  assert.ok(bin.length >= 5);
  assert.deepEqual(bin.map(formatImaAscii), guestAscii.trimEnd().split('\n').map((l) => l.trimEnd()).map((l, i) => (bin[i]?.template === 'ima-sig' ? `${l} ` : l)));
  for (let i = 0; i < bin.length; i++) {
    assert.deepEqual(bin[i]?.fields, ascii[i]?.fields, `entry ${i} fields`);
    assert.equal(bin[i]?.pcr, 10);
  }
  assert.ok(bin.some((e) => e.path === '/bin/busybox' && e.fileDigest.algorithm === 'sha256' && e.fileDigest.digest.length === 32));
});

test('the guest list: recomputed SHA-1 template hashes equal the recorded ones; boot_aggregate is zero without a TPM', () => {
  for (const entries of [parseImaBinary(guestBinary), parseImaAscii(guestAscii)]) {
    assert.equal(findTemplateHashMismatch(entries), -1);
    for (const e of entries) assert.deepEqual(imaTemplateHash(e, 'sha1'), e.templateHash);
    const ba = findBootAggregate(entries);
    assert.ok(ba);
    assert.equal(ba.fileDigest.algorithm, 'sha256');
    assert.ok(ba.fileDigest.digest.equals(Buffer.alloc(32)));
  }
});

test('replay of the guest list: sha1 bank from the recorded template hashes equals our replay', () => {
  const entries = parseImaBinary(guestBinary);
  let pcr = Buffer.alloc(20);
  for (const line of guestAscii.trim().split('\n')) {
    pcr = createHash('sha1').update(pcr).update(Buffer.from(line.split(' ')[1] as string, 'hex')).digest();
  }
  assert.deepEqual(replayImaLog(entries, 'sha1'), pcr);
  // sha256 bank: extended with sha256 of the same template data (the kernel's per-bank hash).
  let pcr256 = Buffer.alloc(32);
  for (const e of entries) pcr256 = createHash('sha256').update(pcr256).update(imaTemplateHash(e, 'sha256')).digest();
  assert.deepEqual(replayImaLog(entries, 'sha256'), pcr256);
  assert.notDeepEqual(replayImaLog(entries.slice(1), 'sha256'), pcr256);
  // A quote may lag the list: the prefix that matches is found, a foreign value matches none.
  const prefix = replayImaLog(entries.slice(0, 4), 'sha256');
  assert.equal(matchImaPrefix(entries, 'sha256', prefix), 4);
  assert.equal(matchImaPrefix(entries, 'sha256', Buffer.alloc(32, 1)), null);
});

test('Keylime vectors: every template kind recomputes to the hash its kernel recorded', () => {
  const entries = parseImaAscii(keylime);
  assert.deepEqual([...new Set(entries.map((e) => e.template))].sort(), ['ima', 'ima-buf', 'ima-ng', 'ima-sig']);
  for (const e of entries) assert.deepEqual(imaTemplateHash(e, 'sha1'), e.templateHash, `${e.template} ${e.path}`);
  const rsa = entries.find((e) => e.path === '/usr/bin/dd');
  assert.equal(rsa?.signature?.[0], 3, 'EVM_IMA_XATTR_DIGSIG');
  assert.equal(entries.find((e) => e.path.endsWith('usb-common.ko'))?.signature?.length, 0);
  assert.match(entries.find((e) => e.template === 'ima-buf')?.buf?.toString() ?? '', /^name=TEST;uuid=CRYPT-VERITY/);
  assert.equal(entries.find((e) => e.template === 'ima')?.path, '/usr/bin/kmod');
});

test('a tampered field is detected by the template hash', () => {
  const entries = parseImaAscii(guestAscii.replace('/etc/passwd', '/etc/passwe'));
  assert.equal(findTemplateHashMismatch(entries), 4);
});

test('violations extend with all-ones', () => {
  const line = `10 ${'0'.repeat(40)} ima-ng sha256:${'0'.repeat(64)} /var/log/x\n`;
  const [e] = parseImaAscii(line);
  assert.ok(e?.violation);
  const expect = createHash('sha256').update(Buffer.alloc(32)).update(Buffer.alloc(32, 0xff)).digest();
  assert.deepEqual(replayImaLog([e!], 'sha256'), expect);
  assert.equal(findTemplateHashMismatch([e!]), -1);
});

test('boot_aggregate over PCRs 0-7 (sha1) and 0-9 (sha256)', () => {
  const pcrs = Array.from({ length: 10 }, (_, i) => Buffer.alloc(32, i));
  const want = createHash('sha256').update(Buffer.concat(pcrs)).digest();
  assert.deepEqual(computeBootAggregate(pcrs, 'sha256'), want);
  const p1 = Array.from({ length: 8 }, (_, i) => Buffer.alloc(20, i));
  assert.deepEqual(computeBootAggregate(p1, 'sha1'), createHash('sha1').update(Buffer.concat(p1)).digest());
  assert.throws(() => computeBootAggregate(p1, 'sha256'), ImaLogError);
});

test('hostile binary lists give ImaLogError, never a hang or a huge allocation', () => {
  const full = parseImaBinary(guestBinary).length;
  let errors = 0;
  for (let cut = 1; cut < guestBinary.length; cut++) {
    try {
      assert.ok(parseImaBinary(guestBinary.subarray(0, cut)).length < full); // a cut on an entry boundary
    } catch (e) {
      assert.ok(e instanceof ImaLogError, `cut at ${cut}: ${String(e)}`);
      errors++;
    }
  }
  assert.equal(errors, guestBinary.length - full, 'every cut inside an entry is an error');
  const huge = Buffer.from(guestBinary);
  huge.writeUInt32LE(0xfffffff0, 4 + 20 + 4 + 7); // template data length of entry 0
  assert.throws(() => parseImaBinary(huge), /truncated template data/);
  const longName = Buffer.from(guestBinary);
  longName.writeUInt32LE(0x7fffffff, 24);
  assert.throws(() => parseImaBinary(longName), /template name length/);
  const fieldOverrun = Buffer.from(guestBinary);
  fieldOverrun.writeUInt32LE(0xffff, 4 + 20 + 4 + 7 + 4);
  assert.throws(() => parseImaBinary(fieldOverrun), /overruns/);
  assert.throws(() => parseImaBinary(Buffer.concat(Array(3).fill(guestBinary)), { maxEntries: 20 }), /more than 20/);
  assert.throws(() => parseImaAscii('10 zz ima-ng sha1:00 /x'), ImaLogError);
  assert.throws(() => parseImaAscii('10 7936eb315fb4e74b99e7d461bc5c96049e1ee092 not-ima sha1:bc /x'), /unsupported template/);
  assert.throws(() => parseImaAscii('this is text not an ima entry'), ImaLogError);
});

test('a d-ngv2 prefix seen earlier is still refused in a d-ng field (parsed prefixes are remembered)', () => {
  const u32 = (n: number) => Buffer.from(Uint32Array.of(n).buffer);
  const field = (b: Buffer) => Buffer.concat([u32(b.length), b]);
  const entry = (template: string, prefix: string) => {
    const data = Buffer.concat([field(Buffer.concat([Buffer.from(`${prefix}\0`), Buffer.alloc(32, 7)])), field(Buffer.from('/bin/x\0'))]);
    return Buffer.concat([u32(10), Buffer.alloc(20, 1), u32(template.length), Buffer.from(template), u32(data.length), data]);
  };
  assert.equal(parseImaBinary(entry('ima-ngv2', 'ima:sha256:'))[0]?.fileDigest.type, 'ima');
  assert.throws(() => parseImaBinary(entry('ima-ng', 'ima:sha256:')), ImaLogError);
  assert.equal(parseImaBinary(entry('ima-ng', 'sha256:'))[0]?.fileDigest.algorithm, 'sha256');
  assert.throws(() => parseImaBinary(entry('ima-ngv2', 'sha256:')), ImaLogError);
});
