/**
 * The sealed serial console (ARCHITECTURE.md protocol 6). A session's key is
 * HKDF-SHA256(K_console, salt = tenantNonce ‖ monitorNonce, info = "vmseal/v1/console-session")
 * (crypto/keys.ts deriveConsoleSessionKey):
 * both sides contribute freshness, so neither an old session's frames nor its key can be replayed
 * into a new one. Each direction numbers its frames 1, 2, 3, … and the receiver takes only the next
 * number: the management plane in the middle can drop frames (seen as a gap), but not inject,
 * reorder or replay them.
 *
 * Plaintext of a frame: seq (u64 BE) ‖ bytes. AEAD associated data: the direction label ‖ session id.
 */
import { z } from 'zod';
import { hexBytes, ProtocolError } from './fields.ts';

export const CONSOLE_NONCE_BYTES = 16;
/** Bytes of console data in one frame at most. */
export const CONSOLE_FRAME_MAX_DATA = 16 * 1024;

export type ConsoleDirection = 'out' | 'in';

export function consoleAad(direction: ConsoleDirection, sessionId: string): Buffer {
  return Buffer.from(`vmseal/v1/console/${direction}/${sessionId}`, 'ascii');
}

export function encodeConsoleFrame(seq: number, data: Uint8Array): Buffer {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new ProtocolError('console frame', `bad sequence number ${seq}`);
  if (data.length > CONSOLE_FRAME_MAX_DATA) throw new ProtocolError('console frame', `${data.length} bytes is over ${CONSOLE_FRAME_MAX_DATA}`);
  const b = Buffer.alloc(8 + data.length);
  b.writeBigUInt64BE(BigInt(seq), 0);
  b.set(data, 8);
  return b;
}

export function decodeConsoleFrame(b: Uint8Array): { seq: number; data: Buffer } {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < 8 || buf.length > 8 + CONSOLE_FRAME_MAX_DATA) throw new ProtocolError('console frame', `bad length ${buf.length}`);
  const seq = buf.readBigUInt64BE(0);
  if (seq < 1n || seq > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError('console frame', `bad sequence number ${seq}`);
  return { seq: Number(seq), data: Buffer.from(buf.subarray(8)) };
}

export const sessionIdHex = hexBytes(CONSOLE_NONCE_BYTES);

const blob = z.string().max(Math.ceil((CONSOLE_FRAME_MAX_DATA + 64) / 3) * 4).regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64');
export const consoleOpenRequestSchema = z.strictObject({ tenantNonce: z.string().length(24).regex(/^[A-Za-z0-9+/]*={0,2}$/) });
export const consoleOpenResponseSchema = z.strictObject({ sessionId: sessionIdHex });
export const consoleFramesQuerySchema = z.strictObject({ after: z.coerce.number().int().min(0).default(0), waitMs: z.coerce.number().int().min(0).max(30_000).default(10_000) });
export const consoleFramesResponseSchema = z.strictObject({ frames: z.array(z.strictObject({ seq: z.number().int().min(1), frame: blob })).max(4096) });
export const consoleInputRequestSchema = z.strictObject({ frame: blob });
