import { TPM_RC } from './constants.ts';

/**
 * Hostile or malformed TPM 2.0 bytes. `rc` is the response code a TPM would answer the command with,
 * so a proxy can reply with errorResponse(err.rc) instead of forwarding.
 */
export class Tpm2FormatError extends Error {
  override readonly name = 'Tpm2FormatError';
  constructor(
    readonly rc: number,
    message: string,
  ) {
    super(`${message} (TPM_RC 0x${rc.toString(16).padStart(3, '0')})`);
  }
}

/** A bounds-checked big-endian cursor over one TPM structure. Every read that would run past `end` throws. */
export class TpmReader {
  private pos: number;
  constructor(
    readonly buf: Buffer,
    start = 0,
    private end = buf.length,
    /** The response code reported when the input runs out; parameter parsers set it per parameter. */
    public shortRc: number = TPM_RC.INSUFFICIENT,
  ) {
    this.pos = start;
  }
  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.end - this.pos;
  }
  need(n: number, what: string): void {
    if (n > this.end - this.pos) throw new Tpm2FormatError(this.shortRc, `${what}: need ${n} bytes, have ${this.end - this.pos}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.buf.readUInt8(this.pos++);
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  /** A TPM2B: u16 size then that many bytes; `max` bounds the size as the structure's definition does. */
  tpm2b(what: string, max = 0xffff): Buffer {
    const n = this.u16(`${what}.size`);
    if (n > max) throw new Tpm2FormatError(TPM_RC.SIZE, `${what}: size ${n} exceeds ${max}`);
    return this.bytes(n, what);
  }
  /** A sub-reader over the next n bytes (the body of a sized structure); this reader skips them. */
  sub(n: number, what: string): TpmReader {
    this.need(n, what);
    const r = new TpmReader(this.buf, this.pos, this.pos + n, this.shortRc);
    this.pos += n;
    return r;
  }
  rest(): Buffer {
    const v = this.buf.subarray(this.pos, this.end);
    this.pos = this.end;
    return v;
  }
  /** Throws unless the structure was consumed exactly. */
  done(what: string, rc: number = TPM_RC.SIZE): void {
    if (this.pos !== this.end) throw new Tpm2FormatError(rc, `${what}: ${this.end - this.pos} trailing bytes`);
  }
}

/** Builds TPM structures big-endian. */
export class TpmWriter {
  private parts: Buffer[] = [];
  u8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeUInt8(v);
    this.parts.push(b);
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
    return this;
  }
  bytes(b: Uint8Array): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  tpm2b(b: Uint8Array): this {
    if (b.length > 0xffff) throw new RangeError(`TPM2B of ${b.length} bytes`);
    return this.u16(b.length).bytes(b);
  }
  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}
