/**
 * Boots a VM from a disk served by the monitor's own NBD server. QEMU never opens the disk file; it
 * only sees the export on a socket in a private dir. `DiskLaunch.start` takes any BlockBackend (the
 * sealed launch hands it the encrypted, integrity-checked one); `PlainLaunch.start` serves a raw file.
 */
import path from 'node:path';
import type { BlockBackend } from '../disk/backend.ts';
import { FileBackend } from '../disk/file-backend.ts';
import { NbdServer } from '../disk/nbd-server.ts';
import { registerCleanup } from '../vm/cleanup.ts';
import { QemuVm, type QemuVmOptions } from '../vm/qemu-vm.ts';
import { createRunDir, removeRunDir } from '../vm/run-dir.ts';

export type DiskLaunchOptions = Omit<QemuVmOptions, 'disk'>;

const EXPORT_NAME = 'vda';

async function closeExport(nbd: NbdServer, backend: BlockBackend, dir: string): Promise<void> {
  await nbd.close();
  await backend.close();
  await removeRunDir(dir);
}

export class DiskLaunch {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly vm: QemuVm,
    readonly nbd: NbdServer,
    private readonly backend: BlockBackend,
    private readonly diskRunDir: string,
    private readonly unregister: () => void,
  ) {}

  /** Serves `backend` and boots QEMU on it; takes ownership of the backend (closed on failure and on stop). */
  static async start(backend: BlockBackend, options: DiskLaunchOptions): Promise<DiskLaunch> {
    let diskRunDir: string;
    try {
      diskRunDir = await createRunDir(options.runDirBase);
    } catch (err) {
      await backend.close();
      throw err;
    }
    const nbd = new NbdServer({ socketPath: path.join(diskRunDir, 'disk.sock'), exports: new Map([[EXPORT_NAME, backend]]) });
    const teardown = (): Promise<void> => closeExport(nbd, backend, diskRunDir);
    const unregister = registerCleanup(teardown);
    let vm: QemuVm;
    try {
      await nbd.listen();
      vm = await QemuVm.start({ ...options, disk: { socketPath: nbd.socketPath, exportName: EXPORT_NAME } });
    } catch (err) {
      unregister();
      await teardown();
      throw err;
    }
    return new DiskLaunch(vm, nbd, backend, diskRunDir, unregister);
  }

  /** Stops QEMU (if still running), then the export; the backend is closed. Idempotent. */
  stop(graceMs = 5000): Promise<void> {
    this.stopping ??= (async () => {
      this.unregister();
      await this.vm.stop({ graceMs });
      await closeExport(this.nbd, this.backend, this.diskRunDir);
    })();
    return this.stopping;
  }
}

export interface PlainLaunchOptions extends DiskLaunchOptions {
  /** Raw disk image; the guest sees it as /dev/vda. */
  diskPath: string;
  readOnly?: boolean;
}

export const PlainLaunch = {
  async start(options: PlainLaunchOptions): Promise<DiskLaunch> {
    const { diskPath, readOnly, ...vmOptions } = options;
    return DiskLaunch.start(await FileBackend.open(diskPath, { readOnly: readOnly ?? false }), vmOptions);
  },
};
