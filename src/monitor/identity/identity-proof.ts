import { randomBytes } from 'node:crypto';
import { seal } from '../../crypto/aead.ts';
import { encodeIdentityStatement, IDENTITY_AAD, VM_ID_BYTES } from '../../formats/protocol/identity-proof.ts';

/** Draws a fresh 128-bit VM id. */
export function newVmId(): Buffer {
  return randomBytes(VM_ID_BYTES);
}

/** AEAD(K_identity, "VMSEAL-ID1" ‖ vmId ‖ launchNonce ‖ hostId): only this monitor, holding the bundle's key, can make it. */
export function sealIdentityProof(identityKey: Buffer, vmId: Buffer, launchNonce: Buffer, hostId: string): Buffer {
  return seal(identityKey, encodeIdentityStatement({ vmId, launchNonce, hostId }), IDENTITY_AAD);
}
