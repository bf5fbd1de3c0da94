/**
 * Frames of the IDS channel (ARCHITECTURE.md protocol 7; docs/ids.md): the IDS enclave and the monitor
 * share a 32-byte session key; each direction has its own AES-256-GCM key, so a request can never be
 * passed off as a response or the other way round.
 *
 *   K_req = HKDF-SHA256(sessionKey, salt = "", info = "vmseal/v1/ids-channel/req", 32)
 *   K_rsp = HKDF-SHA256(sessionKey, salt = "", info = "vmseal/v1/ids-channel/rsp", 32)
 *   nonce(seq) = 0x00000000 ‖ seq (u64 big-endian)   — one seq per key, never reused
 *   request  = seq (u64 BE) ‖ AES-256-GCM(K_req, nonce(seq), aad = "VMSEAL-IDS-REQ1" ‖ sessionId ‖ seq, ops) ‖ tag
 *   response = seq (u64 BE) ‖ AES-256-GCM(K_rsp, nonce(seq), aad = "VMSEAL-IDS-RSP1" ‖ sessionId ‖ seq ‖ SHA256(request), results) ‖ tag
 *
 * The plain mode (benchmark configuration (b) only) keeps the framing without encryption:
 * request = seq ‖ ops, response = seq ‖ results. It protects nothing.
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { hkdfSha256 } from './keys.ts';

export const IDS_CHANNEL_KEY_BYTES = 32;
export const IDS_SESSION_ID_BYTES = 16;
const SEQ_BYTES = 8;
const TAG_BYTES = 16;
const REQ_INFO = Buffer.from('vmseal/v1/ids-channel/req', 'ascii');
const RSP_INFO = Buffer.from('vmseal/v1/ids-channel/rsp', 'ascii');
const REQ_MAGIC = Buffer.from('VMSEAL-IDS-REQ1', 'ascii');
const RSP_MAGIC = Buffer.from('VMSEAL-IDS-RSP1', 'ascii');

export type IdsChannelMode = 'sealed' | 'plain';

export type IdsChannelErrorCode = 'MALFORMED' | 'AUTH_FAILED' | 'WRONG_SEQ';

/** A frame that does not open; nothing of its content is returned. */
export class IdsChannelError extends Error {
  override name = 'IdsChannelError';
  constructor(
    readonly code: IdsChannelErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface IdsChannelKeys {
  sessionId: Buffer;
  request: Buffer;
  response: Buffer;
}

export function deriveIdsChannelKeys(sessionKey: Uint8Array, sessionId: Uint8Array): IdsChannelKeys {
  if (sessionKey.length !== IDS_CHANNEL_KEY_BYTES) throw new RangeError(`IDS session key must be ${IDS_CHANNEL_KEY_BYTES} bytes`);
  if (sessionId.length !== IDS_SESSION_ID_BYTES) throw new RangeError(`IDS session id must be ${IDS_SESSION_ID_BYTES} bytes`);
  const salt = Buffer.alloc(0);
  return {
    sessionId: Buffer.from(sessionId),
    request: hkdfSha256(sessionKey, salt, REQ_INFO, IDS_CHANNEL_KEY_BYTES),
    response: hkdfSha256(sessionKey, salt, RSP_INFO, IDS_CHANNEL_KEY_BYTES),
  };
}

function seqBytes(seq: number): Buffer {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError(`IDS channel seq must be a positive safe integer, got ${seq}`);
  const b = Buffer.alloc(SEQ_BYTES);
  b.writeBigUInt64BE(BigInt(seq));
  return b;
}

function nonce(seq: Buffer): Buffer {
  return Buffer.concat([Buffer.alloc(4), seq]);
}

function readSeq(frame: Uint8Array, mode: IdsChannelMode, what: string): number {
  if (!(frame instanceof Uint8Array) || frame.length < SEQ_BYTES + (mode === 'sealed' ? TAG_BYTES : 0)) {
    throw new IdsChannelError('MALFORMED', `${what} is too short`);
  }
  const seq = Buffer.from(frame.buffer, frame.byteOffset, SEQ_BYTES).readBigUInt64BE();
  if (seq < 1n || seq > BigInt(Number.MAX_SAFE_INTEGER)) throw new IdsChannelError('MALFORMED', `${what} has seq ${seq} out of range`);
  return Number(seq);
}

function encrypt(key: Buffer, seq: Buffer, aad: Buffer, plaintext: Uint8Array): Buffer {
  const cipher = createCipheriv('aes-256-gcm', key, nonce(seq), { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  return Buffer.concat([seq, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

function decrypt(key: Buffer, frame: Uint8Array, aad: Buffer, what: string): Buffer {
  const buf = Buffer.from(frame.buffer, frame.byteOffset, frame.length);
  const seq = buf.subarray(0, SEQ_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce(seq), { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(buf.subarray(buf.length - TAG_BYTES));
  // update() output is used only once final() has checked the tag.
  const body = decipher.update(buf.subarray(SEQ_BYTES, buf.length - TAG_BYTES));
  try {
    decipher.final();
  } catch {
    body.fill(0);
    throw new IdsChannelError('AUTH_FAILED', `${what} failed authentication (tampered, forged, or for another session)`);
  }
  return body;
}

function requestAad(keys: IdsChannelKeys, seq: Buffer): Buffer {
  return Buffer.concat([REQ_MAGIC, keys.sessionId, seq]);
}

function responseAad(keys: IdsChannelKeys, seq: Buffer, requestFrame: Uint8Array): Buffer {
  return Buffer.concat([RSP_MAGIC, keys.sessionId, seq, createHash('sha256').update(requestFrame).digest()]);
}

function plainFrame(seq: Buffer, plaintext: Uint8Array): Buffer {
  return Buffer.concat([seq, plaintext]);
}

function plainBody(frame: Uint8Array): Buffer {
  return Buffer.from(frame.buffer, frame.byteOffset + SEQ_BYTES, frame.length - SEQ_BYTES);
}

export function sealIdsRequest(keys: IdsChannelKeys, mode: IdsChannelMode, seq: number, plaintext: Uint8Array): Buffer {
  const s = seqBytes(seq);
  return mode === 'plain' ? plainFrame(s, plaintext) : encrypt(keys.request, s, requestAad(keys, s), plaintext);
}

/** Opens a request frame; the caller checks `seq` against its own state. */
export function openIdsRequest(keys: IdsChannelKeys, mode: IdsChannelMode, frame: Uint8Array): { seq: number; plaintext: Buffer } {
  const seq = readSeq(frame, mode, 'IDS request frame');
  if (mode === 'plain') return { seq, plaintext: plainBody(frame) };
  return { seq, plaintext: decrypt(keys.request, frame, requestAad(keys, seqBytes(seq)), 'IDS request frame') };
}

/** The response to `requestFrame` (whose seq is `seq`). */
export function sealIdsResponse(keys: IdsChannelKeys, mode: IdsChannelMode, seq: number, requestFrame: Uint8Array, plaintext: Uint8Array): Buffer {
  const s = seqBytes(seq);
  return mode === 'plain' ? plainFrame(s, plaintext) : encrypt(keys.response, s, responseAad(keys, s, requestFrame), plaintext);
}

/** Opens the response to `requestFrame`, sent with `seq`: any other seq or request is refused. */
export function openIdsResponse(keys: IdsChannelKeys, mode: IdsChannelMode, seq: number, requestFrame: Uint8Array, frame: Uint8Array): Buffer {
  const got = readSeq(frame, mode, 'IDS response frame');
  if (got !== seq) throw new IdsChannelError('WRONG_SEQ', `IDS response carries seq ${got}, expected ${seq}`);
  if (mode === 'plain') return plainBody(frame);
  return decrypt(keys.response, frame, responseAad(keys, seqBytes(seq), requestFrame), 'IDS response frame');
}
