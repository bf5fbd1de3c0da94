/**
 * Classic MBR (DOS) partition table: four 16-byte primary entries at byte 446 and the 0x55AA
 * boot signature at 510. No boot code (vmseal boots with -kernel). CHS fields are written for
 * the conventional 255-head, 63-sector geometry, saturating at the 1023/254/63 maximum, as
 * partitioning tools do; parsing trusts only the LBA fields.
 */

export const SECTOR_SIZE = 512;
export const MBR_TYPE_LINUX = 0x83;

const TABLE_OFFSET = 446;
const ENTRY_SIZE = 16;
const SIGNATURE_OFFSET = 510;
const DISK_SIGNATURE_OFFSET = 440;
const MAX_LBA = 0xffffffff;
const HEADS = 255;
const SECTORS_PER_TRACK = 63;

export class MbrError extends Error {
  override name = 'MbrError';
}

export interface MbrPartition {
  /** Slot 0..3 in the table; the Linux device is `vda${slot + 1}`. */
  slot: number;
  bootable: boolean;
  type: number;
  startLba: number;
  sectors: number;
}

export interface Mbr {
  diskSignature: number;
  /** Non-empty slots only, in slot order. */
  partitions: MbrPartition[];
}

export interface MbrPartitionSpec {
  type: number;
  startLba: number;
  sectors: number;
  bootable?: boolean;
}

export interface MbrSpec {
  diskSignature?: number;
  partitions: MbrPartitionSpec[];
  /** When given, every partition must end inside the disk. */
  diskSectors?: number;
}

function chs(lba: number): [number, number, number] {
  const cylinder = Math.floor(lba / (HEADS * SECTORS_PER_TRACK));
  if (cylinder > 1023) return [0xfe, 0xff, 0xff];
  const head = Math.floor(lba / SECTORS_PER_TRACK) % HEADS;
  const sector = (lba % SECTORS_PER_TRACK) + 1;
  return [head, sector | ((cylinder >> 2) & 0xc0), cylinder & 0xff];
}

function checkLayout(partitions: Array<{ slot: number; startLba: number; sectors: number }>, diskSectors: number | undefined): void {
  const sorted = [...partitions].sort((a, b) => a.startLba - b.startLba);
  for (let i = 0; i < sorted.length; i++) {
    const p = sorted[i]!;
    const end = p.startLba + p.sectors;
    if (diskSectors !== undefined && end > diskSectors) {
      throw new MbrError(`partition ${p.slot + 1} ends at sector ${end}, past the end of the ${diskSectors}-sector disk`);
    }
    const next = sorted[i + 1];
    if (next && next.startLba < end) throw new MbrError(`partitions ${p.slot + 1} and ${next.slot + 1} overlap`);
  }
}

/** One 512-byte sector holding the partition table. */
export function buildMbr(spec: MbrSpec): Uint8Array {
  const { partitions } = spec;
  if (partitions.length > 4) throw new MbrError(`an MBR holds at most 4 primary partitions, not ${partitions.length}`);
  const signature = spec.diskSignature ?? 0;
  if (!Number.isInteger(signature) || signature < 0 || signature > 0xffffffff) throw new MbrError('disk signature must be a 32-bit unsigned integer');
  partitions.forEach((p, slot) => {
    if (!Number.isInteger(p.type) || p.type < 1 || p.type > 0xff) throw new MbrError(`partition ${slot + 1}: type must be 1..255`);
    if (!Number.isInteger(p.startLba) || p.startLba < 1) throw new MbrError(`partition ${slot + 1}: start must be a sector number >= 1`);
    if (!Number.isInteger(p.sectors) || p.sectors < 1) throw new MbrError(`partition ${slot + 1}: size must be at least one sector`);
    if (p.startLba + p.sectors - 1 > MAX_LBA) throw new MbrError(`partition ${slot + 1} extends past the 2 TiB limit of 32-bit LBAs`);
  });
  checkLayout(partitions.map((p, slot) => ({ slot, ...p })), spec.diskSectors);

  const sector = new Uint8Array(SECTOR_SIZE);
  const view = new DataView(sector.buffer);
  view.setUint32(DISK_SIGNATURE_OFFSET, signature, true);
  partitions.forEach((p, slot) => {
    const o = TABLE_OFFSET + slot * ENTRY_SIZE;
    sector[o] = p.bootable ? 0x80 : 0x00;
    sector.set(chs(p.startLba), o + 1);
    sector[o + 4] = p.type;
    sector.set(chs(p.startLba + p.sectors - 1), o + 5);
    view.setUint32(o + 8, p.startLba, true);
    view.setUint32(o + 12, p.sectors, true);
  });
  sector[SIGNATURE_OFFSET] = 0x55;
  sector[SIGNATURE_OFFSET + 1] = 0xaa;
  return sector;
}

/** Parses the first sector of a disk; `diskSectors`, when known, bounds every partition. */
export function parseMbr(sector: Uint8Array, diskSectors?: number): Mbr {
  if (sector.length < SECTOR_SIZE) throw new MbrError(`boot sector is ${sector.length} bytes, expected ${SECTOR_SIZE}`);
  if (sector[SIGNATURE_OFFSET] !== 0x55 || sector[SIGNATURE_OFFSET + 1] !== 0xaa) {
    throw new MbrError('no 0x55AA boot signature: not an MBR-partitioned disk');
  }
  const view = new DataView(sector.buffer, sector.byteOffset, SECTOR_SIZE);
  const partitions: MbrPartition[] = [];
  for (let slot = 0; slot < 4; slot++) {
    const o = TABLE_OFFSET + slot * ENTRY_SIZE;
    const status = sector[o]!;
    const type = sector[o + 4]!;
    if (status !== 0x00 && status !== 0x80) throw new MbrError(`partition ${slot + 1}: invalid status byte 0x${status.toString(16)}`);
    if (type === 0) continue;
    const startLba = view.getUint32(o + 8, true);
    const sectors = view.getUint32(o + 12, true);
    if (startLba === 0) throw new MbrError(`partition ${slot + 1} starts at sector 0, on top of the partition table`);
    if (sectors === 0) throw new MbrError(`partition ${slot + 1} has type 0x${type.toString(16)} but no sectors`);
    partitions.push({ slot, bootable: status === 0x80, type, startLba, sectors });
  }
  checkLayout(partitions, diskSectors);
  return { diskSignature: view.getUint32(DISK_SIGNATURE_OFFSET, true), partitions };
}
