import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { BzImageError, parseBzImageHeader, unpackBzImage } from '../../src/formats/bzimage.ts';
import { findSection, parseElf, sectionData } from '../../src/formats/elf.ts';
import { kernelOracle } from '../fixtures/kernel-oracle.ts';

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

let real: Promise<{ image: Buffer; vmlinux: Buffer; compression: string; protocolVersion: string }> | undefined;
function realKernel(): NonNullable<typeof real> {
  real ??= (async () => {
    const image = await readFile((await kernelOracle()).vmlinuzPath);
    return { image, ...unpackBzImage(image) };
  })();
  return real;
}

/** The real image with its payload replaced (payload_length patched, the code after it kept). */
function withPayload(image: Buffer, payload: Uint8Array): Buffer {
  const h = parseBzImageHeader(image);
  const out = Buffer.concat([image.subarray(0, h.payloadOffset), payload, image.subarray(h.payloadOffset + h.payloadLength)]);
  out.writeUInt32LE(payload.length, 0x24c);
  return out;
}

/** What the kernel build does for every format but gzip: the decompressed size appended as u32 LE. */
function withSize(stream: Uint8Array, size: number): Buffer {
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(size >>> 0);
  return Buffer.concat([stream, tail]);
}

const tool = (cmd: string, args: string[], input: Uint8Array): Buffer => execFileSync(cmd, args, { input, maxBuffer: 1 << 28 });

test('the real Debian cloud kernel unpacks to the same vmlinux as the lz4 tool, an ELF with .BTF', async () => {
  const { image, vmlinux, compression, protocolVersion } = await realKernel();
  assert.equal(compression, 'lz4');
  assert.equal(protocolVersion, '2.15');
  const h = parseBzImageHeader(image);
  // Oracle: the lz4 CLI on the payload without the appended size field.
  const payload = image.subarray(h.payloadOffset, h.payloadOffset + h.payloadLength);
  const reference = tool('lz4', ['-dc'], payload.subarray(0, payload.length - 4));
  assert.equal(vmlinux.length, reference.length);
  assert.equal(sha256(vmlinux), sha256(reference));
  const elf = parseElf(vmlinux);
  const btf = findSection(elf, '.BTF');
  assert.ok(btf, 'vmlinux has a .BTF section');
  assert.ok(btf.size > 1_000_000);
  assert.equal(btf.addr >> 32n, 0xffffffffn, '.BTF has a kernel link address');
  assert.equal(Buffer.from(sectionData(elf, btf).subarray(0, 2)).readUInt16LE(0), 0xeb9f, 'BTF magic');
});

test('synthetic bzImages with gzip, xz (x86 BCJ + LZMA2, as the kernel builds it), zstd and lz4 -l payloads unpack', async () => {
  const { image, vmlinux } = await realKernel();
  // A prefix of the real vmlinux keeps the pure-JS xz decoder within the test budget.
  const body = vmlinux.subarray(0, 4 << 20);
  const cases: [string, Buffer][] = [
    ['gzip', tool('gzip', ['-9', '-n', '-c'], body)],
    ['xz', withSize(tool('xz', ['--check=crc32', '--x86', '--lzma2=preset=3,dict=32MiB', '-T1', '-c'], body), body.length)],
    ['zstd', withSize(tool('zstd', ['-q', '-c'], body), body.length)],
    ['lz4', withSize(tool('lz4', ['-l', '-9', '-c'], body), body.length)],
  ];
  for (const [name, payload] of cases) {
    const out = unpackBzImage(withPayload(image, payload));
    assert.equal(out.compression, name);
    assert.equal(sha256(out.vmlinux), sha256(body), `${name} output matches`);
  }
  // Multi-block xz (what a multi-threaded xz writes) and a concatenated gzip member.
  const blocks = withSize(tool('xz', ['--check=crc64', '--x86', '--lzma2=preset=1', '--block-size=1MiB', '-c'], body), body.length);
  assert.equal(sha256(unpackBzImage(withPayload(image, blocks)).vmlinux), sha256(body));
});

test('hostile images give BzImageError quickly', async () => {
  const { image } = await realKernel();
  const rejects = (bytes: Uint8Array, pattern: RegExp, opts?: { maxOutputBytes?: number }): void => {
    assert.throws(() => unpackBzImage(bytes, opts), (e: unknown) => e instanceof BzImageError && pattern.test(e.message));
  };
  rejects(image.subarray(0, 100), /too short/);
  const badMagic = Buffer.from(image.subarray(0, 4096));
  badMagic.write('XXXX', 0x202, 'latin1');
  rejects(badMagic, /HdrS/);
  const oldProto = Buffer.from(image);
  oldProto.writeUInt16LE(0x0206, 0x206);
  rejects(oldProto, /2\.06/);
  const pastEof = Buffer.from(image);
  pastEof.writeUInt32LE(image.length, 0x24c);
  rejects(pastEof, /outside/);
  const offPastEof = Buffer.from(image);
  offPastEof.writeUInt32LE(0xfffffff0, 0x248);
  rejects(offPastEof, /outside/);
  rejects(image.subarray(0, image.length - 200_000), /outside/);
  // Output cap: the real image is refused under a smaller cap before anything is decompressed.
  rejects(image, /above the 1048576-byte limit/, { maxOutputBytes: 1 << 20 });
  // Unsupported formats are named.
  rejects(withPayload(image, withSize(tool('bzip2', ['-c'], Buffer.alloc(1000)), 1000)), /unsupported compression: bzip2/);
  rejects(withPayload(image, Buffer.from([0x5d, 0, 0, 0x80, 0, 1, 2, 3, 4, 5, 6, 7])), /unsupported compression: lzma/);
  rejects(withPayload(image, Buffer.from('garbage garbage garbage')), /unknown payload compression/);

  // Bombs: 16 MiB of zeros whose size field claims 1 MiB stop at 1 MiB of output.
  const zeros = Buffer.alloc(16 << 20);
  const claim = 1 << 20;
  const gz = tool('gzip', ['-9', '-c'], zeros);
  gz.writeUInt32LE(claim, gz.length - 4);
  rejects(withPayload(image, gz), /exceeds the 1048576-byte limit/);
  rejects(withPayload(image, withSize(tool('zstd', ['-q', '-c'], zeros), claim)), /exceeds the 1048576-byte limit/);
  rejects(withPayload(image, withSize(tool('xz', ['-c', '--check=crc32'], zeros), claim)), /exceeds the 1048576-byte limit/);
  rejects(withPayload(image, withSize(tool('lz4', ['-l', '-c'], zeros), claim)), /exceeds the 1048576-byte limit/);

  // Corrupt streams: a flipped LZ4 block size, and a stream cut short.
  const h = parseBzImageHeader(image);
  const flipped = Buffer.from(image);
  flipped.writeUInt32LE(0x7fffffff, h.payloadOffset + 4);
  rejects(flipped, /impossible size/);
  const payload = image.subarray(h.payloadOffset, h.payloadOffset + h.payloadLength);
  rejects(withPayload(image, Buffer.concat([payload.subarray(0, 5_000_000), payload.subarray(payload.length - 4)])), /runs past the end/);
  const smallXz = withSize(tool('xz', ['--check=crc32', '--x86', '--lzma2', '-c'], Buffer.from('hello kernel '.repeat(1000))), 13000);
  const xzCorrupt = Buffer.from(smallXz);
  xzCorrupt[60] = xzCorrupt[60]! ^ 0x55;
  rejects(withPayload(image, xzCorrupt), /xz payload: /);
  const zstdCorrupt = withSize(tool('zstd', ['-q', '-c'], Buffer.from('hello kernel '.repeat(1000))), 13000);
  zstdCorrupt.writeUInt32LE(0x12345678, 0);
  rejects(withPayload(image, zstdCorrupt), /unknown payload compression|zstd/);
});
