/** Transmission phase: the 28-byte request header, simple replies and structured reply chunks. */
import {
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdReplyFlag,
  NbdReplyType,
  REQUEST_HEADER_SIZE,
  SIMPLE_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  isErrorChunk,
} from './constants.ts';
import { NbdProtocolError, checkU16, checkU32, encodeNbdString, readExactU64, readU64, requireLength, writeU64 } from './bytes.ts';

export interface RequestHeader {
  flags: number;
  type: number;
  /** Opaque to the server; echoed in every reply. */
  cookie: bigint;
  /** See readU64: exact below 2^53, ordered correctly above. */
  offset: number;
  length: number;
}

export function encodeRequestHeader(h: RequestHeader): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(checkU16(h.flags, 'command flags'), 4);
  b.writeUInt16BE(checkU16(h.type, 'command type'), 6);
  b.writeBigUInt64BE(h.cookie, 8);
  writeU64(b, 16, h.offset);
  b.writeUInt32BE(checkU32(h.length, 'request length'), 24);
  return b;
}

/** Decodes the header at `at`; throws on a short buffer or a wrong magic. */
export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  requireLength(buf, at, REQUEST_HEADER_SIZE, 'request header');
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) throw new NbdProtocolError(`request header: bad magic 0x${magic.toString(16).padStart(8, '0')}`);
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    offset: readU64(buf, at + 16),
    length: buf.readUInt32BE(at + 24),
  };
}

/** Writes a 16-byte simple reply header into `into` at `at`. */
export function writeSimpleReplyHeader(into: Buffer, at: number, error: number, cookie: bigint): void {
  into.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  into.writeUInt32BE(checkU32(error, 'error'), at + 4);
  into.writeBigUInt64BE(cookie, at + 8);
}

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  writeSimpleReplyHeader(b, 0, error, cookie);
  return b;
}

export function decodeSimpleReplyHeader(buf: Buffer): { error: number; cookie: bigint } {
  requireLength(buf, 0, SIMPLE_REPLY_HEADER_SIZE, 'simple reply');
  if (buf.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new NbdProtocolError('simple reply: bad magic');
  return { error: buf.readUInt32BE(4), cookie: buf.readBigUInt64BE(8) };
}

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  /** Payload length that follows; a claim by the peer, not yet checked. */
  length: number;
}

/** Writes a 20-byte structured reply chunk header into `into` at `at`. */
export function writeChunkHeader(into: Buffer, at: number, h: ChunkHeader): void {
  into.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  into.writeUInt16BE(checkU16(h.flags, 'reply flags'), at + 4);
  into.writeUInt16BE(checkU16(h.type, 'reply type'), at + 6);
  into.writeBigUInt64BE(h.cookie, at + 8);
  into.writeUInt32BE(checkU32(h.length, 'chunk length'), at + 16);
}

export function decodeChunkHeader(buf: Buffer): ChunkHeader {
  requireLength(buf, 0, STRUCTURED_REPLY_HEADER_SIZE, 'structured reply chunk');
  if (buf.readUInt32BE(0) !== NBD_STRUCTURED_REPLY_MAGIC) throw new NbdProtocolError('structured reply chunk: bad magic');
  return { flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), cookie: buf.readBigUInt64BE(8), length: buf.readUInt32BE(16) };
}

/**
 * Writes the 28 bytes that precede the data of an NBD_REPLY_TYPE_OFFSET_DATA chunk (chunk
 * header and the 64-bit offset), so a reply buffer can be filled by reading straight after them.
 */
export function writeOffsetDataHeader(into: Buffer, at: number, cookie: bigint, offset: number, dataLength: number, flags: number): void {
  if (dataLength < 1) throw new RangeError('an OFFSET_DATA chunk must carry at least one byte');
  writeChunkHeader(into, at, { flags, type: NbdReplyType.OFFSET_DATA, cookie, length: 8 + dataLength });
  writeU64(into, at + STRUCTURED_REPLY_HEADER_SIZE, offset);
}

export function decodeOffsetData(payload: Buffer): { offset: number; data: Buffer } {
  if (payload.length < 9) throw new NbdProtocolError(`OFFSET_DATA chunk: length must be at least 9, got ${payload.length}`);
  return { offset: readExactU64(payload, 0, 'OFFSET_DATA offset'), data: payload.subarray(8) };
}

/** NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: "this request succeeded, nothing more follows". */
export function encodeNoneChunk(cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE);
  writeChunkHeader(b, 0, { flags: NbdReplyFlag.DONE, type: NbdReplyType.NONE, cookie, length: 0 });
  return b;
}

/** NBD_REPLY_TYPE_ERROR: 32-bit error, 16-bit message length, message. */
export function encodeErrorChunk(cookie: bigint, error: number, message: string, flags: number = NbdReplyFlag.DONE): Buffer {
  if (error === 0) throw new RangeError('an error chunk needs a nonzero error');
  const msg = encodeNbdString(message, 'error message');
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length);
  writeChunkHeader(b, 0, { flags, type: NbdReplyType.ERROR, cookie, length: 6 + msg.length });
  b.writeUInt32BE(checkU32(error, 'error'), STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(msg.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  msg.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

/** NBD_REPLY_TYPE_ERROR_OFFSET: like ERROR followed by the 64-bit offset the error applies to. */
export function encodeErrorOffsetChunk(cookie: bigint, error: number, message: string, offset: number, flags: number = NbdReplyFlag.DONE): Buffer {
  if (error === 0) throw new RangeError('an error chunk needs a nonzero error');
  const msg = encodeNbdString(message, 'error message');
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 14 + msg.length);
  writeChunkHeader(b, 0, { flags, type: NbdReplyType.ERROR_OFFSET, cookie, length: 14 + msg.length });
  b.writeUInt32BE(checkU32(error, 'error'), STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(msg.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  msg.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  writeU64(b, STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length, offset);
  return b;
}

export interface ErrorChunk {
  error: number;
  message: string;
  /** Present for NBD_REPLY_TYPE_ERROR_OFFSET. */
  offset?: number;
}

/** Decodes the payload of any error chunk (bit 15 set): error, message, trailing fields. */
export function decodeErrorChunk(type: number, payload: Buffer): ErrorChunk {
  if (!isErrorChunk(type)) throw new NbdProtocolError(`chunk type ${type} is not an error chunk`);
  requireLength(payload, 0, 6, 'error chunk');
  const error = payload.readUInt32BE(0);
  if (error === 0) throw new NbdProtocolError('error chunk: error must be nonzero');
  const messageLength = payload.readUInt16BE(4);
  const trailer = type === NbdReplyType.ERROR_OFFSET ? 8 : 0;
  if (messageLength > payload.length - 6 - trailer) {
    throw new NbdProtocolError(`error chunk: message length ${messageLength} exceeds the ${payload.length - 6 - trailer} bytes present`);
  }
  // Messages are for humans; a malformed one must not hide the error number.
  const message = payload.subarray(6, 6 + messageLength).toString('utf8');
  if (type === NbdReplyType.ERROR_OFFSET) {
    if (payload.length !== 6 + messageLength + 8) throw new NbdProtocolError('ERROR_OFFSET chunk: length does not match its message');
    return { error, message, offset: readExactU64(payload, 6 + messageLength, 'error offset') };
  }
  return { error, message };
}
