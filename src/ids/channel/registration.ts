/**
 * The enclave's half of IDS key registration (docs/ids.md): draw the session and heartbeat keys, seal
 * the first to the host (after checking its certificate against the CA the enclave was configured
 * with) and the second to the authority (after checking the CA's signature over the authority's key).
 * The exact header bytes are the HPKE aad of both, so neither sealed key can be moved to another header.
 */
import { randomBytes } from 'node:crypto';
import { verifyHostCertificate, pinnedCaPublicKey } from '../../crypto/host-certificate.ts';
import { sealToCompact } from '../../crypto/hpke.ts';
import { ed25519Verify } from '../../crypto/sign.ts';
import {
  IDS_HEARTBEAT_KEY_INFO,
  IDS_KEY_BYTES,
  IDS_SESSION_KEY_INFO,
  encodeIdsRegistrationHeader,
  idsAuthorityKeySignedMessage,
  type IdsRegistrationHeader,
  type IdsSignRequestWire,
} from '../../formats/protocol/ids-registration.ts';

export interface RegistrationInput {
  vmId: string;
  hostId: string;
  measurement: string;
  hostCertificatePem: string;
  caCertificatePem: string;
  /** The authority's X25519 key and the CA's signature over it (GET /v1/ids/authority-key). */
  authorityHpkePublicKey: Buffer;
  authorityKeySignature: Buffer;
  now?: Date;
}

export interface Registration {
  header: IdsRegistrationHeader;
  headerBytes: Buffer;
  sessionKey: Buffer;
  heartbeatKey: Buffer;
  sealedSessionKey: Buffer;
  sealedHeartbeatKey: Buffer;
}

/** The authority's key was not signed by the configured CA. */
export class AuthorityKeyError extends Error {
  override name = 'AuthorityKeyError';
}

export function verifyAuthorityIdsKey(caCertificatePem: string, publicKey: Buffer, signature: Buffer, now?: Date): Buffer {
  const caKey = pinnedCaPublicKey(caCertificatePem, now ? { now } : {});
  if (publicKey.length !== 32 || !ed25519Verify(caKey, idsAuthorityKeySignedMessage(publicKey), signature)) {
    throw new AuthorityKeyError('the authority IDS key is not signed by the configured CA');
  }
  return publicKey;
}

export async function createRegistration(input: RegistrationInput): Promise<Registration> {
  const now = input.now ?? new Date();
  const host = verifyHostCertificate(input.hostCertificatePem, input.caCertificatePem, { now, expectedHostId: input.hostId });
  const authorityKey = verifyAuthorityIdsKey(input.caCertificatePem, input.authorityHpkePublicKey, input.authorityKeySignature, now);
  const header: IdsRegistrationHeader = {
    v: 1,
    vmId: input.vmId,
    hostId: input.hostId,
    measurement: input.measurement,
    sessionId: randomBytes(16).toString('hex'),
    issuedAt: now.toISOString(),
  };
  const headerBytes = encodeIdsRegistrationHeader(header);
  const sessionKey = randomBytes(IDS_KEY_BYTES);
  const heartbeatKey = randomBytes(IDS_KEY_BYTES);
  const sealedSessionKey = await sealToCompact(host.hpkePublicKey, sessionKey, { info: Buffer.from(IDS_SESSION_KEY_INFO), aad: headerBytes });
  const sealedHeartbeatKey = await sealToCompact(authorityKey, heartbeatKey, { info: Buffer.from(IDS_HEARTBEAT_KEY_INFO), aad: headerBytes });
  return { header, headerBytes, sessionKey, heartbeatKey, sealedSessionKey, sealedHeartbeatKey };
}

/** The body of the authority's POST /v1/ids/sign for this registration. */
export function signRequestOf(r: Registration): IdsSignRequestWire {
  return {
    header: r.headerBytes.toString('base64'),
    sealedSessionKey: r.sealedSessionKey.toString('base64'),
    sealedHeartbeatKey: r.sealedHeartbeatKey.toString('base64'),
  };
}
