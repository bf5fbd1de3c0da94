// TPM 2.0 command and response framing (Part 1 §18, Part 3): header, handle area, authorization
// area, parameters. parseCommand applies the checks a TPM applies before it runs anything and reports
// the response code swtpm (libtpms, the TCG reference code) answers the same bytes with; the test
// tpm2-tools.test.ts compares the two on real swtpm. A TPM checks that handles exist before it parses
// sessions, so for a command naming a missing object swtpm answers TPM_RC_HANDLE first.
import { TPM_HT, TPM_RC, TPM_RH, TPM_ST, handleType, rcForHandle, rcForSession } from './constants.ts';
import { commandInfo } from './command-codes.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';

export const HEADER_SIZE = 10;
/** Default ceiling on a command or response (TPM_PT_MAX_COMMAND_SIZE of swtpm/libtpms is 4096). */
export const DEFAULT_MAX_COMMAND_SIZE = 4096;
/** Part 1: at most three authorization sessions per command. */
export const MAX_SESSIONS = 3;
/** A nonce or HMAC is at most one digest of the largest hash (sizeof(TPMU_HA)). */
const MAX_SESSION_FIELD = 64;
/** handle(4) + nonce.size(2) + attributes(1) + hmac.size(2): the smallest session. */
const MIN_SESSION_SIZE = 9;
/** TPMA_SESSION bits 3 and 4 are reserved. */
const SESSION_RESERVED_BITS = 0x18;

/** One entry of a command's authorization area (TPMS_AUTH_COMMAND). */
export interface AuthSession {
  handle: number;
  nonce: Buffer;
  attributes: number;
  hmac: Buffer;
}

/** One entry of a response's authorization area (TPMS_AUTH_RESPONSE). */
export interface AuthResponse {
  nonce: Buffer;
  attributes: number;
  hmac: Buffer;
}

export interface ParsedCommand {
  tag: number;
  size: number;
  commandCode: number;
  /** The command's name in Part 3 without the TPM2_ prefix, e.g. "NV_Read". */
  name: string;
  handles: number[];
  /** Present only when tag = TPM_ST_SESSIONS. */
  sessions: AuthSession[];
  parameters: Buffer;
}

export interface ParsedResponse {
  tag: number;
  size: number;
  responseCode: number;
  handles: number[];
  sessions: AuthResponse[];
  parameters: Buffer;
}

export interface ParseOptions {
  /** Largest command accepted (TPM_RC_COMMAND_SIZE above it). */
  maxSize?: number;
}

function isSessionHandle(h: number): boolean {
  const t = handleType(h);
  return h === TPM_RH.PW || t === TPM_HT.HMAC_SESSION || t === TPM_HT.POLICY_SESSION;
}

/** Parses one complete command; throws Tpm2FormatError carrying the TPM_RC to answer with. */
export function parseCommand(bytes: Buffer, options: ParseOptions = {}): ParsedCommand {
  const maxSize = options.maxSize ?? DEFAULT_MAX_COMMAND_SIZE;
  if (bytes.length < HEADER_SIZE) throw new Tpm2FormatError(TPM_RC.COMMAND_SIZE, `command of ${bytes.length} bytes is shorter than its header`);
  const tag = bytes.readUInt16BE(0);
  const size = bytes.readUInt32BE(2);
  const commandCode = bytes.readUInt32BE(6);
  // Part 2 names TPM_RC_BAD_TAG here; libtpms (swtpm) answers TPM_RC_VALUE, and the proxy answers as the TPM behind it would.
  if (tag !== TPM_ST.NO_SESSIONS && tag !== TPM_ST.SESSIONS) throw new Tpm2FormatError(TPM_RC.VALUE, `command tag 0x${tag.toString(16)}`);
  if (size !== bytes.length) throw new Tpm2FormatError(TPM_RC.COMMAND_SIZE, `header size ${size} but ${bytes.length} bytes`);
  if (size > maxSize) throw new Tpm2FormatError(TPM_RC.COMMAND_SIZE, `command of ${size} bytes exceeds ${maxSize}`);
  const info = commandInfo(commandCode);
  if (!info) throw new Tpm2FormatError(TPM_RC.COMMAND_CODE, `unknown command code 0x${commandCode.toString(16)}`);

  const r = new TpmReader(bytes, HEADER_SIZE);
  const handles: number[] = [];
  for (let i = 0; i < info.handles; i++) {
    if (r.remaining < 4) throw new Tpm2FormatError(rcForHandle(TPM_RC.INSUFFICIENT, i + 1), `${info.name}: handle ${i + 1} missing`);
    handles.push(r.u32('handle'));
  }

  const sessions: AuthSession[] = [];
  if (tag === TPM_ST.SESSIONS) {
    if (r.remaining < 4) throw new Tpm2FormatError(TPM_RC.AUTHSIZE, `${info.name}: authorizationSize missing`);
    const authSize = r.u32('authorizationSize');
    if (authSize < MIN_SESSION_SIZE || authSize > r.remaining) {
      throw new Tpm2FormatError(TPM_RC.SIZE, `${info.name}: authorizationSize ${authSize} with ${r.remaining} bytes left`);
    }
    const a = new TpmReader(bytes, r.offset, r.offset + authSize);
    r.bytes(authSize, 'authorization area');
    while (a.remaining > 0) {
      const n = sessions.length + 1;
      if (n > MAX_SESSIONS) throw new Tpm2FormatError(rcForSession(TPM_RC.SIZE, n), `${info.name}: more than ${MAX_SESSIONS} sessions`);
      a.shortRc = rcForSession(TPM_RC.INSUFFICIENT, n);
      const handle = a.u32('session handle');
      if (!isSessionHandle(handle)) throw new Tpm2FormatError(rcForSession(TPM_RC.VALUE, n), `${info.name}: 0x${handle.toString(16)} is not a session handle`);
      const nonceSize = a.u16('nonce size');
      if (nonceSize > MAX_SESSION_FIELD) throw new Tpm2FormatError(rcForSession(TPM_RC.SIZE, n), `${info.name}: session ${n} nonce of ${nonceSize} bytes`);
      const nonce = a.bytes(nonceSize, 'nonce');
      const attributes = a.u8('session attributes');
      if (attributes & SESSION_RESERVED_BITS) throw new Tpm2FormatError(rcForSession(TPM_RC.RESERVED_BITS, n), `${info.name}: session ${n} attributes 0x${attributes.toString(16)}`);
      const hmacSize = a.u16('hmac size');
      if (hmacSize > MAX_SESSION_FIELD) throw new Tpm2FormatError(rcForSession(TPM_RC.SIZE, n), `${info.name}: session ${n} hmac of ${hmacSize} bytes`);
      const hmac = a.bytes(hmacSize, 'hmac');
      sessions.push({ handle, nonce, attributes, hmac });
    }
  }
  return { tag, size, commandCode, name: info.name, handles, sessions, parameters: r.rest() };
}

/**
 * Parses the response to `commandCode`. Throws Tpm2FormatError on a response that does not frame
 * correctly (a TPM-side fault: the rc it carries is TPM_RC_FAILURE).
 */
export function parseResponse(bytes: Buffer, commandCode: number, options: ParseOptions = {}): ParsedResponse {
  const maxSize = options.maxSize ?? DEFAULT_MAX_COMMAND_SIZE;
  const bad = (m: string): never => {
    throw new Tpm2FormatError(TPM_RC.FAILURE, `response: ${m}`);
  };
  if (bytes.length < HEADER_SIZE) bad(`${bytes.length} bytes is shorter than a header`);
  const tag = bytes.readUInt16BE(0);
  const size = bytes.readUInt32BE(2);
  const responseCode = bytes.readUInt32BE(6);
  if (size !== bytes.length) bad(`header size ${size} but ${bytes.length} bytes`);
  if (size > maxSize) bad(`${size} bytes exceeds ${maxSize}`);
  const empty = { tag, size, responseCode, handles: [], sessions: [], parameters: Buffer.alloc(0) };
  if (responseCode !== TPM_RC.SUCCESS) {
    if (size !== HEADER_SIZE) bad(`error response 0x${responseCode.toString(16)} with a body`);
    return empty;
  }
  if (tag !== TPM_ST.NO_SESSIONS && tag !== TPM_ST.SESSIONS) bad(`tag 0x${tag.toString(16)}`);
  const info = commandInfo(commandCode);
  if (!info) return bad(`unknown command code 0x${commandCode.toString(16)}`);
  const r = new TpmReader(bytes, HEADER_SIZE, bytes.length, TPM_RC.FAILURE);
  const handles: number[] = [];
  for (let i = 0; i < info.responseHandles; i++) handles.push(r.u32('response handle'));
  if (tag === TPM_ST.NO_SESSIONS) return { ...empty, handles, parameters: r.rest() };
  const paramSize = r.u32('parameterSize');
  const parameters = r.bytes(paramSize, 'parameters');
  const sessions: AuthResponse[] = [];
  while (r.remaining > 0) {
    if (sessions.length === MAX_SESSIONS) bad('more than 3 sessions');
    const nonce = r.tpm2b('nonce', MAX_SESSION_FIELD);
    const attributes = r.u8('session attributes');
    const hmac = r.tpm2b('hmac', MAX_SESSION_FIELD);
    sessions.push({ nonce, attributes, hmac });
  }
  return { tag, size, responseCode, handles, sessions, parameters };
}

/** The 10-byte response a TPM sends for an error (tag TPM_ST_NO_SESSIONS unless given). */
export function errorResponse(rc: number, tag: number = TPM_ST.NO_SESSIONS): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt16BE(tag, 0);
  b.writeUInt32BE(HEADER_SIZE, 2);
  b.writeUInt32BE(rc >>> 0, 6);
  return b;
}

/** The password session (TPM_RS_PW) with the given password, as tpm2-tools sends it. */
export function passwordSession(password: Uint8Array = Buffer.alloc(0)): AuthSession {
  return { handle: TPM_RH.PW, nonce: Buffer.alloc(0), attributes: 0, hmac: Buffer.from(password) };
}

/** Frames a command; with sessions the tag is TPM_ST_SESSIONS. */
export function buildCommand(commandCode: number, handles: readonly number[], parameters: Uint8Array, sessions: readonly AuthSession[] = []): Buffer {
  const info = commandInfo(commandCode);
  if (!info) throw new RangeError(`unknown command code 0x${commandCode.toString(16)}`);
  if (handles.length !== info.handles) throw new RangeError(`${info.name} takes ${info.handles} handles, got ${handles.length}`);
  const body = new TpmWriter();
  for (const h of handles) body.u32(h);
  if (sessions.length > 0) {
    const auth = new TpmWriter();
    for (const s of sessions) auth.u32(s.handle).tpm2b(s.nonce).u8(s.attributes).tpm2b(s.hmac);
    const area = auth.finish();
    body.u32(area.length).bytes(area);
  }
  body.bytes(parameters);
  const b = body.finish();
  return new TpmWriter()
    .u16(sessions.length > 0 ? TPM_ST.SESSIONS : TPM_ST.NO_SESSIONS)
    .u32(HEADER_SIZE + b.length)
    .u32(commandCode)
    .bytes(b)
    .finish();
}

/** Splits a byte stream into whole TPM messages by their header size; returns the messages and the tail. */
export function splitMessages(stream: Buffer): { messages: Buffer[]; rest: Buffer } {
  const messages: Buffer[] = [];
  let at = 0;
  while (stream.length - at >= HEADER_SIZE) {
    const size = stream.readUInt32BE(at + 2);
    if (size < HEADER_SIZE) throw new Tpm2FormatError(TPM_RC.COMMAND_SIZE, `message size ${size} is below the header size`);
    if (stream.length - at < size) break;
    messages.push(stream.subarray(at, at + size));
    at += size;
  }
  return { messages, rest: stream.subarray(at) };
}
