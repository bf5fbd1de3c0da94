/**
 * The integrity sidecar file (`IMG.integrity`, docs/sealed-disk.md): a 4096-byte header, then the levels of
 * the integrity tree over the image's 4096-byte ciphertext sectors, leaves first, each level padded with
 * zeros to whole 4096-byte nodes of 128 hashes.
 *
 *   offset 0   16  magic "VMSEAL-INTEGRIT1"
 *          16   4  version = 2 (u32 LE): the tree's hash is keyed BLAKE3 (version 1 was HMAC-SHA256)
 *          20   4  sector size = 4096 (u32 LE)
 *          24   8  sector count n (u64 LE)
 *          32   4  arity = 128 (u32 LE)
 *          36  ..  zero up to 4096
 *
 * Level 0 holds the n leaf hashes; level k+1 holds ceil(entries_k / 128) hashes, one per node of level k;
 * the last level holds one hash (the top node's). There is always at least one level above the leaves.
 * Pure: the file's bytes come from untrusted storage, so every field is checked and nothing is allocated
 * from a size the header claims before that size is bounded.
 */

export const SIDECAR_MAGIC = 'VMSEAL-INTEGRIT1';
export const SIDECAR_VERSION = 2;
export const SIDECAR_HEADER_BYTES = 4096;
export const SIDECAR_SECTOR_BYTES = 4096;
export const SIDECAR_ARITY = 128;
export const SIDECAR_HASH_BYTES = 32;
export const SIDECAR_NODE_BYTES = SIDECAR_ARITY * SIDECAR_HASH_BYTES;
/**
 * Largest disk a sidecar may describe: 2^26 sectors (256 GiB). The monitor keeps every leaf in memory
 * (32 bytes per sector: 2 GiB at this bound), so a header may not ask for more.
 */
export const SIDECAR_MAX_SECTORS = 2 ** 26;

const MAGIC_BYTES = Buffer.from(SIDECAR_MAGIC, 'ascii');
const FIXED_FIELDS_END = 36;

export class SidecarFormatError extends Error {
  override readonly name = 'SidecarFormatError';
}

export interface SidecarLevel {
  /** Hashes this level holds. */
  entries: number;
  /** 4096-byte nodes it takes in the file (the last one zero-padded). */
  nodes: number;
  /** Byte offset of its first node in the file. */
  offset: number;
}

export interface SidecarGeometry {
  sectors: number;
  /** levels[0] are the leaves; the last level has one entry, the top node's hash. */
  levels: SidecarLevel[];
  /** Exact size of a well-formed sidecar file. */
  fileSize: number;
}

export function checkSectorCount(sectors: number): void {
  if (!Number.isSafeInteger(sectors) || sectors < 1 || sectors > SIDECAR_MAX_SECTORS) {
    throw new SidecarFormatError(`sector count ${sectors} is outside 1..${SIDECAR_MAX_SECTORS}`);
  }
}

export function sidecarGeometry(sectors: number): SidecarGeometry {
  checkSectorCount(sectors);
  const levels: SidecarLevel[] = [];
  let offset = SIDECAR_HEADER_BYTES;
  let entries = sectors;
  for (;;) {
    const nodes = Math.ceil(entries / SIDECAR_ARITY);
    levels.push({ entries, nodes, offset });
    offset += nodes * SIDECAR_NODE_BYTES;
    if (entries === 1 && levels.length > 1) break;
    entries = nodes;
  }
  return { sectors, levels, fileSize: offset };
}

export function encodeSidecarHeader(sectors: number): Buffer {
  checkSectorCount(sectors);
  const h = Buffer.alloc(SIDECAR_HEADER_BYTES);
  MAGIC_BYTES.copy(h, 0);
  h.writeUInt32LE(SIDECAR_VERSION, 16);
  h.writeUInt32LE(SIDECAR_SECTOR_BYTES, 20);
  h.writeBigUInt64LE(BigInt(sectors), 24);
  h.writeUInt32LE(SIDECAR_ARITY, 32);
  return h;
}

/** Parses and checks a header; returns its sector count. */
export function decodeSidecarHeader(h: Buffer): number {
  if (h.length < SIDECAR_HEADER_BYTES) throw new SidecarFormatError(`sidecar header is ${h.length} bytes, expected ${SIDECAR_HEADER_BYTES}`);
  if (!h.subarray(0, 16).equals(MAGIC_BYTES)) throw new SidecarFormatError('not an integrity sidecar (bad magic)');
  const version = h.readUInt32LE(16);
  if (version === 1) {
    throw new SidecarFormatError(
      'sidecar version 1 (HMAC-SHA256 tree) is no longer supported: re-seal the image, i.e. rebuild its sidecar as version 2 (BLAKE3) with `vmseal image import --force` or `vmseal image seal`, then launch it again (`vmseal vm launch` rebuilds the sidecar itself)',
    );
  }
  if (version !== SIDECAR_VERSION) throw new SidecarFormatError(`sidecar version ${version} is not supported (only ${SIDECAR_VERSION})`);
  const sectorSize = h.readUInt32LE(20);
  if (sectorSize !== SIDECAR_SECTOR_BYTES) throw new SidecarFormatError(`sidecar sector size ${sectorSize}, expected ${SIDECAR_SECTOR_BYTES}`);
  const arity = h.readUInt32LE(32);
  if (arity !== SIDECAR_ARITY) throw new SidecarFormatError(`sidecar arity ${arity}, expected ${SIDECAR_ARITY}`);
  const n = h.readBigUInt64LE(24);
  if (n < 1n || n > BigInt(SIDECAR_MAX_SECTORS)) throw new SidecarFormatError(`sidecar sector count ${n} is outside 1..${SIDECAR_MAX_SECTORS}`);
  for (let i = FIXED_FIELDS_END; i < SIDECAR_HEADER_BYTES; i++) {
    if (h[i] !== 0) throw new SidecarFormatError(`sidecar header byte ${i} is not zero`);
  }
  return Number(n);
}

/** File offset of node `node` of `level` (a node is 128 hashes, 4096 bytes). */
export function nodeOffset(g: SidecarGeometry, level: number, node: number): number {
  const l = g.levels[level];
  if (!l || !Number.isInteger(node) || node < 0 || node >= l.nodes) throw new RangeError(`no node ${node} at level ${level}`);
  return l.offset + node * SIDECAR_NODE_BYTES;
}
