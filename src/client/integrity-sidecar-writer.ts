// Writes an image's integrity sidecar (docs/sealed-disk.md) from its ciphertext, streaming: leaves are hashed
// and written a batch of nodes at a time as the ciphertext goes by, and only the levels above the leaves (1/128
// of their size) are kept in memory. The file appears under its name only once complete and synced.
//
// Two ways in: feed the ciphertext while sealing (IntegritySidecarWriter.add, in the order the sectors are
// encrypted), or read an existing image's payload back (buildSidecarForImage, e.g. for an imported image).
import { randomBytes } from 'node:crypto';
import { link, open, rename, unlink, access, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { TreeHasher, hashNode, paddedLevelBytes, TREE_ARITY, TREE_HASH_BYTES, TREE_NODE_BYTES } from '../crypto/integrity-tree.ts';
import { deriveVmKey } from '../crypto/keys.ts';
import { SIDECAR_SECTOR_BYTES, checkSectorCount, encodeSidecarHeader, sidecarGeometry, type SidecarGeometry } from '../formats/integrity-sidecar.ts';

/** Where the sidecar of an image lives by default. */
export function sidecarPathFor(imagePath: string): string {
  return `${imagePath}.integrity`;
}

export interface SidecarWriterOptions {
  /** Replace an existing sidecar; by default an existing file is an error. */
  overwrite?: boolean;
}

/** Leaf nodes gathered before one write to the file (256 KiB). */
const BATCH_NODES = 64;
const READ_CHUNK = 4 * 1024 * 1024;

export class IntegritySidecarWriter {
  readonly #hasher: TreeHasher;
  readonly #geometry: SidecarGeometry;
  /** Levels 1.. (level 0, the leaves, goes to the file as it is produced). */
  readonly #upper: Buffer[];
  readonly #batch = Buffer.alloc(BATCH_NODES * TREE_NODE_BYTES);
  /** Leaf node index of #batch's first node, complete nodes in it, leaves in the partial node after them. */
  #batchFirst = 0;
  #batchNodes = 0;
  #fill = 0;
  #next = 0;
  #file: FileHandle | null;
  #done = false;

  private constructor(
    readonly path: string,
    private readonly tmp: string,
    file: FileHandle,
    volumeKey: Buffer,
    readonly sectors: number,
    private readonly overwrite: boolean,
  ) {
    this.#file = file;
    this.#hasher = new TreeHasher(deriveVmKey(volumeKey, 'integrity'));
    this.#geometry = sidecarGeometry(sectors);
    this.#upper = this.#geometry.levels.slice(1).map((l) => Buffer.alloc(paddedLevelBytes(l.entries)));
  }

  /** Starts a sidecar at `path` for an image of `sectors` 4096-byte ciphertext sectors under `volumeKey`. */
  static async create(path: string, volumeKey: Buffer, sectors: number, opts: SidecarWriterOptions = {}): Promise<IntegritySidecarWriter> {
    checkSectorCount(sectors);
    if (!opts.overwrite && (await exists(path))) throw new Error(`${path} already exists`);
    const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.partial`);
    const file = await open(tmp, 'wx', 0o600);
    try {
      return new IntegritySidecarWriter(path, tmp, file, volumeKey, sectors, opts.overwrite ?? false);
    } catch (err) {
      await file.close();
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Takes the next ciphertext sectors, in order from sector 0 (sealImage's onCiphertext hook fits: bind it,
   * `onCiphertext: (s, c) => writer.add(s, c)`). The buffer is not kept.
   */
  async add(firstSector: number, ciphertext: Buffer): Promise<void> {
    if (this.#done || !this.#file) throw new Error('integrity sidecar: add() after finish() or abort()');
    if (firstSector !== this.#next) throw new Error(`integrity sidecar: expected sector ${this.#next} next, got ${firstSector}`);
    if (ciphertext.length % SIDECAR_SECTOR_BYTES !== 0) throw new Error(`integrity sidecar: ${ciphertext.length} bytes is not whole sectors`);
    const count = ciphertext.length / SIDECAR_SECTOR_BYTES;
    if (firstSector + count > this.sectors) throw new Error(`integrity sidecar: sector ${firstSector + count - 1} is beyond the ${this.sectors} announced`);
    for (let at = 0; at < count; ) {
      const take = Math.min(TREE_ARITY - this.#fill, count - at);
      const slice = ciphertext.subarray(at * SIDECAR_SECTOR_BYTES, (at + take) * SIDECAR_SECTOR_BYTES);
      this.#hasher.leaves(firstSector + at, slice, this.#batch, this.#batchNodes * TREE_NODE_BYTES + this.#fill * TREE_HASH_BYTES);
      this.#fill += take;
      at += take;
      if (this.#fill === TREE_ARITY) {
        this.#closeNode();
        if (this.#batchNodes === BATCH_NODES) await this.#writeBatch();
      }
    }
    this.#next += count;
  }

  /** Completes the file (upper levels, header), syncs it, gives it its name; returns the root. */
  async finish(): Promise<Buffer> {
    if (this.#done || !this.#file) throw new Error('integrity sidecar: finish() called twice or after abort()');
    if (this.#next !== this.sectors) throw new Error(`integrity sidecar: got ${this.#next} of ${this.sectors} sectors`);
    this.#done = true;
    const file = this.#file;
    try {
      if (this.#fill > 0) this.#closeNode();
      await this.#writeBatch();
      const g = this.#geometry;
      for (let k = 1; k < g.levels.length - 1; k++) {
        for (let j = 0; j < g.levels[k + 1]!.entries; j++) hashNode(this.#hasher, k, this.#upper[k - 1]!, g.levels[k]!.entries, j, this.#upper[k]!);
      }
      for (let k = 1; k < g.levels.length; k++) await writeAll(file, this.#upper[k - 1]!, g.levels[k]!.offset);
      await writeAll(file, encodeSidecarHeader(this.sectors), 0);
      await file.sync();
      await file.close();
      this.#file = null;
      await publish(this.tmp, this.path, this.overwrite);
      return this.#hasher.root(this.sectors, this.#upper.at(-1)!.subarray(0, TREE_HASH_BYTES));
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Drops the unfinished file. Safe to call at any time, more than once. */
  async abort(): Promise<void> {
    this.#done = true;
    const file = this.#file;
    this.#file = null;
    if (file) {
      await file.close().catch(() => undefined);
    }
    await unlink(this.tmp).catch(() => undefined);
  }

  /** The partial node at the end of #batch is complete (or the last one): hash it into level 1. */
  #closeNode(): void {
    const at = this.#batchNodes * TREE_NODE_BYTES;
    const node = this.#batch.subarray(at, at + TREE_NODE_BYTES);
    node.fill(0, this.#fill * TREE_HASH_BYTES);
    const index = this.#batchFirst + this.#batchNodes;
    this.#hasher.node(1, index, node.subarray(0, this.#fill * TREE_HASH_BYTES), this.#upper[0]!, index * TREE_HASH_BYTES);
    this.#batchNodes++;
    this.#fill = 0;
  }

  async #writeBatch(): Promise<void> {
    if (this.#batchNodes === 0) return;
    const offset = this.#geometry.levels[0]!.offset + this.#batchFirst * TREE_NODE_BYTES;
    await writeAll(this.#file!, this.#batch.subarray(0, this.#batchNodes * TREE_NODE_BYTES), offset);
    this.#batchFirst += this.#batchNodes;
    this.#batchNodes = 0;
  }
}

export interface BuiltSidecar {
  root: Buffer;
  sectors: number;
  sidecarPath: string;
}

export interface BuildSidecarOptions extends SidecarWriterOptions {
  /** Default sidecarPathFor(imagePath). */
  sidecarPath?: string;
}

/**
 * Builds the sidecar of an existing image (ours or an imported cryptsetup one) by reading its payload, from
 * `payloadOffset` to the end of the file, which must be whole 4096-byte sectors.
 */
export async function buildSidecarForImage(imagePath: string, volumeKey: Buffer, payloadOffset: number, opts: BuildSidecarOptions = {}): Promise<BuiltSidecar> {
  const image = await open(imagePath, 'r');
  try {
    const st = await image.stat();
    if (!st.isFile()) throw new Error(`${imagePath} is not a regular file`);
    if (!Number.isSafeInteger(payloadOffset) || payloadOffset < 0 || payloadOffset >= st.size) {
      throw new Error(`${imagePath}: payload offset ${payloadOffset} is outside the ${st.size}-byte file`);
    }
    const payload = st.size - payloadOffset;
    if (payload % SIDECAR_SECTOR_BYTES !== 0) throw new Error(`${imagePath}: the payload (${payload} bytes) is not whole 4096-byte sectors`);
    const sectors = payload / SIDECAR_SECTOR_BYTES;
    const sidecarPath = opts.sidecarPath ?? sidecarPathFor(imagePath);
    const writer = await IntegritySidecarWriter.create(sidecarPath, volumeKey, sectors, opts);
    try {
      const bufs = [Buffer.alloc(READ_CHUNK), Buffer.alloc(READ_CHUNK)];
      const readChunk = (i: number): Promise<Buffer> => {
        const from = i * READ_CHUNK;
        const p = readExactly(image, bufs[i % 2]!.subarray(0, Math.min(READ_CHUNK, payload - from)), payloadOffset + from);
        p.catch(() => undefined); // awaited below; only keeps an early failure from counting as unhandled
        return p;
      };
      const chunks = Math.ceil(payload / READ_CHUNK);
      let next = readChunk(0);
      for (let i = 0; i < chunks; i++) {
        const data = await next;
        if (i + 1 < chunks) next = readChunk(i + 1);
        await writer.add((i * READ_CHUNK) / SIDECAR_SECTOR_BYTES, data);
      }
      return { root: await writer.finish(), sectors, sidecarPath };
    } catch (err) {
      await writer.abort();
      throw err;
    }
  } finally {
    await image.close();
  }
}

async function readExactly(fh: FileHandle, into: Buffer, position: number): Promise<Buffer> {
  let got = 0;
  while (got < into.length) {
    const { bytesRead } = await fh.read(into, got, into.length - got, position + got);
    if (bytesRead === 0) throw new Error(`image shrank while its sidecar was built (ended at ${position + got})`);
    got += bytesRead;
  }
  return into;
}

async function writeAll(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let off = 0; off < buf.length; ) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}

/** Gives the synced temporary file its name; without `overwrite`, never clobbers a file that appeared meanwhile. */
async function publish(tmp: string, path: string, overwrite: boolean): Promise<void> {
  if (overwrite) await rename(tmp, path);
  else {
    await link(tmp, path).catch((e: NodeJS.ErrnoException) => {
      throw e.code === 'EEXIST' ? new Error(`${path} already exists`) : e;
    });
    await unlink(tmp);
  }
  const d = await open(dirname(path), 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
