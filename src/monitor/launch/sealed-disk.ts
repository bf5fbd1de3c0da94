/**
 * How the monitor opens a launch's disk: the sealed backend with the bundle's key and root, or, when the
 * tenant sealed the bundle with `disk.integrity: 'none'`, the XTS-only backend (no sidecar is read).
 */
import { SealedDiskError, type SealedDiskAlert } from '../disk/sealed-alerts.ts';
import { SealedBackend } from '../disk/sealed-backend.ts';
import { XtsBackend } from '../disk/xts-backend.ts';
import { RefusalError } from '../identity/refusal.ts';
import type { OpenSealedDisk } from '../monitor.ts';
import type { MonitorDb } from '../state/monitor-db.ts';

function describe(a: SealedDiskAlert): string {
  return a.kind === 'TAMPER' ? `${a.image}: sectors ${a.sector}..${a.sector + a.sectors - 1}: ${a.reason}` : `${a.image}: ${a.reason}`;
}

export function sealedDiskOpener(db: MonitorDb): OpenSealedDisk {
  return async (req) => {
    const { disk } = req.bundle;
    const onAlert = (a: SealedDiskAlert): void => req.onAlert(a.kind, describe(a));
    if (disk.integrity === 'none') {
      return XtsBackend.open({ imagePath: req.imagePath, payloadOffset: disk.payloadOffset, sectors: disk.sectors, volumeKey: req.bundle.volumeKey, onAlert }).catch(
        (err: unknown) => {
          // An image shorter than the disk the tenant sealed: cut or swapped by storage.
          if (err instanceof SealedDiskError && err.reason === 'INVALID') throw new RefusalError('TAMPER', err.message);
          throw err;
        },
      );
    }
    if (disk.integrityRoot === undefined) throw new RefusalError('TAMPER', 'the bundle has no integrity root');
    // The management plane chooses what to name: withholding the tree must not turn the disk into XTS only.
    if (req.sidecarPath === undefined) throw new RefusalError('TAMPER', 'the bundle seals a disk with an integrity tree, but the launch names no sidecar');
    const backend = await SealedBackend.open({
      imagePath: req.imagePath,
      sidecarPath: req.sidecarPath,
      payloadOffset: disk.payloadOffset,
      volumeKey: req.bundle.volumeKey,
      bundleRoot: Buffer.from(disk.integrityRoot, 'hex'),
      db,
      onAlert,
    }).catch((err: unknown) => {
      // Image or sidecar that do not verify against the trusted root: swapped, rolled back or altered.
      if (err instanceof SealedDiskError && err.reason === 'TAMPER') throw new RefusalError('TAMPER', err.message);
      throw err;
    });
    if (backend.size !== disk.sectors * disk.sectorSize) {
      await backend.close();
      throw new RefusalError('TAMPER', `the image holds ${backend.size / disk.sectorSize} sectors, the tenant sealed ${disk.sectors}`);
    }
    return backend;
  };
}
