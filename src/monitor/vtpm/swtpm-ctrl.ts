/**
 * swtpm's control-channel protocol over a socket (swtpm_ioctls(3), tpm_ioctl.h "Commands used by the
 * non-CUSE TPMs"): a big-endian u32 command code followed by the `req` part of the command's structure;
 * the answer is the `resp` part. The table holds the commands QEMU's tpm-emulator backend sends, with the
 * sizes that frame them; anything else on the channel cannot be framed and ends the connection.
 */

export const CMD = {
  GET_CAPABILITY: 0x01,
  INIT: 0x02,
  SHUTDOWN: 0x03,
  GET_TPMESTABLISHED: 0x04,
  SET_LOCALITY: 0x05,
  CANCEL_TPM_CMD: 0x09,
  STORE_VOLATILE: 0x0a,
  RESET_TPMESTABLISHED: 0x0b,
  GET_STATEBLOB: 0x0c,
  SET_STATEBLOB: 0x0d,
  STOP: 0x0e,
  GET_CONFIG: 0x0f,
  SET_DATAFD: 0x10,
  SET_BUFFERSIZE: 0x11,
} as const;

/** ptm_res values used by the proxy itself (TPM 1.2 return codes, as swtpm uses them). */
export const PTM_RES = { SUCCESS: 0, BAD_PARAMETER: 3, FAIL: 9 } as const;

/** PTM_CAP_* bits the proxy withholds from QEMU: it refuses state export/import and host-side hashing. */
export const WITHHELD_CAPS = (1n << 4n) | (1n << 8n) | (1n << 9n) | (1n << 14n);

export interface CtrlFrame {
  /** Bytes of the request after the command code (its `req` structure). */
  request: number;
  /**
   * Bytes a sender may send instead: QEMU sends sizeof the whole req/resp union for SET_LOCALITY and
   * RESET_TPMESTABLISHED (4, not 1), and swtpm reads one message per read, so both forms are in use.
   */
  requestPadded?: number;
  /** Bytes of the response. */
  response: number;
}

/** Fixed-size commands: request and response sizes of their req/resp structures. */
export const CTRL_FRAMES: ReadonlyMap<number, CtrlFrame> = new Map([
  [CMD.GET_CAPABILITY, { request: 0, response: 8 }], // ptm_cap (u64), no result code
  [CMD.INIT, { request: 4, response: 4 }], // init_flags → tpm_result
  [CMD.SHUTDOWN, { request: 0, response: 4 }],
  [CMD.GET_TPMESTABLISHED, { request: 0, response: 8 }], // tpm_result, bit, padding of struct ptm_est
  [CMD.SET_LOCALITY, { request: 1, requestPadded: 4, response: 4 }],
  [CMD.CANCEL_TPM_CMD, { request: 0, response: 4 }],
  [CMD.STORE_VOLATILE, { request: 0, response: 4 }],
  [CMD.RESET_TPMESTABLISHED, { request: 1, requestPadded: 4, response: 4 }],
  [CMD.STOP, { request: 0, response: 4 }],
  [CMD.GET_CONFIG, { request: 0, response: 8 }], // tpm_result, flags
  [CMD.SET_DATAFD, { request: 0, response: 4 }],
  [CMD.SET_BUFFERSIZE, { request: 4, requestPadded: 16, response: 16 }], // tpm_result, buffersize, minsize, maxsize
]);

/** GET_STATEBLOB's request (state_flags, type, offset); SET_STATEBLOB's header (state_flags, type, length) before its data. */
export const STATEBLOB_HEADER = 12;
/** A refused GET_STATEBLOB answers tpm_result, state_flags, totlength, length with no data. */
export const GET_STATEBLOB_RESPONSE = 16;
/** Largest SET_STATEBLOB payload the proxy swallows before refusing (swtpm's own state is well below). */
export const MAX_STATEBLOB = 1 << 20;

export function ctrlCommand(code: number, request: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(4 + request.length);
  b.writeUInt32BE(code, 0);
  Buffer.from(request).copy(b, 4);
  return b;
}

/** A response of `size` bytes that starts with `result` and is zero otherwise. */
export function ctrlResult(result: number, size = 4): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32BE(result, 0);
  return b;
}
