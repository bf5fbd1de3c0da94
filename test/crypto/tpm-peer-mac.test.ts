// The peer proof (tpm-peer) against an HMAC computed here over the documented bytes, and its separation from
// the share proof: neither can stand in for the other.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { grantProof, grantProofValid, peerProof, peerProofValid } from '../../src/crypto/tpm-grant-mac.ts';

const key = Buffer.from('11'.repeat(32), 'hex');
const owner = 'aa'.repeat(16);
const grantee = 'bb'.repeat(16);

function expected(info: string, message: Buffer): Buffer {
  const k = Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), Buffer.from(info), 32));
  return createHmac('sha256', k).update(message).digest();
}

test('peer proof = HMAC(HKDF(K_command, "vmseal/v1/tpm-peer-proof"), "VMSEAL-PEER1" ‖ owner ‖ grantee ‖ u64 counter)', () => {
  const msg = Buffer.concat([Buffer.from('VMSEAL-PEER1'), Buffer.from(owner, 'hex'), Buffer.from(grantee, 'hex'), Buffer.from('0000000000000105', 'hex')]);
  assert.deepEqual(peerProof(key, { ownerVmId: owner, granteeVmId: grantee, counter: 261 }), expected('vmseal/v1/tpm-peer-proof', msg));
  // The share proof's own vector, computed the same way, so the two layouts are both pinned.
  const share = Buffer.concat([Buffer.from('VMSEAL-GRANT1'), Buffer.from(owner, 'hex'), Buffer.from(grantee, 'hex'), Buffer.from('01800010', 'hex'), Buffer.from('0000000000000105', 'hex')]);
  assert.deepEqual(grantProof(key, { ownerVmId: owner, granteeVmId: grantee, nvIndex: 0x01800010, counter: 261 }), expected('vmseal/v1/tpm-grant-proof', share));
});

test('a peer proof is no share proof and the reverse; each names its owner, grantee and counter', () => {
  const s = { ownerVmId: owner, granteeVmId: grantee, counter: 9 };
  const peer = peerProof(key, s);
  assert.ok(peerProofValid(key, s, peer));
  for (const nvIndex of [0, 0x01800000, 0x01800010]) {
    assert.equal(grantProofValid(key, { ...s, nvIndex }, peer), false);
    assert.equal(peerProofValid(key, s, grantProof(key, { ...s, nvIndex })), false);
  }
  assert.equal(peerProofValid(key, { ...s, counter: 10 }, peer), false);
  assert.equal(peerProofValid(key, { ...s, ownerVmId: grantee, granteeVmId: owner }, peer), false, 'directional');
  assert.equal(peerProofValid(randomBytes(32), s, peer), false);
  assert.equal(peerProofValid(key, s, peer.subarray(0, 16)), false);
  assert.throws(() => peerProof(key.subarray(0, 16), s), RangeError);
  assert.throws(() => peerProof(key, { ...s, counter: 0 }), RangeError);
  assert.throws(() => peerProof(key, { ...s, ownerVmId: 'AA'.repeat(16) }), RangeError);
});
