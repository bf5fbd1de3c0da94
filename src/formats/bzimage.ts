/**
 * x86 bzImage unpacking (Documentation/arch/x86/boot.rst): the real-mode header names the
 * compressed payload (protocol >= 2.08: payload_offset/payload_length), whose magic gives the
 * compression. The kernel build appends the decompressed size as a little-endian u32 to every
 * payload (gzip's own ISIZE trailer is the same field), so the expected size is known before
 * decompressing and checked after it.
 */
import {
  ByteSink,
  decodeGzip,
  decodeLz4Legacy,
  decodeXzPayload,
  decodeZstd,
  KernelDecompressError,
} from './kernel-decompress.ts';
import { XzError } from './xz.ts';

export class BzImageError extends Error {
  override name = 'BzImageError';
}

export const DEFAULT_MAX_VMLINUX_BYTES = 512 * 1024 * 1024;

const SETUP_SECTS = 0x1f1;
const BOOT_FLAG = 0x1fe;
const HEADER_MAGIC = 0x202;
const VERSION = 0x206;
const PAYLOAD_OFFSET = 0x248;
const PAYLOAD_LENGTH = 0x24c;
/** The header fields read here end with payload_length. */
const MIN_HEADER_BYTES = PAYLOAD_LENGTH + 4;
const HDRS = 0x53726448; // "HdrS" little-endian
const MIN_PROTOCOL = 0x0208;

interface Format {
  name: string;
  magic: readonly number[];
  /** Decoder for the stream, or undefined when the format is recognised but not supported. */
  decode?: (stream: Uint8Array, sink: ByteSink) => void;
  /** gzip's trailer is part of its own stream; every other format had the size appended. */
  sizeInStream?: boolean;
}

const FORMATS: readonly Format[] = [
  { name: 'gzip', magic: [0x1f, 0x8b], decode: decodeGzip, sizeInStream: true },
  { name: 'lz4', magic: [0x02, 0x21, 0x4c, 0x18], decode: decodeLz4Legacy },
  { name: 'zstd', magic: [0x28, 0xb5, 0x2f, 0xfd], decode: decodeZstd },
  { name: 'xz', magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], decode: decodeXzPayload },
  { name: 'bzip2', magic: [0x42, 0x5a, 0x68] },
  { name: 'lzma', magic: [0x5d, 0x00, 0x00] },
  { name: 'lzo', magic: [0x89, 0x4c, 0x5a, 0x4f] },
];

export interface BzImageHeader {
  protocolVersion: string;
  setupSects: number;
  /** Absolute file offset and length of the compressed payload. */
  payloadOffset: number;
  payloadLength: number;
}

export function parseBzImageHeader(image: Uint8Array): BzImageHeader {
  if (image.length < MIN_HEADER_BYTES) throw new BzImageError(`image is ${image.length} bytes, too short for a bzImage header`);
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (view.getUint32(HEADER_MAGIC, true) !== HDRS) throw new BzImageError('bad magic: no "HdrS" at 0x202, not a bzImage');
  if (view.getUint16(BOOT_FLAG, true) !== 0xaa55) throw new BzImageError('bad boot flag at 0x1fe (expected 0xAA55)');
  const version = view.getUint16(VERSION, true);
  const protocolVersion = `${version >> 8}.${(version & 0xff).toString().padStart(2, '0')}`;
  if (version < MIN_PROTOCOL) throw new BzImageError(`boot protocol ${protocolVersion} predates 2.08 and does not locate its payload`);
  // A zero setup_sects means 4, for compatibility with ancient loaders.
  const setupSects = view.getUint8(SETUP_SECTS) || 4;
  const protectedMode = (setupSects + 1) * 512;
  const payloadOffset = protectedMode + view.getUint32(PAYLOAD_OFFSET, true);
  const payloadLength = view.getUint32(PAYLOAD_LENGTH, true);
  if (payloadOffset > image.length || payloadLength > image.length - payloadOffset) {
    throw new BzImageError(`payload (offset ${payloadOffset}, ${payloadLength} bytes) lies outside the ${image.length}-byte image`);
  }
  if (payloadLength < 8) throw new BzImageError(`payload of ${payloadLength} bytes is too short`);
  return { protocolVersion, setupSects, payloadOffset, payloadLength };
}

function detect(payload: Uint8Array): Format {
  const format = FORMATS.find((f) => f.magic.every((b, i) => payload[i] === b));
  if (!format) {
    const head = Buffer.from(payload.subarray(0, 6)).toString('hex');
    throw new BzImageError(`unknown payload compression (first bytes ${head})`);
  }
  return format;
}

export interface UnpackedKernel {
  compression: string;
  vmlinux: Buffer;
  protocolVersion: string;
}

export function unpackBzImage(image: Uint8Array, opts: { maxOutputBytes?: number } = {}): UnpackedKernel {
  const cap = opts.maxOutputBytes ?? DEFAULT_MAX_VMLINUX_BYTES;
  if (!Number.isSafeInteger(cap) || cap <= 0) throw new BzImageError(`maxOutputBytes ${cap} is not a positive integer`);
  const header = parseBzImageHeader(image);
  const payload = image.subarray(header.payloadOffset, header.payloadOffset + header.payloadLength);
  const format = detect(payload);
  if (!format.decode) throw new BzImageError(`unsupported compression: ${format.name} (supported: gzip, lz4, xz, zstd)`);
  const expected = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(payload.length - 4, true);
  if (expected > cap) throw new BzImageError(`payload claims ${expected} decompressed bytes, above the ${cap}-byte limit`);
  const stream = format.sizeInStream ? payload : payload.subarray(0, payload.length - 4);
  // The size field is mod 2^32; a cap at or below 4 GiB makes it exact.
  const sink = new ByteSink(cap > 0xffffffff ? cap : expected, cap);
  try {
    format.decode(stream, sink);
  } catch (err) {
    if (err instanceof KernelDecompressError || err instanceof XzError) {
      throw new BzImageError(`${format.name} payload: ${err.message}`);
    }
    throw err;
  }
  if (sink.total % 2 ** 32 !== expected) {
    throw new BzImageError(`${format.name} payload decompressed to ${sink.total} bytes, but the image says ${expected}`);
  }
  return { compression: format.name, vmlinux: sink.finish(), protocolVersion: header.protocolVersion };
}
