/**
 * Numbers of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). Names follow the spec
 * with the `NBD_` prefix moved into the object name, e.g. NBD_OPT_GO is `NbdOpt.GO`.
 */

/** 'NBDMAGIC', first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT', the newstyle greeting magic and the magic of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Magic of every fixed-newstyle option reply. */
export const NBD_OPTION_REPLY_MAGIC = 0x3e889045565a9n;
/** The oldstyle greeting's second magic; only recognised to refuse it clearly. */
export const NBD_CLISERV_MAGIC = 0x00420281861253n;

export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (16 bits, server to client). */
export const NbdHandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags (32 bits, client to server). */
export const NbdClientFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

/** Transmission flags (16 bits) sent with the export size. */
export const NbdFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

/** Option types of the handshake phase. */
export const NbdOpt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const ERR = 0x80000000;
/** Option reply types; errors have bit 31 set. */
export const NbdRep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
  ERR_EXT_HEADER_REQD: ERR + 10,
} as const;

export function isErrorReply(type: number): boolean {
  return (type & ERR) !== 0;
}

/** Information types carried in NBD_REP_INFO and requested by NBD_OPT_INFO/GO. */
export const NbdInfo = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Request (command) types of the transmission phase. */
export const NbdCmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags (16 bits) of a request. */
export const NbdCmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

/** Structured reply chunk flags. */
export const NbdReplyFlag = {
  DONE: 1 << 0,
} as const;

/** Structured reply chunk types; error chunks have bit 15 set. */
export const NbdReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

export function isErrorChunk(type: number): boolean {
  return (type & (1 << 15)) !== 0;
}

/** Error values of the reply error field (not host errnos, although the numbers match Linux). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export const SERVER_GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
/** IHAVEOPT, option, length. */
export const OPTION_HEADER_SIZE = 16;
/** Reply magic, option, reply type, length. */
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Size, transmission flags, then 124 zero bytes unless NO_ZEROES was negotiated. */
export const EXPORT_NAME_REPLY_SIZE = 10;
export const EXPORT_NAME_REPLY_PADDING = 124;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** Chunk header plus the 64-bit offset that starts an OFFSET_DATA payload. */
export const OFFSET_DATA_HEADER_SIZE = STRUCTURED_REPLY_HEADER_SIZE + 8;
/** Upper bound the spec sets on any string (export names, messages). */
export const MAX_STRING_LENGTH = 4096;
/**
 * The largest NBD_OPT_INFO/GO payload that can be valid: name length, a maximal name, the
 * request count and 65535 requests. No option this codec parses can be longer.
 */
export const MAX_INFO_REQUEST_LENGTH = 4 + MAX_STRING_LENGTH + 2 + 2 * 0xffff;
