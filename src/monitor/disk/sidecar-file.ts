/**
 * The integrity sidecar on disk, for the monitor: read whole at open (checked against the format's bounds
 * before anything is allocated), and rewritten node by node when a flush changes the tree.
 */
import type { ChangedNodes } from '../../crypto/integrity-tree.ts';
import { SIDECAR_HEADER_BYTES, SIDECAR_NODE_BYTES, SidecarFormatError, decodeSidecarHeader, sidecarGeometry, type SidecarGeometry } from '../../formats/integrity-sidecar.ts';
import { readFully, writeFully } from './fd-io.ts';

export interface LoadedSidecar {
  geometry: SidecarGeometry;
  /** One buffer per level, leaves first, padded to whole nodes as in the file. */
  levels: Buffer[];
}

/** Reads a sidecar of `fileSize` bytes. Throws SidecarFormatError if the file is not a well-formed sidecar. */
export async function readSidecar(fd: number, fileSize: number): Promise<LoadedSidecar> {
  if (fileSize < SIDECAR_HEADER_BYTES) throw new SidecarFormatError(`sidecar is ${fileSize} bytes, shorter than its header`);
  const header = Buffer.alloc(SIDECAR_HEADER_BYTES);
  await readFully(fd, header, 0);
  const geometry = sidecarGeometry(decodeSidecarHeader(header));
  if (fileSize !== geometry.fileSize) {
    throw new SidecarFormatError(`sidecar is ${fileSize} bytes, but ${geometry.sectors} sectors need exactly ${geometry.fileSize}`);
  }
  const levels: Buffer[] = [];
  for (const l of geometry.levels) {
    const buf = Buffer.alloc(l.nodes * SIDECAR_NODE_BYTES);
    await readFully(fd, buf, l.offset);
    levels.push(buf);
  }
  return { geometry, levels };
}

/**
 * Writes the changed nodes of every level, leaves first, consecutive nodes in one write. `afterFirst` runs
 * once the first write is done (a test seam for crashes in the middle of this step).
 */
export async function writeSidecarNodes(fd: number, g: SidecarGeometry, levels: Buffer[], changed: ChangedNodes, afterFirst?: () => void): Promise<void> {
  let writes = 0;
  for (let k = 0; k < changed.length; k++) {
    const nodes = changed[k]!;
    for (let i = 0; i < nodes.length; ) {
      let j = i + 1;
      while (j < nodes.length && nodes[j] === nodes[j - 1]! + 1) j++;
      const from = nodes[i]! * SIDECAR_NODE_BYTES;
      const to = (nodes[j - 1]! + 1) * SIDECAR_NODE_BYTES;
      await writeFully(fd, levels[k]!.subarray(from, to), g.levels[k]!.offset + from);
      if (++writes === 1) afterFirst?.();
      i = j;
    }
  }
}
