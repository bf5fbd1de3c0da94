/**
 * The tenant's side of the sealed launch: seal the bundle to a host whose certificate chains to the
 * tenant's pinned CA, and check the identity proof that comes back.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { AeadError, open } from '../crypto/aead.ts';
import { sealToCompact } from '../crypto/hpke.ts';
import { deriveVmKey } from '../crypto/keys.ts';
import { decodeIdentityStatement, IDENTITY_AAD, LAUNCH_NONCE_BYTES } from '../formats/protocol/identity-proof.ts';
import { encodeLaunchBundle, LAUNCH_BUNDLE_INFO, type LaunchBundle } from '../formats/protocol/launch-bundle.ts';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export interface SealBundleInput extends Omit<LaunchBundle, 'v' | 'launchNonce'> {
  /** The host's X25519 key, taken ONLY from a certificate already verified against the pinned CA. */
  hostPublicKey: Buffer;
}

export interface SealedBundle {
  sealed: Buffer;
  launchNonce: Buffer;
}

export async function sealLaunchBundle(input: SealBundleInput): Promise<SealedBundle> {
  const { hostPublicKey, ...fields } = input;
  const launchNonce = randomBytes(LAUNCH_NONCE_BYTES);
  const plaintext = encodeLaunchBundle({ v: 1, ...fields, launchNonce });
  const sealed = await sealToCompact(hostPublicKey, plaintext, { info: Buffer.from(LAUNCH_BUNDLE_INFO), aad: Buffer.from(input.hostId) });
  return { sealed, launchNonce };
}

export class IdentityProofError extends Error {
  override name = 'IdentityProofError';
}

/**
 * Opens the monitor's identity proof with K_identity and checks that it answers THIS launch on the
 * expected host. Returns the VM id (hex) to keep in tenant state.
 */
export function verifyIdentityProof(volumeKey: Buffer, proof: Uint8Array, expected: { launchNonce: Buffer; hostId: string }): string {
  let plaintext: Buffer;
  try {
    plaintext = open(deriveVmKey(volumeKey, 'identity'), proof, IDENTITY_AAD);
  } catch (err) {
    if (err instanceof AeadError) throw new IdentityProofError(`identity proof does not open with this VM's key (${err.code}): not made by a monitor holding the bundle`);
    throw err;
  }
  const s = decodeIdentityStatement(plaintext);
  if (!s.launchNonce.equals(expected.launchNonce)) throw new IdentityProofError('identity proof answers another launch (nonce mismatch): a replayed proof');
  if (s.hostId !== expected.hostId) throw new IdentityProofError(`identity proof comes from host ${s.hostId}, not ${expected.hostId}`);
  return s.vmId.toString('hex');
}
