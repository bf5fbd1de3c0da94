import { MAX_STRING_LENGTH } from './constants.ts';

/** A message that does not follow the NBD wire format. */
export class NbdProtocolError extends Error {
  override readonly name = 'NbdProtocolError';
}

const TWO_32 = 2 ** 32;
const utf8 = new TextDecoder('utf-8', { fatal: true });

export function requireLength(buf: Buffer, at: number, length: number, what: string): void {
  if (at < 0 || buf.length - at < length) {
    throw new NbdProtocolError(`${what}: need ${length} bytes, have ${Math.max(0, buf.length - at)}`);
  }
}

/**
 * Reads an unsigned 64-bit field as a number. Values above 2^53 come back rounded to the
 * nearest double; that keeps every comparison against a real export size (< 2^53) correct,
 * which is all the server does with request offsets.
 */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

/** Like readU64 but refuses values a number cannot hold exactly (sizes must be exact). */
export function readExactU64(buf: Buffer, at: number, what: string): number {
  const v = readU64(buf, at);
  if (!Number.isSafeInteger(v)) throw new NbdProtocolError(`${what} ${buf.readBigUInt64BE(at)} exceeds 2^53`);
  return v;
}

export function writeU64(buf: Buffer, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`not an unsigned 64-bit integer: ${value}`);
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32, at + 4);
}

export function checkU16(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new RangeError(`${what} is not a 16-bit value: ${value}`);
  return value;
}

export function checkU32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`${what} is not a 32-bit value: ${value}`);
  return value;
}

/** Decodes an NBD string: valid UTF-8, no NUL, at most 4096 bytes. */
export function decodeNbdString(bytes: Buffer, what: string): string {
  if (bytes.length > MAX_STRING_LENGTH) {
    throw new NbdProtocolError(`${what} is ${bytes.length} bytes, the limit is ${MAX_STRING_LENGTH}`);
  }
  if (bytes.includes(0)) throw new NbdProtocolError(`${what} contains a NUL byte`);
  try {
    return utf8.decode(bytes);
  } catch {
    throw new NbdProtocolError(`${what} is not valid UTF-8`);
  }
}

/** Encodes an NBD string, refusing what the spec forbids rather than sending it. */
export function encodeNbdString(text: string, what: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length > MAX_STRING_LENGTH) throw new RangeError(`${what} is ${bytes.length} bytes, the limit is ${MAX_STRING_LENGTH}`);
  if (bytes.includes(0)) throw new RangeError(`${what} contains a NUL character`);
  return bytes;
}
