/**
 * Shared by the sealed-disk tests (and the crash child): sealed disks made with the real sealing code, an
 * independent decryption of their payload, deterministic sector contents, and tool runners.
 */
import { createDecipheriv, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sealImage } from '../../src/client/image-seal.ts';
import { buildSidecarForImage } from '../../src/client/integrity-sidecar-writer.ts';

export const SECTOR = 4096;
export const MiB = 1024 * 1024;

export interface SealedDisk {
  dir: string;
  /** The plaintext the image was sealed from (a whole number of sectors, MBR signature at 510). */
  plain: Buffer;
  image: string;
  sidecar: string;
  payloadOffset: number;
  volumeKey: Buffer;
  /** The root computed at sealing time (what a launch bundle carries). */
  root: Buffer;
  sectors: number;
  db: string;
}

/** A fresh directory removed after the test, whatever happens. */
export async function tempDir(t: { after(fn: () => Promise<void>): void }, prefix = 'vmseal-sealed-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Seals `plain` (or random bytes) with sealImage and builds its sidecar, in `dir`. */
export async function makeSealedDisk(dir: string, bytes: number, plain?: Buffer): Promise<SealedDisk> {
  const data = plain ?? randomBytes(bytes);
  if (!plain) {
    data[510] = 0x55;
    data[511] = 0xaa;
  }
  const raw = join(dir, 'raw');
  await writeFile(raw, data);
  const image = join(dir, 'disk.img');
  const sealed = await sealImage({ input: raw, output: image, passphrase: Buffer.from('sealed-disk test'), pbkdf: 'pbkdf2', kdfCost: { iterations: 1000 } });
  await rm(raw);
  const side = await buildSidecarForImage(image, sealed.volumeKey, sealed.payloadOffset);
  return {
    dir,
    plain: Buffer.concat([data, Buffer.alloc(sealed.sectors * SECTOR - data.length)]),
    image,
    sidecar: side.sidecarPath,
    payloadOffset: sealed.payloadOffset,
    volumeKey: sealed.volumeKey,
    root: side.root,
    sectors: sealed.sectors,
    db: join(dir, 'monitor.db'),
  };
}

/**
 * Decrypts the payload with Node's own aes-256-xts, one cipher per sector, IV = the plain64 tweak (sector * 8,
 * 64-bit LE, zero-padded): independent of XtsCipher, the code under test.
 */
export async function decryptIndependently(d: SealedDisk): Promise<Buffer> {
  const bytes = await readFile(d.image);
  const out = Buffer.alloc(d.sectors * SECTOR);
  for (let s = 0; s < d.sectors; s++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(s * 8));
    const dec = createDecipheriv('aes-256-xts', d.volumeKey, iv);
    const at = d.payloadOffset + s * SECTOR;
    Buffer.concat([dec.update(bytes.subarray(at, at + SECTOR)), dec.final()]).copy(out, s * SECTOR);
  }
  return out;
}

/** A recognisable sector: `tag` and the sector number repeated, so a moved or stale sector shows. */
export function pattern(tag: number, sector: number): Buffer {
  const b = Buffer.alloc(SECTOR);
  for (let at = 0; at < SECTOR; at += 8) {
    b.writeUInt32LE(tag, at);
    b.writeUInt32LE(sector, at + 4);
  }
  return b;
}

export interface ToolRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool with a hard timeout; never throws on a non-zero exit (the caller asserts on it). */
export function runTool(cmd: string, args: string[], timeout = 120_000): Promise<ToolRun> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, killSignal: 'SIGKILL', maxBuffer: 64 * MiB }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

/** qemu-io against an NBD export on a unix socket, one -c per command. */
export function qemuIo(socket: string, exportName: string, commands: string[]): Promise<ToolRun> {
  return runTool('qemu-io', ['--image-opts', `driver=nbd,server.type=unix,server.path=${socket},export=${exportName}`, ...commands.flatMap((c) => ['-c', c])]);
}
