/**
 * NTFS data runs (mapping pairs): a packed list of (length, LCN delta) pairs describing where a
 * non-resident attribute's clusters lie. A run with no offset field is sparse (reads as zeros).
 */
import { NtfsError } from './boot-sector.ts';

export interface DataRun {
  /** First virtual cluster of the run within the attribute. */
  vcn: number;
  clusters: number;
  /** Logical cluster on the volume, or null for a sparse run. */
  lcn: number | null;
}

function readSigned(b: Uint8Array, at: number, size: number): number {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[at + i]!);
  if (b[at + size - 1]! & 0x80) v -= 1n << BigInt(size * 8);
  return Number(v);
}

function readUnsigned(b: Uint8Array, at: number, size: number): number {
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + b[at + i]!;
  return v;
}

/**
 * Decodes the runs in `b` starting at VCN `startVcn`. Every LCN must land inside `totalClusters`
 * and the runs must cover exactly `expectedClusters` when given (the attribute's VCN range).
 */
export function decodeDataRuns(b: Uint8Array, startVcn: number, totalClusters: number, expectedClusters?: number): DataRun[] {
  const runs: DataRun[] = [];
  let at = 0;
  let vcn = startVcn;
  let lcn = 0;
  while (at < b.length) {
    const header = b[at]!;
    if (header === 0) break;
    const lenSize = header & 0x0f;
    const offSize = header >> 4;
    if (lenSize === 0 || lenSize > 8 || offSize > 8) throw new NtfsError(`data run header 0x${header.toString(16)} has bad field sizes`);
    if (at + 1 + lenSize + offSize > b.length) throw new NtfsError('data run runs past the end of its attribute');
    const clusters = readUnsigned(b, at + 1, lenSize);
    if (clusters === 0 || clusters > totalClusters) throw new NtfsError(`data run of ${clusters} clusters is out of range`);
    let runLcn: number | null = null;
    if (offSize > 0) {
      lcn += readSigned(b, at + 1 + lenSize, offSize);
      if (lcn < 0 || lcn + clusters > totalClusters) throw new NtfsError(`data run at LCN ${lcn} (+${clusters}) is outside the volume`);
      runLcn = lcn;
    }
    runs.push({ vcn, clusters, lcn: runLcn });
    vcn += clusters;
    if (vcn - startVcn > totalClusters) throw new NtfsError('data runs cover more clusters than the volume holds');
    at += 1 + lenSize + offSize;
  }
  if (expectedClusters !== undefined && vcn - startVcn !== expectedClusters) {
    throw new NtfsError(`data runs cover ${vcn - startVcn} clusters, the attribute says ${expectedClusters}`);
  }
  return runs;
}
