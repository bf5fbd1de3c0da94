/**
 * IDS key registration (ARCHITECTURE.md protocol 7, seed 000 section 3.2; docs/ids.md). The IDS
 * enclave writes a header naming the VM, host, its own measurement and a fresh session id, seals its
 * session key to the host and its heartbeat key to the authority (both with the exact header bytes as
 * HPKE aad), and has the authority sign the three blobs. The header travels as the exact bytes that
 * were sealed and signed (base64 in JSON), so nobody ever re-serialises it.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { decodeJson, hexBytes, hostIdField, sha256Hex, vmIdHex, ProtocolError } from './fields.ts';

export const IDS_SESSION_KEY_INFO = 'vmseal/v1/ids-session';
export const IDS_HEARTBEAT_KEY_INFO = 'vmseal/v1/ids-heartbeat';
export const IDS_KEY_BYTES = 32;
/** enc (32) ‖ ciphertext of a 32-byte key (32) ‖ tag (16). */
export const IDS_SEALED_KEY_BYTES = 80;
export const IDS_HEADER_MAX_BYTES = 1024;
/** Domain separation of the authority's registration signature. */
export const IDS_REGISTRATION_SIGNATURE_MAGIC = 'VMSEAL-IDS-REG1';
/** Domain separation of the CA's signature over the authority's IDS HPKE key. */
export const IDS_AUTHORITY_KEY_MAGIC = 'VMSEAL-IDS-AUTHKEY1';

export const sessionIdHex = hexBytes(16);

export const idsRegistrationHeaderSchema = z.strictObject({
  v: z.literal(1),
  vmId: vmIdHex,
  hostId: hostIdField,
  /** SHA-256 of the enclave's code bundle and configuration (like MRENCLAVE). */
  measurement: sha256Hex,
  /** 16 random bytes drawn by the enclave; registers once, at the authority and at each monitor. */
  sessionId: sessionIdHex,
  issuedAt: z.iso.datetime(),
});
export type IdsRegistrationHeader = z.output<typeof idsRegistrationHeaderSchema>;

export function encodeIdsRegistrationHeader(header: IdsRegistrationHeader): Buffer {
  return Buffer.from(JSON.stringify(idsRegistrationHeaderSchema.parse(header)), 'utf8');
}

export function decodeIdsRegistrationHeader(bytes: Uint8Array): IdsRegistrationHeader {
  return decodeJson('IDS registration header', idsRegistrationHeaderSchema, bytes, IDS_HEADER_MAX_BYTES);
}

function sha256(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest();
}

/** What the authority signs: "VMSEAL-IDS-REG1" ‖ SHA256(header) ‖ SHA256(sealedSessionKey) ‖ SHA256(sealedHeartbeatKey). */
export function idsRegistrationSignedMessage(headerBytes: Uint8Array, sealedSessionKey: Uint8Array, sealedHeartbeatKey: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(IDS_REGISTRATION_SIGNATURE_MAGIC, 'ascii'), sha256(headerBytes), sha256(sealedSessionKey), sha256(sealedHeartbeatKey)]);
}

/** What the CA signs to publish the authority's IDS HPKE key: "VMSEAL-IDS-AUTHKEY1" ‖ publicKey. */
export function idsAuthorityKeySignedMessage(publicKey: Uint8Array): Buffer {
  if (publicKey.length !== 32) throw new ProtocolError('IDS authority key', 'must be 32 bytes');
  return Buffer.concat([Buffer.from(IDS_AUTHORITY_KEY_MAGIC, 'ascii'), publicKey]);
}

/** Base64 of at most `maxBytes` (exact length checked after decoding). */
const base64Text = (maxBytes: number) =>
  z
    .string()
    .min(1)
    .max(Math.ceil(maxBytes / 3) * 4)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64');

/** A decoded blob must be exactly what its base64 spelled (canonical) and of the given size range. */
function blob(text: string, what: string, min: number, max: number): Buffer {
  const b = Buffer.from(text, 'base64');
  if (b.toString('base64') !== text) throw new ProtocolError(what, 'is not canonical base64');
  if (b.length < min || b.length > max) throw new ProtocolError(what, `must be ${min === max ? min : `${min}..${max}`} bytes, got ${b.length}`);
  return b;
}

/** Authority POST /v1/ids/sign body. */
export const idsSignRequestSchema = z.strictObject({
  header: base64Text(IDS_HEADER_MAX_BYTES),
  sealedSessionKey: base64Text(IDS_SEALED_KEY_BYTES),
  sealedHeartbeatKey: base64Text(IDS_SEALED_KEY_BYTES),
});
export type IdsSignRequestWire = z.infer<typeof idsSignRequestSchema>;

export const idsSignResponseSchema = z.strictObject({ signature: base64Text(64) });

/** Monitor POST /v1/vms/:vmId/ids/sessions body: the sign request plus the authority's signature. */
export const idsRegisterRequestSchema = idsSignRequestSchema.extend({ signature: base64Text(64) });
export type IdsRegisterRequestWire = z.infer<typeof idsRegisterRequestSchema>;

export const idsRegisterResponseSchema = z.strictObject({ sessionId: sessionIdHex });

/** Authority GET /v1/ids/authority-key answer. */
export const idsAuthorityKeyResponseSchema = z.strictObject({ publicKey: base64Text(32), signature: base64Text(64) });

export interface IdsRegistrationBlobs {
  headerBytes: Buffer;
  header: IdsRegistrationHeader;
  sealedSessionKey: Buffer;
  sealedHeartbeatKey: Buffer;
}

/** Decodes the base64 fields of a sign/register request and parses the header; ProtocolError on anything malformed. */
export function decodeIdsRegistrationBlobs(wire: IdsSignRequestWire): IdsRegistrationBlobs {
  const headerBytes = blob(wire.header, 'IDS registration header', 2, IDS_HEADER_MAX_BYTES);
  return {
    headerBytes,
    header: decodeIdsRegistrationHeader(headerBytes),
    sealedSessionKey: blob(wire.sealedSessionKey, 'sealed session key', IDS_SEALED_KEY_BYTES, IDS_SEALED_KEY_BYTES),
    sealedHeartbeatKey: blob(wire.sealedHeartbeatKey, 'sealed heartbeat key', IDS_SEALED_KEY_BYTES, IDS_SEALED_KEY_BYTES),
  };
}

/** The 64-byte signature of a register request or sign response. */
export function decodeIdsSignature(text: string): Buffer {
  return blob(text, 'IDS registration signature', 64, 64);
}
