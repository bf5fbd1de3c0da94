/**
 * ECALLs and OCALLs between the untrusted host library and the IDS enclave process: length-prefixed
 * binary frames on a pipe (the enclave's stdin carries host → enclave, its stdout enclave → host).
 *
 *   frame  = bodyLen (u32 BE) ‖ body
 *   body   = kind (u8) ‖ type (u8) ‖ callId (u32 BE) ‖ payload
 *   result payload = status (u8: 0 ok, 1 error) ‖ (ok: the call's result | error: UTF-8 message)
 *
 * ECALLs are numbered by the host, OCALLs by the enclave; a result carries the call's type and id. A
 * frame whose length, kind or type is wrong breaks the stream (the reader cannot resynchronise): the
 * decoder throws and the receiver closes the pipe. A well-framed call whose payload is invalid gets an
 * error result and the stream goes on. No frame is buffered beyond MAX_FRAME_BYTES.
 */
import { z } from 'zod';
import { READ_LIMITS } from './ids-read.ts';
import { base64Bytes, hexBytes, hostIdField, ProtocolError } from './fields.ts';
import { idsSignRequestSchema, idsSignResponseSchema, sessionIdHex } from './ids-registration.ts';

export const FRAME_LENGTH_BYTES = 4;
export const FRAME_HEADER_BYTES = 6;
/** A channel reply carries at most one read batch (READ_LIMITS.maxBatchBytes) plus its framing and seal. */
export const MAX_FRAME_BYTES = READ_LIMITS.maxBatchBytes + (8 << 20);
/** JSON payloads (control messages, check results) are far smaller than channel frames. */
export const MAX_JSON_PAYLOAD_BYTES = 16 << 20;
export const MAX_ERROR_MESSAGE_BYTES = 2000;
export const MAX_LOG_BYTES = 4096;

export const FrameKind = { ecall: 1, ecallResult: 2, ocall: 3, ocallResult: 4 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export const Ecall = { init: 1, register: 2, registered: 3, heartbeat: 4, runCheck: 5, pslist: 6, stop: 7 } as const;
export type Ecall = (typeof Ecall)[keyof typeof Ecall];
export const Ocall = { channelRead: 1, log: 2 } as const;
export type Ocall = (typeof Ocall)[keyof typeof Ocall];

const ECALL_TYPES = new Set<number>(Object.values(Ecall));
const OCALL_TYPES = new Set<number>(Object.values(Ocall));

export interface Frame {
  kind: FrameKind;
  type: number;
  callId: number;
  payload: Buffer;
}

export class EnclaveCallError extends ProtocolError {
  override name = 'EnclaveCallError';
  constructor(message: string) {
    super('enclave call', message);
  }
}

function typeKnown(kind: number, type: number): boolean {
  if (kind === FrameKind.ecall || kind === FrameKind.ecallResult) return ECALL_TYPES.has(type);
  if (kind === FrameKind.ocall || kind === FrameKind.ocallResult) return OCALL_TYPES.has(type);
  return false;
}

/**
 * The 10 bytes in front of a payload of `payloadBytes`. A sender may write them and the payload's
 * pieces separately (one writev), so a large payload is never copied just to be framed.
 */
export function encodeFrameHeader(kind: FrameKind, type: number, callId: number, payloadBytes: number): Buffer {
  if (!typeKnown(kind, type)) throw new EnclaveCallError(`unknown frame kind ${kind} / type ${type}`);
  if (!Number.isInteger(callId) || callId < 0 || callId > 0xffff_ffff) throw new EnclaveCallError(`bad call id ${callId}`);
  const bodyLen = FRAME_HEADER_BYTES + payloadBytes;
  if (bodyLen > MAX_FRAME_BYTES) throw new EnclaveCallError(`frame of ${bodyLen} bytes is over the limit of ${MAX_FRAME_BYTES}`);
  const head = Buffer.allocUnsafe(FRAME_LENGTH_BYTES + FRAME_HEADER_BYTES);
  head.writeUInt32BE(bodyLen, 0);
  head.writeUInt8(kind, 4);
  head.writeUInt8(type, 5);
  head.writeUInt32BE(callId, 6);
  return head;
}

export function encodeFrame(frame: Frame): Buffer {
  return Buffer.concat([encodeFrameHeader(frame.kind, frame.type, frame.callId, frame.payload.length), frame.payload]);
}

/**
 * Reassembles frames from a byte stream. Chunks are kept as they arrive and joined only once a whole
 * frame is present, so a peer announcing a huge frame costs nothing until it sends the bytes, and one
 * over MAX_FRAME_BYTES is refused from its 4-byte length alone.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private broken: EnclaveCallError | undefined;

  /** Returns every complete frame in order; throws (now and on every later push) once the stream is malformed. */
  push(chunk: Uint8Array): Frame[] {
    if (this.broken) throw this.broken;
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.buffered += chunk.byteLength;
    const frames: Frame[] = [];
    try {
      for (;;) {
        if (this.buffered < FRAME_LENGTH_BYTES) break;
        const bodyLen = this.peek(FRAME_LENGTH_BYTES).readUInt32BE(0);
        if (bodyLen < FRAME_HEADER_BYTES) throw new EnclaveCallError(`frame body of ${bodyLen} bytes is shorter than its ${FRAME_HEADER_BYTES}-byte header`);
        if (bodyLen > MAX_FRAME_BYTES) throw new EnclaveCallError(`frame of ${bodyLen} bytes is over the limit of ${MAX_FRAME_BYTES}`);
        if (this.buffered < FRAME_LENGTH_BYTES + bodyLen) break;
        const whole = this.take(FRAME_LENGTH_BYTES + bodyLen);
        const kind = whole.readUInt8(4);
        const type = whole.readUInt8(5);
        if (!typeKnown(kind, type)) throw new EnclaveCallError(`unknown frame kind ${kind} / type ${type}`);
        frames.push({ kind: kind as FrameKind, type, callId: whole.readUInt32BE(6), payload: whole.subarray(FRAME_LENGTH_BYTES + FRAME_HEADER_BYTES) });
      }
    } catch (err) {
      this.broken = err as EnclaveCallError;
      this.chunks = [];
      this.buffered = 0;
      throw err;
    }
    return frames;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) return first;
    return Buffer.concat(this.chunks).subarray(0, n);
  }

  private take(n: number): Buffer {
    const single = this.chunks.length === 1;
    const all = single ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    // A lone chunk belongs to the stream (its pool may be reused): the frame gets its own copy. A
    // joined buffer is already ours, and copying a frame of a few hundred KiB twice showed in profiles.
    const out = single ? Buffer.from(all.subarray(0, n)) : all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}

/** The status byte of a result payload: 0 is followed by the call's result, 1 by an error message. */
export const RESULT_OK = 0;
export const RESULT_ERROR = 1;

export function errorResult(message: string): Buffer {
  const text = Buffer.from(message, 'utf8').subarray(0, MAX_ERROR_MESSAGE_BYTES);
  return Buffer.concat([Buffer.of(RESULT_ERROR), text]);
}

export type CallResult = { ok: true; body: Buffer } | { ok: false; error: string };

export function decodeResult(payload: Buffer): CallResult {
  const status = payload[0];
  if (status === RESULT_OK) return { ok: true, body: payload.subarray(1) };
  if (status === RESULT_ERROR) {
    if (payload.length - 1 > MAX_ERROR_MESSAGE_BYTES) throw new EnclaveCallError('error message over the limit');
    return { ok: false, error: payload.subarray(1).toString('utf8') };
  }
  throw new EnclaveCallError(status === undefined ? 'empty result payload' : `bad result status ${status}`);
}

export function encodeJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/** Parses a JSON payload with `schema`; any problem is an EnclaveCallError naming `what`. */
export function decodeJsonPayload<S extends z.ZodType>(what: string, schema: S, payload: Uint8Array): z.output<S> {
  if (payload.length > MAX_JSON_PAYLOAD_BYTES) throw new EnclaveCallError(`${what}: ${payload.length} bytes is over the limit of ${MAX_JSON_PAYLOAD_BYTES}`);
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8'));
  } catch {
    throw new EnclaveCallError(`${what}: not valid JSON`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new EnclaveCallError(`${what}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

// ---- payload schemas ----

const pem = z.string().min(1).max(16_384);
const settings = z.record(z.string().max(64), z.json());
export const checkNameField = z.string().regex(/^[a-z][a-z0-9-]{0,40}$/, 'must be a check name (a-z 0-9 -)');

/**
 * The enclave's static configuration: measured together with the bundle, so a tenant who approves a
 * measurement approves exactly these trust anchors and checks. Runtime values (VM, host) are not here.
 */
export const enclaveConfigSchema = z.strictObject({
  version: z.literal(1),
  /** The authority's CA certificate (PEM): the enclave trusts signatures that chain to it. */
  authorityCaCert: pem,
  /** The authority's IDS HPKE public key (the heartbeat key is sealed to it) and the CA's signature over it. */
  authorityHpkePublicKey: z.string().regex(/^[A-Za-z0-9+/]{43}=$/, 'must be the base64 of 32 bytes'),
  authorityKeySignature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, 'must be the base64 of 64 bytes'),
  /** SHA-256 of the kernel profile JSON the checks read the guest with. */
  profileSha256: hexBytes(32),
  /** Enabled checks and their settings. */
  checks: z.record(checkNameField, settings),
  /**
   * Benchmark configuration (b) only: the channel runs unencrypted (docs/ids.md, plain mode). It is
   * part of the measurement, so such an enclave can never pass for a sealed one.
   */
  benchPlainChannel: z.literal(true).optional(),
});
export type EnclaveConfig = z.output<typeof enclaveConfigSchema>;

export const initParamsSchema = z.strictObject({
  config: enclaveConfigSchema,
  /** The kernel profile text; the enclave checks its hash against config.profileSha256. */
  profile: z.string().max(MAX_JSON_PAYLOAD_BYTES - 65_536),
  vmId: hexBytes(16),
  hostId: hostIdField,
  hostCertificate: pem,
});
export type InitParams = z.output<typeof initParamsSchema>;
export const initResultSchema = z.strictObject({ measurement: hexBytes(32) });

/**
 * `register` returns the authority's sign request (sealed keys and the header, opaque to the host
 * library, which forwards it); `registered` hands back the authority's signature.
 */
export const registerResultSchema = z.strictObject({ sessionId: sessionIdHex, signRequest: idsSignRequestSchema });
export const registeredParamsSchema = idsSignResponseSchema;
export const registeredResultSchema = z.strictObject({ ok: z.literal(true) });

export const heartbeatParamsSchema = z.strictObject({ seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER), nonce: base64Bytes(16) });
export const heartbeatResultSchema = z.strictObject({ status: z.number().int().min(0).max(255), mac: base64Bytes(32) });

/** No settings travel with the call: a check runs with the settings its measured configuration gives it. */
export const runCheckParamsSchema = z.strictObject({ name: checkNameField });
export const checkResultSchema = z.strictObject({ name: checkNameField, alerts: z.array(z.json()).max(100_000), summary: z.json().optional() });
export const pslistParamsSchema = z.strictObject({});
/** A number read from the guest as the checks report it (pid_t, a uid, nr_threads; -1 for unreadable credentials): any i32 or u32. */
const TASK_ID_MIN = -0x8000_0000;
const TASK_ID_MAX = 0xffff_ffff;
const MAX_COMM_CHARS = 64;
const MAX_STATE_CHARS = 8;
const MAX_PS_ROWS = 1_000_000;

/** One row of the process list (ids/checks/pslist.ts names it PsRow) as the host receives it (a type, so it reads as a plain record). */
export type PsRowWire = {
  pid: number;
  ppid: number;
  comm: string;
  uid: number;
  euid: number;
  state: string;
  threads: number;
  kthread: boolean;
  /** The task_struct's address, 0x-prefixed lower-case hex. */
  task: string;
};

/*
 * The pslist result is binary, not JSON: the host validates every row, and parsing a few hundred
 * rows of JSON through a schema cost more than reading the guest (issue 4). All little-endian:
 *   count u32, then per row: pid, ppid, uid, euid, threads as f64 (exact for i32 and u32),
 *   kthread u8 (0|1), task u64, state len u8 + UTF-8, comm len u8 + UTF-8.
 * Fixed part of a row: 5 × 8 + 1 + 8 + 1 + 1 bytes.
 */
const PS_ROW_FIXED = 51;

function checkTaskId(v: number, what: string): number {
  if (!Number.isInteger(v) || v < TASK_ID_MIN || v > TASK_ID_MAX) throw new EnclaveCallError(`pslist: ${what} ${v} is not an i32 or u32`);
  return v;
}

function rowText(v: string, maxChars: number, what: string): Buffer {
  if (typeof v !== 'string' || v.length > maxChars) throw new EnclaveCallError(`pslist: ${what} is longer than ${maxChars} characters`);
  const b = Buffer.from(v, 'utf8');
  if (b.length > 255) throw new EnclaveCallError(`pslist: ${what} is longer than 255 bytes`);
  return b;
}

export function encodePsRows(rows: readonly PsRowWire[]): Buffer {
  if (rows.length > MAX_PS_ROWS) throw new EnclaveCallError(`pslist: ${rows.length} rows is over the limit of ${MAX_PS_ROWS}`);
  const texts = rows.map((r) => [rowText(r.state, MAX_STATE_CHARS, 'state'), rowText(r.comm, MAX_COMM_CHARS, 'comm')] as const);
  const size = texts.reduce((n, [st, c]) => n + PS_ROW_FIXED + st.length + c.length, 4);
  const b = Buffer.allocUnsafe(size);
  let at = b.writeUInt32LE(rows.length, 0);
  rows.forEach((r, i) => {
    for (const [v, what] of [[r.pid, 'pid'], [r.ppid, 'ppid'], [r.uid, 'uid'], [r.euid, 'euid'], [r.threads, 'threads']] as const) at = b.writeDoubleLE(checkTaskId(v, what), at);
    at = b.writeUInt8(r.kthread ? 1 : 0, at);
    if (!/^0x[0-9a-f]{1,16}$/.test(r.task)) throw new EnclaveCallError('pslist: task must be a hex kernel address');
    at = b.writeBigUInt64LE(BigInt(r.task), at);
    const [st, c] = texts[i] as readonly [Buffer, Buffer];
    at = b.writeUInt8(st.length, at);
    at += st.copy(b, at);
    at = b.writeUInt8(c.length, at);
    at += c.copy(b, at);
  });
  return b;
}

/** Decodes and validates a pslist result; short input, trailing bytes or a bad field is an EnclaveCallError. */
export function decodePsRows(payload: Buffer): PsRowWire[] {
  const need = (at: number, n: number): void => {
    if (payload.length - at < n) throw new EnclaveCallError(`pslist result truncated at byte ${at}`);
  };
  need(0, 4);
  const count = payload.readUInt32LE(0);
  if (count > MAX_PS_ROWS || count * PS_ROW_FIXED > payload.length - 4) throw new EnclaveCallError(`pslist result: ${count} rows cannot fit in ${payload.length} bytes`);
  const rows: PsRowWire[] = new Array(count);
  let at = 4;
  const id = (what: string): number => {
    const v = checkTaskId(payload.readDoubleLE(at), what);
    at += 8;
    return v;
  };
  const text = (maxChars: number, what: string): string => {
    need(at, 1);
    const n = payload[at++] as number;
    need(at, n);
    const v = payload.toString('utf8', at, at + n);
    at += n;
    if (v.length > maxChars) throw new EnclaveCallError(`pslist result: ${what} is longer than ${maxChars} characters`);
    return v;
  };
  for (let i = 0; i < count; i++) {
    need(at, PS_ROW_FIXED);
    const pid = id('pid');
    const ppid = id('ppid');
    const uid = id('uid');
    const euid = id('euid');
    const threads = id('threads');
    const k = payload[at++];
    if (k !== 0 && k !== 1) throw new EnclaveCallError(`pslist result: kthread byte ${k}`);
    const task = `0x${payload.readBigUInt64LE(at).toString(16)}`;
    at += 8;
    const state = text(MAX_STATE_CHARS, 'state');
    const comm = text(MAX_COMM_CHARS, 'comm');
    rows[i] = { pid, ppid, comm, uid, euid, state, threads, kthread: k === 1, task };
  }
  if (at !== payload.length) throw new EnclaveCallError(`pslist result: ${payload.length - at} trailing bytes`);
  return rows;
}
export const stopParamsSchema = z.strictObject({});

export const logParamsSchema = z.strictObject({ level: z.enum(['debug', 'info', 'warn', 'error']), message: z.string().max(MAX_LOG_BYTES) });
