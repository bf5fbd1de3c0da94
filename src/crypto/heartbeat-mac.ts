/**
 * The IDS heartbeat answer (ARCHITECTURE.md protocol 8):
 *
 *   mac = HMAC-SHA256(K_heartbeat, "VMSEAL-HB1" ‖ u8 len ‖ sessionId (UTF-8) ‖ u64 BE seq ‖ nonce (16) ‖ u8 status)
 *
 * The session id carries a length byte so no two (sessionId, seq) pairs share an encoding. The key is
 * drawn inside the enclave and known only to it and the authority, so only the running IDS can answer
 * a fresh nonce.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const HEARTBEAT_KEY_BYTES = 32;
export const HEARTBEAT_NONCE_BYTES = 16;
export const HEARTBEAT_MAC_BYTES = 32;
const LABEL = Buffer.from('VMSEAL-HB1', 'ascii');

export function heartbeatMac(key: Uint8Array, sessionId: string, seq: number, nonce: Uint8Array, status: number): Buffer {
  if (key.length !== HEARTBEAT_KEY_BYTES) throw new Error(`heartbeat key must be ${HEARTBEAT_KEY_BYTES} bytes`);
  if (nonce.length !== HEARTBEAT_NONCE_BYTES) throw new Error(`heartbeat nonce must be ${HEARTBEAT_NONCE_BYTES} bytes`);
  if (!Number.isSafeInteger(seq) || seq < 0) throw new Error(`bad heartbeat sequence number ${seq}`);
  if (!Number.isInteger(status) || status < 0 || status > 255) throw new Error(`bad heartbeat status ${status}`);
  const id = Buffer.from(sessionId, 'utf8');
  if (id.length === 0 || id.length > 255) throw new Error('heartbeat session id must be 1..255 bytes');
  const fixed = Buffer.alloc(8);
  fixed.writeBigUInt64BE(BigInt(seq), 0);
  return createHmac('sha256', key).update(LABEL).update(Buffer.of(id.length)).update(id).update(fixed).update(nonce).update(Buffer.of(status)).digest();
}

export function heartbeatMacValid(key: Uint8Array, sessionId: string, seq: number, nonce: Uint8Array, status: number, mac: Uint8Array): boolean {
  const expected = heartbeatMac(key, sessionId, seq, nonce, status);
  return mac.length === expected.length && timingSafeEqual(expected, mac);
}
