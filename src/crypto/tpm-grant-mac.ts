/**
 * Proof that the tenant sharing a vTPM NV index also holds the GRANTEE VM's keys (docs/vtpm-nv.md). The
 * monitor knows VMs, not tenants; "same tenant" is therefore "whoever sealed the share command under the
 * owner's command key can also MAC under the grantee's". Without it a tenant could push its NV contents
 * into another tenant's VM, which then reads them under an index it thinks is its own.
 *
 *   K_grant = HKDF-SHA256(IKM = K_command(grantee), salt = "", info = "vmseal/v1/tpm-grant-proof", L = 32)
 *   proof   = HMAC-SHA256(K_grant, "VMSEAL-GRANT1" ‖ ownerVmId (16) ‖ granteeVmId (16) ‖ u32 BE nvIndex ‖ u64 BE counter)
 *
 * The key is derived rather than the command key used directly, so no key serves two algorithms. The
 * proof names the owner command's counter, so it is good for exactly one share command.
 *
 * A peer proof (tpm-peer: the owner's guest may then grant to the grantee itself) is the same kind of
 * statement with its own key and label, so neither proof can stand in for the other:
 *
 *   K_peer = HKDF-SHA256(IKM = K_command(grantee), salt = "", info = "vmseal/v1/tpm-peer-proof", L = 32)
 *   proof  = HMAC-SHA256(K_peer, "VMSEAL-PEER1" ‖ ownerVmId (16) ‖ granteeVmId (16) ‖ u64 BE counter)
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { hkdfSha256 } from './keys.ts';

export const GRANT_PROOF_BYTES = 32;
const LABEL = Buffer.from('VMSEAL-GRANT1', 'ascii');
const INFO = Buffer.from('vmseal/v1/tpm-grant-proof', 'ascii');
const PEER_LABEL = Buffer.from('VMSEAL-PEER1', 'ascii');
const PEER_INFO = Buffer.from('vmseal/v1/tpm-peer-proof', 'ascii');

export interface GrantStatement {
  ownerVmId: string;
  granteeVmId: string;
  nvIndex: number;
  counter: number;
}

function vmId(hex: string, what: string): Buffer {
  if (!/^[0-9a-f]{32}$/.test(hex)) throw new RangeError(`${what} must be 32 lower-case hex digits`);
  return Buffer.from(hex, 'hex');
}

export type PeerStatement = Omit<GrantStatement, 'nvIndex'>;

function checkInputs(key: Uint8Array, counter: number): void {
  if (key.length !== 32) throw new RangeError('command key must be 32 bytes');
  if (!Number.isSafeInteger(counter) || counter < 1) throw new RangeError(`counter ${counter}`);
}

export function grantProof(granteeCommandKey: Uint8Array, s: GrantStatement): Buffer {
  checkInputs(granteeCommandKey, s.counter);
  if (!Number.isInteger(s.nvIndex) || s.nvIndex < 0 || s.nvIndex > 0xffffffff) throw new RangeError(`NV index ${s.nvIndex}`);
  const fixed = Buffer.alloc(12);
  fixed.writeUInt32BE(s.nvIndex, 0);
  fixed.writeBigUInt64BE(BigInt(s.counter), 4);
  const key = hkdfSha256(granteeCommandKey, Buffer.alloc(0), INFO, 32);
  return createHmac('sha256', key).update(LABEL).update(vmId(s.ownerVmId, 'owner VM id')).update(vmId(s.granteeVmId, 'grantee VM id')).update(fixed).digest();
}

export function grantProofValid(granteeCommandKey: Uint8Array, s: GrantStatement, proof: Uint8Array): boolean {
  const expected = grantProof(granteeCommandKey, s);
  return proof.length === expected.length && timingSafeEqual(expected, proof);
}

export function peerProof(granteeCommandKey: Uint8Array, s: PeerStatement): Buffer {
  checkInputs(granteeCommandKey, s.counter);
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(s.counter));
  const key = hkdfSha256(granteeCommandKey, Buffer.alloc(0), PEER_INFO, 32);
  return createHmac('sha256', key).update(PEER_LABEL).update(vmId(s.ownerVmId, 'owner VM id')).update(vmId(s.granteeVmId, 'grantee VM id')).update(counter).digest();
}

export function peerProofValid(granteeCommandKey: Uint8Array, s: PeerStatement, proof: Uint8Array): boolean {
  const expected = peerProof(granteeCommandKey, s);
  return proof.length === expected.length && timingSafeEqual(expected, proof);
}
