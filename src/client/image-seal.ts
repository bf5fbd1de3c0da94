// Turns a raw disk image into a LUKS2 image that cryptsetup opens: aes-xts-plain64 with a fresh random 512-bit
// volume key, 4096-byte sectors, one keyslot (argon2id or pbkdf2-sha256) for the tenant's passphrase.
// It streams: the input is read, encrypted and written in 4 MiB chunks, with the next read and the previous
// write in flight while a chunk is encrypted. The image appears under its name only once complete and synced.
import { randomBytes, randomUUID } from 'node:crypto';
import { link, open, rename, unlink, access } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { XtsCipher } from '../crypto/xts.ts';
import { checkKdf, volumeKeyDigest, type KeyslotKdf } from '../formats/luks2/kdf.ts';
import { AF_STRIPES, LUKS2_LAYOUT, buildLuks2HeaderRegion } from '../formats/luks2/writer.ts';
import { sealKeyslot } from './luks-keyslot.ts';

export const SEAL_SECTOR_SIZE = 4096;
const VOLUME_KEY_BYTES = 64;
const CHUNK_BYTES = 4 * 1024 * 1024;
const SALT_BYTES = 32;
const DIGEST = { hash: 'sha256', iterations: 100_000, bytes: 32 } as const;
const MAX_PASSPHRASE_BYTES = 8 * 1024 * 1024;

/** KDF cost. `iterations` is PBKDF2's iteration count or Argon2's time cost. */
export interface KdfCost {
  iterations?: number;
  memoryKiB?: number;
  parallelism?: number;
}

/** cryptsetup's floors for luksFormat; a weaker keyslot is refused rather than written. */
export const MIN_KDF_COST = { pbkdf2Iterations: 1000, argon2Time: 4, argon2MemoryKiB: 32 } as const;

export const DEFAULT_KDF_COST = {
  pbkdf2: { iterations: 1_000_000 },
  argon2id: { iterations: 4, memoryKiB: 256 * 1024, parallelism: 4 },
} as const;

export interface SealImageOptions {
  /** Raw disk image (regular file); its size is rounded up to whole 4096-byte sectors with zeros. */
  input: string;
  output: string;
  passphrase: Buffer;
  pbkdf?: 'pbkdf2' | 'argon2id';
  kdfCost?: KdfCost;
  /** Replace an existing output file; by default an existing file is an error. */
  overwrite?: boolean;
  onProgress?(done: number, total: number): void;
  /** Sees every chunk of ciphertext in order, e.g. to build an integrity tree in the same pass. The buffer is
   *  reused for later chunks: copy what must outlive the call. */
  onCiphertext?(firstSector: number, ciphertext: Buffer): void | Promise<void>;
  /** Called once the volume key exists and before any ciphertext, e.g. to set up that integrity tree. */
  onStart?(info: { volumeKey: Buffer; sectors: number }): void | Promise<void>;
}

export interface SealedImage {
  volumeKey: Buffer;
  payloadOffset: number;
  sectorSize: typeof SEAL_SECTOR_SIZE;
  sectors: number;
  uuid: string;
}

export async function sealImage(opts: SealImageOptions): Promise<SealedImage> {
  const pass = opts.passphrase;
  if (pass.length === 0 || pass.length > MAX_PASSPHRASE_BYTES) throw new Error(`passphrase must be 1..${MAX_PASSPHRASE_BYTES} bytes`);
  const kdf = keyslotKdf(opts.pbkdf ?? 'argon2id', opts.kdfCost ?? {});
  if (!opts.overwrite && (await exists(opts.output))) throw new Error(`${opts.output} already exists`);

  const input = await open(opts.input, 'r');
  let tmp: string | null = null;
  let output: FileHandle | null = null;
  let volumeKey: Buffer | null = null;
  try {
    const st = await input.stat();
    if (!st.isFile()) throw new Error(`${opts.input} is not a regular file`);
    if (st.size === 0) throw new Error(`${opts.input} is empty`);
    const total = st.size;
    const sectors = Math.ceil(total / SEAL_SECTOR_SIZE);

    volumeKey = freshVolumeKey();
    await opts.onStart?.({ volumeKey, sectors });
    const digestSalt = randomBytes(SALT_BYTES);
    const uuid = randomUUID();
    const region = buildLuks2HeaderRegion({
      uuid,
      headerSalts: [randomBytes(64), randomBytes(64)],
      volumeKeyBytes: VOLUME_KEY_BYTES,
      sectorSize: SEAL_SECTOR_SIZE,
      keyslot: {
        kdf,
        afHash: 'sha256',
        keySize: VOLUME_KEY_BYTES,
        material: await sealKeyslot(volumeKey, pass, { kdf, areaKeyBytes: VOLUME_KEY_BYTES, stripes: AF_STRIPES, afHash: 'sha256' }),
      },
      digest: {
        hash: DIGEST.hash,
        iterations: DIGEST.iterations,
        salt: digestSalt,
        digest: await volumeKeyDigest(volumeKey, DIGEST.hash, digestSalt, DIGEST.iterations, DIGEST.bytes),
      },
    });

    tmp = join(dirname(opts.output), `.${basename(opts.output)}.${randomBytes(6).toString('hex')}.partial`);
    output = await open(tmp, 'wx', 0o600);
    await writeAll(output, region, 0);
    await streamPayload(input, output, total, new XtsCipher(volumeKey), opts);
    await output.sync();
    await output.close();
    output = null;
    if (opts.overwrite) {
      await rename(tmp, opts.output);
    } else {
      // link() fails if the name was taken meanwhile, so an existing file is never clobbered.
      await link(tmp, opts.output).catch((e: NodeJS.ErrnoException) => {
        throw e.code === 'EEXIST' ? new Error(`${opts.output} already exists`) : e;
      });
      await unlink(tmp);
    }
    tmp = null;
    await syncDir(dirname(opts.output));
    const result = { volumeKey, payloadOffset: LUKS2_LAYOUT.dataOffset, sectorSize: SEAL_SECTOR_SIZE, sectors, uuid } as const;
    volumeKey = null;
    return result;
  } finally {
    volumeKey?.fill(0); // only set here if sealing failed
    await input.close();
    if (output) await output.close().catch(() => undefined);
    if (tmp) await unlink(tmp).catch(() => undefined);
  }
}

function keyslotKdf(type: 'pbkdf2' | 'argon2id', cost: KdfCost): KeyslotKdf {
  const salt = randomBytes(SALT_BYTES);
  let kdf: KeyslotKdf;
  if (type === 'pbkdf2') {
    kdf = { type, hash: 'sha256', iterations: cost.iterations ?? DEFAULT_KDF_COST.pbkdf2.iterations, salt };
  } else if (type === 'argon2id') {
    const d = DEFAULT_KDF_COST.argon2id;
    kdf = { type, time: cost.iterations ?? d.iterations, memoryKiB: cost.memoryKiB ?? d.memoryKiB, parallelism: cost.parallelism ?? d.parallelism, salt };
  } else {
    throw new Error(`unknown pbkdf "${String(type)}" (pbkdf2 or argon2id)`);
  }
  checkKdf(kdf);
  const weak =
    kdf.type === 'pbkdf2'
      ? kdf.iterations < MIN_KDF_COST.pbkdf2Iterations
      : kdf.time < MIN_KDF_COST.argon2Time || kdf.memoryKiB < MIN_KDF_COST.argon2MemoryKiB;
  if (weak) throw new Error(`KDF cost below cryptsetup's minimum (${JSON.stringify(MIN_KDF_COST)})`);
  return kdf;
}

function freshVolumeKey(): Buffer {
  for (;;) {
    const vk = randomBytes(VOLUME_KEY_BYTES);
    // XTS needs distinct halves; equal ones have probability 2^-256, but the check costs nothing.
    if (!vk.subarray(0, 32).equals(vk.subarray(32))) return vk;
  }
}

/** Reads, encrypts and writes the payload with three rotating buffers: read i+1, encrypt i, write i-1. */
async function streamPayload(input: FileHandle, output: FileHandle, total: number, xts: XtsCipher, opts: SealImageOptions): Promise<void> {
  const chunks = Math.ceil(total / CHUNK_BYTES);
  const bufs = [Buffer.alloc(CHUNK_BYTES), Buffer.alloc(CHUNK_BYTES), Buffer.alloc(CHUNK_BYTES)];
  const writes: Promise<void>[] = [Promise.resolve(), Promise.resolve(), Promise.resolve()];
  let failure: unknown = null;
  let done = 0;
  const readChunk = (i: number): Promise<Buffer> => {
    const p = fillChunk(input, bufs[i % 3]!, i * CHUNK_BYTES, Math.min(CHUNK_BYTES, total - i * CHUNK_BYTES));
    p.catch(() => undefined); // awaited below; this only keeps a failure from counting as unhandled meanwhile
    return p;
  };
  opts.onProgress?.(0, total);
  let next = readChunk(0);
  try {
    for (let i = 0; i < chunks; i++) {
      const data = await next;
      if (i + 1 < chunks) {
        await writes[(i + 1) % 3];
        if (failure) throw failure;
        next = readChunk(i + 1);
      }
      const firstSector = (i * CHUNK_BYTES) / SEAL_SECTOR_SIZE;
      xts.encryptSectors(firstSector, SEAL_SECTOR_SIZE, data, data);
      await opts.onCiphertext?.(firstSector, data);
      writes[i % 3] = writeAll(output, data, LUKS2_LAYOUT.dataOffset + i * CHUNK_BYTES).then(
        () => {
          done = Math.min(total, done + data.length);
          opts.onProgress?.(done, total);
        },
        (e: unknown) => {
          failure ??= e;
        },
      );
    }
    await Promise.all(writes);
    if (failure) throw failure;
  } finally {
    await Promise.all([...writes, next.catch(() => undefined)]);
    for (const b of bufs) b.fill(0);
  }
}

/** Reads `length` input bytes at `offset` into buf, zero-pads to a whole sector, returns that view. */
async function fillChunk(input: FileHandle, buf: Buffer, offset: number, length: number): Promise<Buffer> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await input.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) throw new Error(`input shrank while sealing (ended at ${offset + got})`);
    got += bytesRead;
  }
  const padded = Math.ceil(length / SEAL_SECTOR_SIZE) * SEAL_SECTOR_SIZE;
  buf.fill(0, length, padded);
  return buf.subarray(0, padded);
}

async function writeAll(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
