/** NBD_OPT_INFO / NBD_OPT_GO request data and the NBD_REP_INFO payloads answering them. */
import { MAX_STRING_LENGTH, NbdInfo } from './constants.ts';
import { NbdProtocolError, checkU16, checkU32, decodeNbdString, encodeNbdString, readExactU64, requireLength, writeU64 } from './bytes.ts';

export interface InfoRequest {
  /** Export name; "" asks for the default export. */
  name: string;
  /** NBD_INFO_* types the client asked for, in its order (unknown types included). */
  requests: number[];
}

/** Data of NBD_OPT_INFO/GO: 32-bit name length, name, 16-bit count, 16-bit info types. */
export function encodeInfoRequest(req: InfoRequest): Buffer {
  const name = encodeNbdString(req.name, 'export name');
  checkU16(req.requests.length, 'info request count');
  const b = Buffer.alloc(4 + name.length + 2 + 2 * req.requests.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  const countAt = 4 + name.length;
  b.writeUInt16BE(req.requests.length, countAt);
  req.requests.forEach((r, i) => b.writeUInt16BE(checkU16(r, 'info type'), countAt + 2 + 2 * i));
  return b;
}

/** Parses NBD_OPT_INFO/GO data; every length is checked against the bytes actually present. */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  requireLength(data, 0, 6, 'NBD_OPT_INFO/GO data');
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) {
    throw new NbdProtocolError(`NBD_OPT_INFO/GO: name length ${nameLength} exceeds the option length ${data.length} - 6`);
  }
  if (nameLength > MAX_STRING_LENGTH) throw new NbdProtocolError(`NBD_OPT_INFO/GO: name length ${nameLength} exceeds ${MAX_STRING_LENGTH}`);
  const name = decodeNbdString(data.subarray(4, 4 + nameLength), 'export name');
  const countAt = 4 + nameLength;
  const count = data.readUInt16BE(countAt);
  const expected = countAt + 2 + 2 * count;
  if (data.length !== expected) {
    throw new NbdProtocolError(`NBD_OPT_INFO/GO: ${count} info requests need ${expected} bytes, option has ${data.length}`);
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(countAt + 2 + 2 * i));
  return { name, requests };
}

export interface BlockSizeInfo {
  min: number;
  preferred: number;
  max: number;
}

export type InfoReply =
  | { type: 'export'; size: number; transmissionFlags: number }
  | { type: 'name'; name: string }
  | { type: 'description'; description: string }
  | ({ type: 'block-size' } & BlockSizeInfo)
  | { type: 'unknown'; infoType: number; data: Buffer };

/** NBD_INFO_EXPORT: type, 64-bit size, 16-bit transmission flags (12 bytes). */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NbdInfo.EXPORT, 0);
  writeU64(b, 2, size);
  b.writeUInt16BE(checkU16(transmissionFlags, 'transmission flags'), 10);
  return b;
}

/** NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum payload (14 bytes). */
export function encodeInfoBlockSize(sizes: BlockSizeInfo): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  b.writeUInt32BE(checkU32(sizes.min, 'minimum block size'), 2);
  b.writeUInt32BE(checkU32(sizes.preferred, 'preferred block size'), 6);
  b.writeUInt32BE(checkU32(sizes.max, 'maximum payload size'), 10);
  return b;
}

function encodeInfoString(type: number, text: string, what: string): Buffer {
  const s = encodeNbdString(text, what);
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  return encodeInfoString(NbdInfo.NAME, name, 'export name');
}

export function encodeInfoDescription(description: string): Buffer {
  return encodeInfoString(NbdInfo.DESCRIPTION, description, 'export description');
}

/** Decodes an NBD_REP_INFO payload; fixed-size types must have exactly their size. */
export function decodeInfo(payload: Buffer): InfoReply {
  requireLength(payload, 0, 2, 'NBD_REP_INFO');
  const infoType = payload.readUInt16BE(0);
  const exact = (n: number): void => {
    if (payload.length !== n) throw new NbdProtocolError(`NBD_REP_INFO type ${infoType}: length must be ${n}, got ${payload.length}`);
  };
  switch (infoType) {
    case NbdInfo.EXPORT:
      exact(12);
      return { type: 'export', size: readExactU64(payload, 2, 'export size'), transmissionFlags: payload.readUInt16BE(10) };
    case NbdInfo.BLOCK_SIZE:
      exact(14);
      return { type: 'block-size', min: payload.readUInt32BE(2), preferred: payload.readUInt32BE(6), max: payload.readUInt32BE(10) };
    case NbdInfo.NAME:
      return { type: 'name', name: decodeNbdString(payload.subarray(2), 'export name') };
    case NbdInfo.DESCRIPTION:
      return { type: 'description', description: decodeNbdString(payload.subarray(2), 'export description') };
    default:
      return { type: 'unknown', infoType, data: payload.subarray(2) };
  }
}
