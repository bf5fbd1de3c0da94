/**
 * The VM identity statement (seed 001's secure VM identifier): after a launch the monitor returns
 * AEAD(K_identity, statement). Only a monitor that opened the tenant's bundle holds K_identity, the
 * magic proves the key, and the launch nonce proves the statement is fresh (not replayed from an
 * earlier launch).
 *
 * Layout: "VMSEAL-ID1" (10) ‖ vmId (16) ‖ launchNonce (16) ‖ hostId length (1) ‖ hostId (UTF-8).
 */
import { ProtocolError } from './fields.ts';

export const IDENTITY_MAGIC = Buffer.from('VMSEAL-ID1', 'ascii');
/** AEAD associated data of the sealed statement. */
export const IDENTITY_AAD = Buffer.from('vmseal/v1/identity', 'ascii');
export const VM_ID_BYTES = 16;
export const LAUNCH_NONCE_BYTES = 16;

export interface IdentityStatement {
  vmId: Buffer;
  launchNonce: Buffer;
  hostId: string;
}

const FIXED = IDENTITY_MAGIC.length + VM_ID_BYTES + LAUNCH_NONCE_BYTES + 1;

export function encodeIdentityStatement(s: IdentityStatement): Buffer {
  const host = Buffer.from(s.hostId, 'utf8');
  if (s.vmId.length !== VM_ID_BYTES) throw new ProtocolError('identity statement', `vmId must be ${VM_ID_BYTES} bytes`);
  if (s.launchNonce.length !== LAUNCH_NONCE_BYTES) throw new ProtocolError('identity statement', `launch nonce must be ${LAUNCH_NONCE_BYTES} bytes`);
  if (host.length === 0 || host.length > 255) throw new ProtocolError('identity statement', 'host id must be 1-255 bytes');
  return Buffer.concat([IDENTITY_MAGIC, s.vmId, s.launchNonce, Buffer.from([host.length]), host]);
}

export function decodeIdentityStatement(b: Uint8Array): IdentityStatement {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < FIXED || !buf.subarray(0, IDENTITY_MAGIC.length).equals(IDENTITY_MAGIC)) {
    throw new ProtocolError('identity statement', 'bad magic: not a vmseal identity statement');
  }
  let at = IDENTITY_MAGIC.length;
  const vmId = Buffer.from(buf.subarray(at, (at += VM_ID_BYTES)));
  const launchNonce = Buffer.from(buf.subarray(at, (at += LAUNCH_NONCE_BYTES)));
  const hostLen = buf[at++] ?? 0;
  if (hostLen === 0 || buf.length !== at + hostLen) throw new ProtocolError('identity statement', 'bad host id length');
  return { vmId, launchNonce, hostId: buf.subarray(at).toString('utf8') };
}
