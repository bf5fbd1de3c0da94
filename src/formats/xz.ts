/**
 * .xz decoder (tukaani.org xz-file-format spec) with the LZMA2 and x86 BCJ filters, which is
 * what the kernel's xz payloads use (`xz --check=crc32 --x86 --lzma2`). Written here because
 * the npm xz decoders that run on Node 20 either lack BCJ or install native code at run time.
 * Synchronous; each block decodes into a buffer that may not grow past `maxOutput`, every loop
 * consumes input, and every size, padding and checksum in the container is verified.
 */
import { createHash } from 'node:crypto';

export class XzError extends Error {
  override name = 'XzError';
}

const fail = (why: string): never => {
  throw new XzError(why);
};

// --- checksums ---

const CRC32_TABLE = new Uint32Array(256);
const CRC64_LO = new Uint32Array(256);
const CRC64_HI = new Uint32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  CRC32_TABLE[n] = c >>> 0;
  // CRC-64/XZ (ECMA-182, reflected 0xC96C5795D7870F42) on two 32-bit halves.
  let lo = n;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const lsb = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi = hi >>> 1;
    if (lsb) {
      lo = (lo ^ 0xd7870f42) >>> 0;
      hi = (hi ^ 0xc96c5795) >>> 0;
    }
  }
  CRC64_LO[n] = lo;
  CRC64_HI[n] = hi;
}

export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC32_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function crc64(data: Uint8Array): Uint8Array {
  let lo = 0xffffffff;
  let hi = 0xffffffff;
  for (let i = 0; i < data.length; i++) {
    const t = (lo ^ data[i]!) & 0xff;
    lo = (((lo >>> 8) | (hi << 24)) ^ CRC64_LO[t]!) >>> 0;
    hi = ((hi >>> 8) ^ CRC64_HI[t]!) >>> 0;
  }
  const out = new Uint8Array(8);
  const v = new DataView(out.buffer);
  v.setUint32(0, (lo ^ 0xffffffff) >>> 0, true);
  v.setUint32(4, (hi ^ 0xffffffff) >>> 0, true);
  return out;
}

/** Check types: id → size in bytes, and how to compute it (undefined: none). */
const CHECKS: Record<number, { size: number; compute?: (d: Uint8Array) => Uint8Array }> = {
  0: { size: 0 },
  1: {
    size: 4,
    compute: (d) => {
      const out = new Uint8Array(4);
      new DataView(out.buffer).setUint32(0, crc32(d), true);
      return out;
    },
  },
  4: { size: 8, compute: crc64 },
  10: { size: 32, compute: (d) => createHash('sha256').update(d).digest() },
};

// --- growable output bounded by a limit ---

class Output {
  buf: Uint8Array;
  pos = 0;
  constructor(
    initial: number,
    private readonly limit: number,
  ) {
    this.buf = new Uint8Array(Math.min(initial, limit));
  }
  /** Makes room for `n` more bytes. */
  reserve(n: number): void {
    if (n > this.limit - this.pos) fail(`decompressed output exceeds the ${this.limit}-byte limit`);
    if (this.pos + n <= this.buf.length) return;
    let size = Math.max(this.buf.length * 2, 1 << 20);
    while (size < this.pos + n) size *= 2;
    const grown = new Uint8Array(Math.min(size, this.limit));
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
  }
}

// --- LZMA (as used inside LZMA2 chunks) ---

const PROB_INIT = 1024;
const NUM_STATES = 12;
const POS_STATES_MAX = 16;
const END_POS_MODEL_INDEX = 14;
const FULL_DISTANCES = 128;
const MATCH_MIN_LEN = 2;

class LengthProbs {
  choice = new Uint16Array(2);
  low = new Uint16Array(POS_STATES_MAX << 3);
  mid = new Uint16Array(POS_STATES_MAX << 3);
  high = new Uint16Array(256);
  reset(): void {
    for (const a of [this.choice, this.low, this.mid, this.high]) a.fill(PROB_INIT);
  }
}

class LzmaDecoder {
  // range coder
  private input: Uint8Array = new Uint8Array(0);
  private ip = 0;
  private end = 0;
  private range = 0;
  private code = 0;
  // model
  private lc = 0;
  private lp = 0;
  private pb = 0;
  private literal = new Uint16Array(0x300);
  private readonly isMatch = new Uint16Array(NUM_STATES << 4);
  private readonly isRep = new Uint16Array(NUM_STATES);
  private readonly isRepG0 = new Uint16Array(NUM_STATES);
  private readonly isRepG1 = new Uint16Array(NUM_STATES);
  private readonly isRepG2 = new Uint16Array(NUM_STATES);
  private readonly isRep0Long = new Uint16Array(NUM_STATES << 4);
  private readonly posSlot = new Uint16Array(4 << 6);
  private readonly specPos = new Uint16Array(1 + FULL_DISTANCES - END_POS_MODEL_INDEX);
  private readonly align = new Uint16Array(16);
  private readonly lenProbs = new LengthProbs();
  private readonly repLenProbs = new LengthProbs();
  private state = 0;
  private rep0 = 0;
  private rep1 = 0;
  private rep2 = 0;
  private rep3 = 0;
  hasProps = false;

  setProps(byte: number): void {
    if (byte >= 9 * 5 * 5) fail(`invalid LZMA properties byte ${byte}`);
    const lc = byte % 9;
    const rest = Math.floor(byte / 9);
    const lp = rest % 5;
    const pb = Math.floor(rest / 5);
    if (lc + lp > 4) fail(`LZMA2 forbids lc + lp > 4 (lc ${lc}, lp ${lp})`);
    this.lc = lc;
    this.lp = lp;
    this.pb = pb;
    this.literal = new Uint16Array(0x300 << (lc + lp));
    this.hasProps = true;
  }

  resetState(): void {
    for (const a of [this.literal, this.isMatch, this.isRep, this.isRepG0, this.isRepG1, this.isRepG2, this.isRep0Long, this.posSlot, this.specPos, this.align]) {
      a.fill(PROB_INIT);
    }
    this.lenProbs.reset();
    this.repLenProbs.reset();
    this.state = 0;
    this.rep0 = this.rep1 = this.rep2 = this.rep3 = 0;
  }

  private byte(): number {
    if (this.ip >= this.end) fail('LZMA chunk: compressed data ends too early');
    return this.input[this.ip++]!;
  }

  private bit(probs: Uint16Array, i: number): number {
    const p = probs[i]!;
    const bound = (this.range >>> 11) * p;
    let b: number;
    if (this.code < bound) {
      this.range = bound;
      probs[i] = p + ((2048 - p) >>> 5);
      b = 0;
    } else {
      this.range -= bound;
      this.code -= bound;
      probs[i] = p - (p >>> 5);
      b = 1;
    }
    if (this.range < 0x1000000) {
      this.range = (this.range * 256) >>> 0;
      this.code = ((this.code * 256) >>> 0) + this.byte();
    }
    return b;
  }

  private tree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    for (let i = 0; i < bits; i++) m = (m << 1) | this.bit(probs, base + m);
    return m - (1 << bits);
  }

  private reverseTree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    let sym = 0;
    for (let i = 0; i < bits; i++) {
      const b = this.bit(probs, base + m);
      m = (m << 1) | b;
      sym |= b << i;
    }
    return sym;
  }

  private direct(bits: number): number {
    let v = 0;
    for (let i = 0; i < bits; i++) {
      this.range >>>= 1;
      let b = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        b = 1;
      }
      v = ((v << 1) | b) >>> 0;
      if (this.range < 0x1000000) {
        this.range = (this.range * 256) >>> 0;
        this.code = ((this.code * 256) >>> 0) + this.byte();
      }
    }
    return v;
  }

  private length(p: LengthProbs, posState: number): number {
    if (this.bit(p.choice, 0) === 0) return this.tree(p.low, posState << 3, 3);
    if (this.bit(p.choice, 1) === 0) return 8 + this.tree(p.mid, posState << 3, 3);
    return 16 + this.tree(p.high, 0, 8);
  }

  private distance(len: number): number {
    const lenState = len < 3 ? len : 3;
    const slot = this.tree(this.posSlot, lenState << 6, 6);
    if (slot < 4) return slot;
    const directBits = (slot >>> 1) - 1;
    let dist = ((2 | (slot & 1)) << directBits) >>> 0;
    if (slot < END_POS_MODEL_INDEX) return dist + this.reverseTree(this.specPos, dist - slot, directBits);
    dist = (dist + this.direct(directBits - 4) * 16) >>> 0;
    return (dist + this.reverseTree(this.align, 0, 4)) >>> 0;
  }

  /**
   * Decodes one LZMA2 chunk: `packed` bytes of input at `ip` into exactly `unpacked` bytes
   * appended to `out`; matches may reach back to `dictStart` and no further.
   */
  decodeChunk(input: Uint8Array, ip: number, packed: number, out: Output, unpacked: number, dictStart: number): void {
    this.input = input;
    this.ip = ip;
    this.end = ip + packed;
    if (this.byte() !== 0) fail('LZMA chunk: range coder does not start with a zero byte');
    this.code = 0;
    for (let i = 0; i < 4; i++) this.code = ((this.code * 256) >>> 0) + this.byte();
    this.range = 0xffffffff;
    out.reserve(unpacked);
    const buf = out.buf;
    let pos = out.pos;
    const stop = pos + unpacked;
    const pbMask = (1 << this.pb) - 1;
    const lpMask = (1 << this.lp) - 1;
    const lc = this.lc;
    while (pos < stop) {
      const rel = pos - dictStart;
      const posState = rel & pbMask;
      const state = this.state;
      if (this.bit(this.isMatch, (state << 4) | posState) === 0) {
        const prev = rel > 0 ? buf[pos - 1]! : 0;
        const base = 0x300 * (((rel & lpMask) << lc) + (prev >>> (8 - lc)));
        let sym = 1;
        if (state >= 7) {
          if (this.rep0 >= rel) fail('LZMA chunk: match byte lies before the dictionary');
          let matchByte = buf[pos - this.rep0 - 1]!;
          while (sym < 0x100) {
            const matchBit = (matchByte >>> 7) & 1;
            matchByte <<= 1;
            const b = this.bit(this.literal, base + ((1 + matchBit) << 8) + sym);
            sym = (sym << 1) | b;
            if (b !== matchBit) break;
          }
        }
        while (sym < 0x100) sym = (sym << 1) | this.bit(this.literal, base + sym);
        buf[pos++] = sym & 0xff;
        this.state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
        continue;
      }
      let len: number;
      if (this.bit(this.isRep, state) === 0) {
        len = this.length(this.lenProbs, posState);
        this.state = state < 7 ? 7 : 10;
        const dist = this.distance(len);
        if (dist === 0xffffffff) fail('LZMA chunk: end marker is not allowed in LZMA2');
        this.rep3 = this.rep2;
        this.rep2 = this.rep1;
        this.rep1 = this.rep0;
        this.rep0 = dist;
      } else {
        if (this.bit(this.isRepG0, state) === 0) {
          if (this.bit(this.isRep0Long, (state << 4) | posState) === 0) {
            if (this.rep0 >= rel) fail('LZMA chunk: short repeat lies before the dictionary');
            this.state = state < 7 ? 9 : 11;
            buf[pos] = buf[pos - this.rep0 - 1]!;
            pos++;
            continue;
          }
        } else {
          let dist: number;
          if (this.bit(this.isRepG1, state) === 0) {
            dist = this.rep1;
          } else {
            if (this.bit(this.isRepG2, state) === 0) {
              dist = this.rep2;
            } else {
              dist = this.rep3;
              this.rep3 = this.rep2;
            }
            this.rep2 = this.rep1;
          }
          this.rep1 = this.rep0;
          this.rep0 = dist;
        }
        len = this.length(this.repLenProbs, posState);
        this.state = state < 7 ? 8 : 11;
      }
      const n = len + MATCH_MIN_LEN;
      if (this.rep0 >= rel) fail(`LZMA chunk: match distance ${this.rep0 + 1} reaches before the dictionary`);
      if (n > stop - pos) fail('LZMA chunk: match runs past the chunk');
      let from = pos - this.rep0 - 1;
      for (const end = pos + n; pos < end; ) buf[pos++] = buf[from++]!;
    }
    out.pos = pos;
    if (this.ip !== this.end || this.code !== 0) fail('LZMA chunk: compressed size does not match its data');
  }
}

/** LZMA2 (xz filter 0x21): a sequence of uncompressed and LZMA chunks up to a 0x00 end byte. */
function decodeLzma2(input: Uint8Array, start: number, end: number, out: Output): number {
  const lzma = new LzmaDecoder();
  let ip = start;
  let dictStart = -1;
  let needStateReset = true;
  const need = (n: number): void => {
    if (n > end - ip) fail('LZMA2: chunk header or data runs past the block');
  };
  for (;;) {
    need(1);
    const control = input[ip++]!;
    if (control === 0x00) return ip;
    if (control === 0x01 || control === 0x02) {
      need(2);
      const size = ((input[ip]! << 8) | input[ip + 1]!) + 1;
      ip += 2;
      if (control === 0x01) dictStart = out.pos;
      else if (dictStart < 0) fail('LZMA2: first chunk does not reset the dictionary');
      need(size);
      out.reserve(size);
      out.buf.set(input.subarray(ip, ip + size), out.pos);
      out.pos += size;
      ip += size;
      continue;
    }
    if (control < 0x80) fail(`LZMA2: invalid control byte 0x${control.toString(16)}`);
    need(4);
    const unpacked = (control & 0x1f) * 65536 + ((input[ip]! << 8) | input[ip + 1]!) + 1;
    const packed = ((input[ip + 2]! << 8) | input[ip + 3]!) + 1;
    ip += 4;
    const reset = (control >>> 5) & 3;
    if (reset === 3) dictStart = out.pos;
    else if (dictStart < 0) fail('LZMA2: first chunk does not reset the dictionary');
    if (reset >= 2) {
      need(1);
      lzma.setProps(input[ip++]!);
    } else if (!lzma.hasProps) {
      fail('LZMA2: chunk without properties');
    }
    if (reset >= 1) {
      lzma.resetState();
      needStateReset = false;
    } else if (needStateReset) {
      fail('LZMA2: chunk continues a state that was never set');
    }
    need(packed);
    lzma.decodeChunk(input, ip, packed, out, unpacked, dictStart);
    ip += packed;
  }
}

/** x86 BCJ decoding (xz filter 0x04): turns absolute call/jump targets back into relative ones. */
function bcjX86Decode(buf: Uint8Array, startOffset: number): void {
  const allowed = [true, true, true, false, true, false, false, false];
  const bitNumber = [0, 1, 2, 2, 3, 3, 3, 3];
  const isMsByte = (b: number): boolean => b === 0 || b === 0xff;
  let prevMask = 0;
  let prevPos = -5;
  for (let i = 0; i + 5 <= buf.length; ) {
    const op = buf[i]!;
    if (op !== 0xe8 && op !== 0xe9) {
      i++;
      continue;
    }
    const gap = i - prevPos;
    prevPos = i;
    if (gap > 5) prevMask = 0;
    else for (let k = 0; k < gap; k++) prevMask = ((prevMask & 0x77) << 1) & 0xff;
    const b4 = buf[i + 4]!;
    if (isMsByte(b4) && allowed[(prevMask >>> 1) & 7] && prevMask >>> 1 < 0x10) {
      let src = (buf[i + 1]! | (buf[i + 2]! << 8) | (buf[i + 3]! << 16) | (b4 << 24)) >>> 0;
      let dest: number;
      for (;;) {
        dest = (src - (startOffset + i + 5)) >>> 0;
        if (prevMask === 0) break;
        const n = bitNumber[prevMask >>> 1]!;
        if (!isMsByte((dest >>> (24 - n * 8)) & 0xff)) break;
        src = (dest ^ (2 ** (32 - n * 8) - 1)) >>> 0;
      }
      buf[i + 4] = (dest >>> 24) & 1 ? 0xff : 0x00;
      buf[i + 3] = (dest >>> 16) & 0xff;
      buf[i + 2] = (dest >>> 8) & 0xff;
      buf[i + 1] = dest & 0xff;
      i += 5;
      prevMask = 0;
    } else {
      i++;
      prevMask |= 1;
      if (isMsByte(b4)) prevMask |= 0x10;
    }
  }
}

// --- container ---

const STREAM_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const FOOTER_MAGIC = [0x59, 0x5a];
const FILTER_LZMA2 = 0x21n;
const FILTER_X86 = 0x04n;

class Cursor {
  constructor(
    readonly data: Uint8Array,
    public pos: number,
    readonly end: number,
  ) {}
  u8(): number {
    if (this.pos >= this.end) fail('truncated .xz data');
    return this.data[this.pos++]!;
  }
  u32(): number {
    if (this.end - this.pos < 4) fail('truncated .xz data');
    const d = this.data;
    const v = (d[this.pos]! | (d[this.pos + 1]! << 8) | (d[this.pos + 2]! << 16) | (d[this.pos + 3]! << 24)) >>> 0;
    this.pos += 4;
    return v;
  }
  /** Variable-length integer: up to 9 bytes, 7 bits each, no redundant trailing zero byte. */
  vli(): bigint {
    let v = 0n;
    for (let i = 0; i < 9; i++) {
      const b = this.u8();
      v |= BigInt(b & 0x7f) << BigInt(7 * i);
      if ((b & 0x80) === 0) {
        if (b === 0 && i > 0) fail('non-minimal variable-length integer');
        return v;
      }
    }
    return fail('variable-length integer is too long');
  }
  /** A VLI that must fit in the input or output sizes handled here. */
  size(what: string): number {
    const v = this.vli();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${what} ${v} is absurdly large`);
    return Number(v);
  }
}

function checkCrc32(data: Uint8Array, start: number, end: number, stored: number, what: string): void {
  if (crc32(data.subarray(start, end)) !== stored) fail(`${what}: CRC32 mismatch`);
}

interface BlockRecord {
  unpadded: number;
  uncompressed: number;
}

function decodeBlock(c: Cursor, checkType: number, limit: number, emit: (chunk: Uint8Array) => void): BlockRecord {
  const blockStart = c.pos;
  const headerSize = (c.data[c.pos]! + 1) * 4;
  if (headerSize > c.end - blockStart) fail('block header runs past the data');
  const h = new Cursor(c.data, blockStart + 1, blockStart + headerSize - 4);
  const flags = h.u8();
  if (flags & 0x3c) fail('block header has reserved flags set');
  const compressedSize = flags & 0x40 ? h.size('compressed size') : undefined;
  const uncompressedSize = flags & 0x80 ? h.size('uncompressed size') : undefined;
  const filters: { id: bigint; props: Uint8Array }[] = [];
  for (let i = 0; i <= (flags & 3); i++) {
    const id = h.vli();
    const propsSize = h.size('filter properties size');
    if (propsSize > h.end - h.pos) fail('filter properties run past the block header');
    filters.push({ id, props: c.data.subarray(h.pos, h.pos + propsSize) });
    h.pos += propsSize;
  }
  while (h.pos < h.end) if (h.u8() !== 0) fail('block header padding is not zero');
  c.pos = h.end;
  checkCrc32(c.data, blockStart, h.end, c.u32(), 'block header');

  const last = filters[filters.length - 1]!;
  if (last.id !== FILTER_LZMA2) fail(`unsupported .xz filter chain (last filter 0x${last.id.toString(16)}, only LZMA2 is supported)`);
  if (last.props.length !== 1 || last.props[0]! > 40) fail('bad LZMA2 filter properties');
  let bcjStart: number | undefined;
  for (const f of filters.slice(0, -1)) {
    if (f.id !== FILTER_X86) fail(`unsupported .xz filter 0x${f.id.toString(16)} (supported: x86 BCJ, LZMA2)`);
    if (f.props.length === 0) bcjStart = 0;
    else if (f.props.length === 4) bcjStart = new DataView(f.props.buffer, f.props.byteOffset, 4).getUint32(0, true);
    else fail('bad x86 BCJ filter properties');
  }
  if (filters.length > 2) fail('unsupported .xz filter chain (more than one BCJ filter)');

  if (uncompressedSize !== undefined && uncompressedSize > limit) fail(`block declares ${uncompressedSize} bytes, above the ${limit}-byte limit`);
  const out = new Output(uncompressedSize ?? 1 << 20, limit);
  const dataStart = c.pos;
  c.pos = decodeLzma2(c.data, dataStart, c.end, out);
  const compressed = c.pos - dataStart;
  if (compressedSize !== undefined && compressed !== compressedSize) fail('block compressed size does not match its header');
  if (uncompressedSize !== undefined && out.pos !== uncompressedSize) fail('block uncompressed size does not match its header');
  while ((c.pos - blockStart) % 4 !== 0) if (c.u8() !== 0) fail('block padding is not zero');
  const data = out.buf.subarray(0, out.pos);
  if (bcjStart !== undefined) bcjX86Decode(data, bcjStart);
  const check = CHECKS[checkType]!;
  if (check.size > c.end - c.pos) fail('block check runs past the data');
  if (check.compute) {
    const want = c.data.subarray(c.pos, c.pos + check.size);
    if (!Buffer.from(check.compute(data)).equals(want)) fail('block integrity check mismatch');
  }
  c.pos += check.size;
  emit(data);
  return { unpadded: headerSize + compressed + check.size, uncompressed: out.pos };
}

function readIndex(c: Cursor, blocks: readonly BlockRecord[]): void {
  const start = c.pos;
  if (c.u8() !== 0) fail('index indicator missing');
  const count = c.size('index record count');
  if (count !== blocks.length) fail(`index lists ${count} blocks, the stream has ${blocks.length}`);
  for (const block of blocks) {
    if (c.size('unpadded size') !== block.unpadded || c.size('uncompressed size') !== block.uncompressed) {
      fail('index record does not match its block');
    }
  }
  while ((c.pos - start) % 4 !== 0) if (c.u8() !== 0) fail('index padding is not zero');
  const end = c.pos;
  checkCrc32(c.data, start, end, c.u32(), 'index');
}

/**
 * Decodes every stream of a .xz file. `emit` gets each block's output (a view valid until it
 * returns); `maxOutput` bounds the total.
 */
export function decodeXz(input: Uint8Array, emit: (chunk: Uint8Array) => void, maxOutput = Number.MAX_SAFE_INTEGER): void {
  const c = new Cursor(input, 0, input.length);
  let total = 0;
  let streams = 0;
  while (c.pos < input.length) {
    // Stream padding: zero bytes in groups of four, between and after streams.
    if (streams > 0 && input[c.pos] === 0) {
      if (c.u32() !== 0) fail('stream padding is not zero');
      continue;
    }
    const headerStart = c.pos;
    for (const b of STREAM_MAGIC) if (c.u8() !== b) fail('bad .xz stream magic');
    const flagsStart = c.pos;
    if (c.u8() !== 0) fail('stream header has reserved flags set');
    const checkType = c.u8();
    checkCrc32(input, flagsStart, flagsStart + 2, c.u32(), 'stream header');
    if (!CHECKS[checkType]) fail(`unsupported .xz check type ${checkType}`);
    const blocks: BlockRecord[] = [];
    // A block header's size byte is never zero; zero marks the index.
    while (c.pos < c.end && input[c.pos] !== 0) {
      blocks.push(
        decodeBlock(c, checkType, maxOutput - total, (chunk) => {
          total += chunk.length;
          emit(chunk);
        }),
      );
    }
    const indexStart = c.pos;
    readIndex(c, blocks);
    const indexSize = c.pos - indexStart;
    const storedCrc = c.u32();
    const footerFields = c.pos;
    const backward = c.u32();
    const f0 = c.u8();
    const f1 = c.u8();
    checkCrc32(input, footerFields, footerFields + 6, storedCrc, 'stream footer');
    if ((backward + 1) * 4 !== indexSize) fail('stream footer backward size does not match the index');
    if (f0 !== input[headerStart + 6] || f1 !== input[headerStart + 7]) fail('stream footer flags differ from the header');
    for (const b of FOOTER_MAGIC) if (c.u8() !== b) fail('bad .xz stream footer magic');
    streams++;
  }
  if (streams === 0) fail('no .xz stream');
}
