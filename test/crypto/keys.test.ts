import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { VM_KEY_LABELS, VM_KEY_SALT, deriveVmKey, hkdfSha256, vmKeyInfo, type VmKeyLabel } from '../../src/crypto/keys.ts';

const hex = (s: string) => Buffer.from(s, 'hex');
const range = (from: number, to: number) => Buffer.from(Array.from({ length: to - from + 1 }, (_, i) => from + i));

// RFC 5869 appendix A, test cases 1-3 (the SHA-256 ones).
const RFC5869 = [
  {
    name: 'A.1 basic',
    ikm: Buffer.alloc(22, 0x0b),
    salt: range(0x00, 0x0c),
    info: range(0xf0, 0xf9),
    okm: '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865',
  },
  {
    name: 'A.2 longer inputs and outputs',
    ikm: range(0x00, 0x4f),
    salt: range(0x60, 0xaf),
    info: range(0xb0, 0xff),
    okm: 'b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87',
  },
  {
    name: 'A.3 zero-length salt and info',
    ikm: Buffer.alloc(22, 0x0b),
    salt: Buffer.alloc(0),
    info: Buffer.alloc(0),
    okm: '8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8',
  },
];

test('hkdfSha256 reproduces the RFC 5869 SHA-256 test cases', () => {
  for (const v of RFC5869) {
    assert.equal(hkdfSha256(v.ikm, v.salt, v.info, hex(v.okm).length).toString('hex'), v.okm, v.name);
  }
});

test('hkdfSha256 refuses output lengths HKDF cannot produce', () => {
  for (const bad of [0, -1, 1.5, 255 * 32 + 1]) assert.throws(() => hkdfSha256(Buffer.alloc(32), Buffer.alloc(0), Buffer.alloc(0), bad), RangeError);
});

test('every VM key label gives a distinct 32-byte key, stable for one volume key', () => {
  const vk = randomBytes(64);
  const keys = VM_KEY_LABELS.map((label) => deriveVmKey(vk, label));
  for (const k of keys) assert.equal(k.length, 32);
  assert.equal(new Set(keys.map((k) => k.toString('hex'))).size, VM_KEY_LABELS.length);
  assert.deepEqual(deriveVmKey(vk, 'command'), keys[VM_KEY_LABELS.indexOf('command')]);
  const other = Buffer.from(vk);
  other[63]! ^= 1;
  assert.notDeepEqual(deriveVmKey(other, 'command'), deriveVmKey(vk, 'command'));
  // No derived key is a slice of the volume key itself.
  for (const k of keys) assert.equal(vk.indexOf(k.subarray(0, 8)), -1);
});

test('the labels are the documented domain-separated strings', () => {
  assert.deepEqual([...VM_KEY_LABELS], ['identity', 'command', 'console', 'integrity', 'vtpm', 'heartbeat']);
  assert.equal(vmKeyInfo('identity'), 'vmseal/v1/identity');
  assert.equal(VM_KEY_SALT, 'vmseal/v1/vm-key-schedule');
});

test('the VM key schedule matches OpenSSL\'s HKDF on the documented salt and info strings', { timeout: 30_000 }, () => {
  const vk = randomBytes(64);
  for (const label of VM_KEY_LABELS) {
    const r = spawnSync(
      'openssl',
      ['kdf', '-keylen', '32', '-kdfopt', 'digest:SHA256', '-kdfopt', `hexkey:${vk.toString('hex')}`, '-kdfopt', `salt:${VM_KEY_SALT}`, '-kdfopt', `info:vmseal/v1/${label}`, 'HKDF'],
      { encoding: 'utf8', timeout: 10_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().replace(/:/g, '').toLowerCase(), deriveVmKey(vk, label).toString('hex'), label);
  }
});

test('deriveVmKey refuses a volume key that is not 64 bytes and unknown labels', () => {
  for (const bad of [Buffer.alloc(0), Buffer.alloc(32), Buffer.alloc(63), Buffer.alloc(65)]) assert.throws(() => deriveVmKey(bad, 'identity'), RangeError);
  assert.throws(() => deriveVmKey(randomBytes(64), 'disk' as VmKeyLabel), RangeError);
});
