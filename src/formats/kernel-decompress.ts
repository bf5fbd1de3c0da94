/**
 * Decompressors for the payload formats of an x86 bzImage. Every decoder writes into a
 * ByteSink that refuses to grow past a cap, so a decompression bomb stops at the cap instead of
 * exhausting memory, and every loop advances through a bounded input.
 */
import { gunzipSync } from 'node:zlib';
import { Decompress as ZstdStream } from 'fzstd';
import { decodeXz } from './xz.ts';

export class KernelDecompressError extends Error {
  override name = 'KernelDecompressError';
}

/** Collects output chunks and throws once their total would pass `cap`. */
export class ByteSink {
  private readonly chunks: Uint8Array[] = [];
  total = 0;
  /**
   * @param cap the most output accepted
   * @param allocLimit the most a decoder may allocate for its own state (a zstd window, say),
   *   which can legitimately exceed the output
   */
  constructor(
    readonly cap: number,
    readonly allocLimit: number = cap,
  ) {}
  push(bytes: Uint8Array): void {
    if (bytes.length > this.cap - this.total) {
      throw new KernelDecompressError(`decompressed output exceeds the ${this.cap}-byte limit`);
    }
    // Decoders reuse their scratch buffers, so keep a copy.
    this.chunks.push(Uint8Array.prototype.slice.call(bytes));
    this.total += bytes.length;
  }
  finish(): Buffer {
    return Buffer.concat(this.chunks, this.total);
  }
}

// --- LZ4 legacy frame (lz4 -l): magic, then [u32 LE compressed size][independent LZ4 block]... ---

export const LZ4_LEGACY_MAGIC = 0x184c2102;
/** Legacy blocks decompress to at most 8 MiB each (the lz4 tool's and the kernel's chunk size). */
const LZ4_LEGACY_BLOCK = 8 << 20;
/** LZ4_compressBound of a full legacy block. */
const LZ4_LEGACY_MAX_COMPRESSED = LZ4_LEGACY_BLOCK + Math.floor(LZ4_LEGACY_BLOCK / 255) + 16;

/** Decodes one raw LZ4 block src[start, end) into dst; returns the bytes written. */
export function decodeLz4Block(src: Uint8Array, start: number, end: number, dst: Uint8Array): number {
  let ip = start;
  let op = 0;
  const bad = (why: string): never => {
    throw new KernelDecompressError(`corrupt LZ4 block at input offset ${start}: ${why}`);
  };
  for (;;) {
    if (ip >= end) bad('truncated sequence');
    const token = src[ip++]!;
    let literals = token >>> 4;
    if (literals === 15) {
      let b: number;
      do {
        if (ip >= end) bad('truncated literal length');
        b = src[ip++]!;
        literals += b;
      } while (b === 255);
    }
    if (literals > end - ip) bad('literals run past the block');
    if (literals > dst.length - op) bad('output larger than a legacy block');
    if (literals < 32) {
      for (const stop = ip + literals; ip < stop; ) dst[op++] = src[ip++]!;
    } else {
      dst.set(src.subarray(ip, ip + literals), op);
      ip += literals;
      op += literals;
    }
    // The last sequence of a block carries literals only.
    if (ip === end) return op;
    if (end - ip < 2) bad('truncated match offset');
    const offset = src[ip]! | (src[ip + 1]! << 8);
    ip += 2;
    if (offset === 0 || offset > op) bad(`match offset ${offset} points before the block start`);
    let length = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (ip >= end) bad('truncated match length');
        b = src[ip++]!;
        length += b;
      } while (b === 255);
    }
    if (length > dst.length - op) bad('output larger than a legacy block');
    let from = op - offset;
    if (offset >= length && length >= 32) {
      dst.copyWithin(op, from, from + length);
      op += length;
    } else {
      // Overlapping (or short) matches repeat bytes written by this very copy.
      for (const stop = op + length; op < stop; ) dst[op++] = dst[from++]!;
    }
  }
}

export function decodeLz4Legacy(input: Uint8Array, sink: ByteSink): void {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  if (input.length < 4 || view.getUint32(0, true) !== LZ4_LEGACY_MAGIC) throw new KernelDecompressError('not an LZ4 legacy frame');
  const scratch = new Uint8Array(LZ4_LEGACY_BLOCK);
  let pos = 4;
  while (pos < input.length) {
    if (input.length - pos < 4) throw new KernelDecompressError(`LZ4 legacy frame: ${input.length - pos} stray bytes at offset ${pos}`);
    const size = view.getUint32(pos, true);
    pos += 4;
    // Legacy frames may be concatenated; a repeated magic starts the next one.
    if (size === LZ4_LEGACY_MAGIC) continue;
    if (size === 0 || size > LZ4_LEGACY_MAX_COMPRESSED) throw new KernelDecompressError(`LZ4 legacy block at offset ${pos - 4} has impossible size ${size}`);
    if (size > input.length - pos) throw new KernelDecompressError(`LZ4 legacy block at offset ${pos - 4} (${size} bytes) runs past the end of the payload`);
    const n = decodeLz4Block(input, pos, pos + size, scratch);
    sink.push(scratch.subarray(0, n));
    pos += size;
  }
}

// --- gzip: node:zlib, with its own output limit ---

export function decodeGzip(input: Uint8Array, sink: ByteSink): void {
  let out: Buffer;
  try {
    out = gunzipSync(input, { maxOutputLength: Math.max(1, sink.cap - sink.total) });
  } catch (err) {
    if (err instanceof RangeError) throw new KernelDecompressError(`decompressed output exceeds the ${sink.cap}-byte limit`);
    throw new KernelDecompressError(`corrupt gzip payload: ${(err as Error).message}`);
  }
  sink.push(out);
}

// --- zstd: fzstd's streaming decoder; frames are walked first so no header can ask for a huge window ---

const ZSTD_MAGIC = 0xfd2fb528;
const ZSTD_SKIPPABLE_MASK = 0xfffffff0;
const ZSTD_SKIPPABLE_MAGIC = 0x184d2a50;

/** Checks every frame's window and content size against the cap before anything is allocated. */
function checkZstdFrames(input: Uint8Array, cap: number, windowLimit: number): void {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const bad = (why: string): never => {
    throw new KernelDecompressError(`corrupt zstd payload: ${why}`);
  };
  let pos = 0;
  while (pos < input.length) {
    if (input.length - pos < 8) bad(`truncated frame header at offset ${pos}`);
    const magic = view.getUint32(pos, true);
    if ((magic & ZSTD_SKIPPABLE_MASK) >>> 0 === ZSTD_SKIPPABLE_MAGIC) {
      const len = view.getUint32(pos + 4, true);
      if (len > input.length - pos - 8) bad(`skippable frame at offset ${pos} runs past the end`);
      pos += 8 + len;
      continue;
    }
    if (magic !== ZSTD_MAGIC) bad(`bad frame magic 0x${magic.toString(16)} at offset ${pos}`);
    const fhd = input[pos + 4]!;
    const singleSegment = (fhd >> 5) & 1;
    const fcsFlag = fhd >> 6;
    const dictBytes = [0, 1, 2, 4][fhd & 3]!;
    const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
    let p = pos + 5;
    let window = 0;
    if (!singleSegment) {
      const wd = input[p++]!;
      const base = 2 ** (10 + (wd >> 3));
      window = base + (base / 8) * (wd & 7);
    }
    p += dictBytes;
    if (p + fcsBytes > input.length) bad(`truncated frame header at offset ${pos}`);
    let contentSize = 0;
    for (let i = 0; i < fcsBytes; i++) contentSize += input[p + i]! * 2 ** (8 * i);
    if (fcsBytes === 2) contentSize += 256;
    p += fcsBytes;
    if (singleSegment) window = contentSize;
    if (window > windowLimit) bad(`frame at offset ${pos} asks for a ${window}-byte window, above the ${windowLimit}-byte limit`);
    if (contentSize > cap) throw new KernelDecompressError(`zstd frame at offset ${pos} declares ${contentSize} bytes, above the ${cap}-byte output limit`);
    // Blocks: a 3-byte header each; RLE blocks store one byte.
    for (;;) {
      if (input.length - p < 3) bad(`truncated block header at offset ${p}`);
      const hdr = input[p]! | (input[p + 1]! << 8) | (input[p + 2]! << 16);
      p += 3;
      const type = (hdr >> 1) & 3;
      const size = hdr >>> 3;
      if (type === 3) bad(`reserved block type at offset ${p - 3}`);
      const stored = type === 1 ? 1 : size;
      if (stored > input.length - p) bad(`block at offset ${p - 3} runs past the end`);
      p += stored;
      if (hdr & 1) break;
    }
    if ((fhd >> 2) & 1) p += 4;
    if (p > input.length) bad('truncated content checksum');
    pos = p;
  }
}

export function decodeZstd(input: Uint8Array, sink: ByteSink): void {
  checkZstdFrames(input, sink.cap, sink.allocLimit);
  const stream = new ZstdStream((chunk) => sink.push(chunk));
  try {
    stream.push(input, true);
  } catch (err) {
    if (err instanceof KernelDecompressError) throw err;
    throw new KernelDecompressError(`corrupt zstd payload: ${(err as Error).message}`);
  }
}

export function decodeXzPayload(input: Uint8Array, sink: ByteSink): void {
  decodeXz(input, (chunk) => sink.push(chunk), sink.cap - sink.total);
}
