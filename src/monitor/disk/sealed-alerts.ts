/** What a sealed disk reports to the monitor, besides failing the request concerned with EIO. */
export type SealedDiskAlert =
  /** Sectors whose ciphertext or sidecar nodes do not verify: changed, moved, rolled back, or torn by a crash. */
  | { kind: 'TAMPER'; image: string; sector: number; sectors: number; reason: string }
  /** Sector 0 decrypts without the MBR signature: a wrong volume key or another disk. The VM must stop. */
  | { kind: 'BAD_KEY_OR_DISK'; image: string; reason: string }
  /** A flush failed on the storage; the disk refuses all further requests until it is reopened (and recovered). */
  | { kind: 'DISK_FAILURE'; image: string; reason: string };

export type AlertSink = (alert: SealedDiskAlert) => void;

/** Why a sealed disk could not be opened. `TAMPER`: the files do not verify against the trusted root. */
export class SealedDiskError extends Error {
  override readonly name = 'SealedDiskError';
  constructor(
    message: string,
    readonly reason: 'TAMPER' | 'NO_ROOT' | 'BUSY' | 'INVALID',
  ) {
    super(message);
  }
}
