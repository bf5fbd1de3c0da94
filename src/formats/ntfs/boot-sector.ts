/**
 * The NTFS boot sector (BIOS parameter block): geometry and where $MFT lives. Only the fields a
 * reader needs are kept; every one is range-checked because the image is hostile.
 */
export class NtfsError extends Error {
  override name = 'NtfsError';
}

export interface NtfsBootSector {
  bytesPerSector: number;
  clusterSize: number;
  totalSectors: number;
  /** Clusters in the volume; every LCN a data run names must be below it. */
  totalClusters: number;
  mftLcn: number;
  mftMirrLcn: number;
  mftRecordSize: number;
  indexRecordSize: number;
  serial: bigint;
}

const OEM_ID = 'NTFS    ';

/** A signed "clusters per record" byte: positive counts clusters, negative n means 2^-n bytes. */
function recordSize(raw: number, clusterSize: number, what: string): number {
  const v = raw > 127 ? raw - 256 : raw;
  const size = v > 0 ? v * clusterSize : v < 0 && v >= -31 ? 2 ** -v : 0;
  if (size < 512 || size > 65536 || (size & (size - 1)) !== 0) throw new NtfsError(`${what} size ${size} is not a power of two in 512..65536`);
  return size;
}

export function parseBootSector(b: Uint8Array): NtfsBootSector {
  if (b.length < 512) throw new NtfsError('boot sector shorter than 512 bytes');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (Buffer.from(b.subarray(3, 11)).toString('latin1') !== OEM_ID) throw new NtfsError('not NTFS: OEM id is not "NTFS    "');
  if (v.getUint16(510, true) !== 0xaa55) throw new NtfsError('boot sector lacks the 0x55AA signature');
  const bytesPerSector = v.getUint16(0x0b, true);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) throw new NtfsError(`bytes per sector ${bytesPerSector} is not 512..4096`);
  const spcRaw = v.getUint8(0x0d);
  // Values above 128 encode 2^(256 - n) sectors, used by volumes with clusters above 64 KiB.
  const sectorsPerCluster = spcRaw <= 128 ? spcRaw : 2 ** (256 - spcRaw);
  if (sectorsPerCluster === 0 || (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0) throw new NtfsError(`sectors per cluster ${sectorsPerCluster} is not a power of two`);
  const clusterSize = bytesPerSector * sectorsPerCluster;
  if (clusterSize > 2 * 1024 * 1024) throw new NtfsError(`cluster size ${clusterSize} is over 2 MiB`);
  const totalSectors = v.getBigUint64(0x28, true);
  if (totalSectors === 0n || totalSectors > BigInt(Number.MAX_SAFE_INTEGER) / BigInt(bytesPerSector)) throw new NtfsError('total sector count out of range');
  const totalClusters = Math.floor(Number(totalSectors) / sectorsPerCluster);
  const mftLcn = Number(v.getBigUint64(0x30, true));
  const mftMirrLcn = Number(v.getBigUint64(0x38, true));
  if (mftLcn === 0 || mftLcn >= totalClusters) throw new NtfsError(`$MFT cluster ${mftLcn} is outside the volume`);
  return {
    bytesPerSector,
    clusterSize,
    totalSectors: Number(totalSectors),
    totalClusters,
    mftLcn,
    mftMirrLcn,
    mftRecordSize: recordSize(v.getUint8(0x40), clusterSize, 'MFT record'),
    indexRecordSize: recordSize(v.getUint8(0x44), clusterSize, 'index record'),
    serial: v.getBigUint64(0x48, true),
  };
}
