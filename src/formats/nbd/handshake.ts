/** Fixed-newstyle handshake messages: greeting, client flags, option requests and replies. */
import {
  CLIENT_FLAGS_SIZE,
  EXPORT_NAME_REPLY_PADDING,
  EXPORT_NAME_REPLY_SIZE,
  NBD_CLISERV_MAGIC,
  NBD_INIT_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  SERVER_GREETING_SIZE,
} from './constants.ts';
import { NbdProtocolError, checkU16, checkU32, decodeNbdString, encodeNbdString, readExactU64, requireLength, writeU64 } from './bytes.ts';

export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(SERVER_GREETING_SIZE);
  b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(checkU16(handshakeFlags, 'handshake flags'), 16);
  return b;
}

/** Decodes a newstyle greeting; an oldstyle one is refused with an error that says so. */
export function decodeServerGreeting(buf: Buffer): { handshakeFlags: number } {
  requireLength(buf, 0, SERVER_GREETING_SIZE, 'server greeting');
  if (buf.readBigUInt64BE(0) !== NBD_INIT_MAGIC) throw new NbdProtocolError('server greeting: bad NBDMAGIC');
  const second = buf.readBigUInt64BE(8);
  if (second === NBD_CLISERV_MAGIC) throw new NbdProtocolError('server greeting: oldstyle negotiation is not supported');
  if (second !== NBD_OPTS_MAGIC) throw new NbdProtocolError('server greeting: bad IHAVEOPT magic');
  return { handshakeFlags: buf.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(CLIENT_FLAGS_SIZE);
  b.writeUInt32BE(checkU32(flags, 'client flags'), 0);
  return b;
}

export function decodeClientFlags(buf: Buffer): number {
  requireLength(buf, 0, CLIENT_FLAGS_SIZE, 'client flags');
  return buf.readUInt32BE(0);
}

export interface OptionHeader {
  option: number;
  /** Length of the option data that follows; a claim by the peer, not yet checked. */
  length: number;
}

export function encodeOptionRequest(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(checkU32(option, 'option'), 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

export function decodeOptionHeader(buf: Buffer): OptionHeader {
  requireLength(buf, 0, OPTION_HEADER_SIZE, 'option header');
  if (buf.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw new NbdProtocolError('option header: bad IHAVEOPT magic');
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(checkU32(option, 'option'), 8);
  b.writeUInt32BE(checkU32(type, 'reply type'), 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader {
  requireLength(buf, 0, OPTION_REPLY_HEADER_SIZE, 'option reply header');
  if (buf.readBigUInt64BE(0) !== NBD_OPTION_REPLY_MAGIC) throw new NbdProtocolError('option reply: bad magic');
  return { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

/** An error reply carries an optional human-readable message. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, encodeNbdString(message, 'option error message'));
}

/** The reply that ends a successful NBD_OPT_EXPORT_NAME (there is no option reply header). */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_REPLY_PADDING));
  writeU64(b, 0, size);
  b.writeUInt16BE(checkU16(transmissionFlags, 'transmission flags'), 8);
  return b;
}

export function decodeExportNameReply(buf: Buffer, noZeroes: boolean): { size: number; transmissionFlags: number } {
  const total = EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_REPLY_PADDING);
  if (buf.length !== total) throw new NbdProtocolError(`export name reply: expected ${total} bytes, got ${buf.length}`);
  return { size: readExactU64(buf, 0, 'export size'), transmissionFlags: buf.readUInt16BE(8) };
}

/** NBD_OPT_EXPORT_NAME data is the bare name. */
export function decodeExportName(data: Buffer): string {
  return decodeNbdString(data, 'export name');
}

/** NBD_REP_SERVER data: 32-bit name length, name, optional description. */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const n = encodeNbdString(name, 'export name');
  const d = encodeNbdString(description, 'export description');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeServerEntry(data: Buffer): { name: string; description: string } {
  requireLength(data, 0, 4, 'NBD_REP_SERVER');
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 4) {
    throw new NbdProtocolError(`NBD_REP_SERVER: name length ${nameLength} exceeds the ${data.length - 4} bytes present`);
  }
  return {
    name: decodeNbdString(data.subarray(4, 4 + nameLength), 'export name'),
    description: decodeNbdString(data.subarray(4 + nameLength), 'export description'),
  };
}
