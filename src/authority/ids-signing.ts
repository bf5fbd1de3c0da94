/**
 * The authority's part of IDS key registration (docs/ids.md): it signs a registration only for an
 * approved measurement (scoped to the VM and host the header names), an enrolled host, a fresh header
 * and a session id never signed before; it opens the heartbeat key and hands it to the heartbeat
 * service before answering. The session id is recorded before the signature leaves, so a crash can
 * never let the same registration be signed twice.
 */
import { createPrivateKey, sign, type KeyObject } from 'node:crypto';
import { join } from 'node:path';
import type { Authority } from './authority-dir.ts';
import type { HeartbeatRegistry } from './heartbeat-registry.ts';
import { readHostCertificate } from './host-registry.ts';
import { findIdsApproval } from './ids-approvals.ts';
import { HpkeError, openCompact } from '../crypto/hpke.ts';
import {
  IDS_HEARTBEAT_KEY_INFO,
  idsAuthorityKeySignedMessage,
  idsRegistrationSignedMessage,
  type IdsRegistrationBlobs,
} from '../formats/protocol/ids-registration.ts';
import { createPrivateFile } from '../util/durable-file.ts';

/** How far a header's issuedAt may lie in the past or the future. */
export const IDS_HEADER_MAX_AGE_MS = 10 * 60_000;
export const IDS_HEADER_MAX_SKEW_MS = 5 * 60_000;

export type IdsSignRefusalCode = 'UNAPPROVED_IDS' | 'HOST_UNKNOWN' | 'STALE' | 'BAD_KEY' | 'REPLAY';

export class IdsSignRefusal extends Error {
  override name = 'IdsSignRefusal';
  constructor(
    readonly code: IdsSignRefusalCode,
    message: string,
  ) {
    super(message);
  }
}

function caKey(authority: Authority): KeyObject {
  return createPrivateKey(authority.ca.privateKeyPem);
}

/** The authority's IDS HPKE public key with the CA's Ed25519 signature over it. */
export function signedAuthorityIdsKey(authority: Authority): { publicKey: Buffer; signature: Buffer } {
  const publicKey = authority.idsKey.publicKey;
  return { publicKey, signature: sign(null, idsAuthorityKeySignedMessage(publicKey), caKey(authority)) };
}

export async function signIdsRegistration(authority: Authority, heartbeats: HeartbeatRegistry, reg: IdsRegistrationBlobs, now: Date): Promise<Buffer> {
  const { header } = reg;
  const approval = await findIdsApproval(authority.paths, header.measurement, header.vmId, header.hostId);
  if (!approval) throw new IdsSignRefusal('UNAPPROVED_IDS', `measurement ${header.measurement} is not approved for VM ${header.vmId} on host ${header.hostId}`);
  if ((await readHostCertificate(authority.paths, header.hostId)) === undefined) throw new IdsSignRefusal('HOST_UNKNOWN', `host ${header.hostId} is not enrolled`);
  const age = now.getTime() - Date.parse(header.issuedAt);
  if (age > IDS_HEADER_MAX_AGE_MS || age < -IDS_HEADER_MAX_SKEW_MS) throw new IdsSignRefusal('STALE', `registration issued at ${header.issuedAt} is outside the accepted window`);

  let heartbeatKey: Buffer;
  try {
    heartbeatKey = await openCompact(authority.idsKey.privateKey, reg.sealedHeartbeatKey, { info: Buffer.from(IDS_HEARTBEAT_KEY_INFO), aad: reg.headerBytes });
  } catch (err) {
    if (err instanceof HpkeError) throw new IdsSignRefusal('BAD_KEY', 'the heartbeat key does not open with the authority key under this header');
    throw err;
  }
  const record = { vmId: header.vmId, hostId: header.hostId, measurement: header.measurement, approval: approval.id, signedAt: now.toISOString() };
  try {
    // The session id is a 32-hex-digit string (schema-checked), safe as a file name.
    await createPrivateFile(join(authority.paths.idsSessions, header.sessionId), `${JSON.stringify(record)}\n`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new IdsSignRefusal('REPLAY', `session ${header.sessionId} was already registered`);
    throw err;
  }
  await heartbeats.register(header.sessionId, { vmId: header.vmId, hostId: header.hostId, measurement: header.measurement }, heartbeatKey);
  return sign(null, idsRegistrationSignedMessage(reg.headerBytes, reg.sealedSessionKey, reg.sealedHeartbeatKey), caKey(authority));
}
