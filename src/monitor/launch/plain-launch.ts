/**
 * Boots a VM from a raw disk file through the monitor's own NBD server: the base that the sealed
 * launch builds on (which swaps the plain file backend for the encrypted, integrity-checked one).
 * QEMU never opens the disk file itself; it only sees the export on a socket in a private dir.
 */
import path from 'node:path';
import type { BlockBackend } from '../disk/backend.ts';
import { FileBackend } from '../disk/file-backend.ts';
import { NbdServer } from '../disk/nbd-server.ts';
import { registerCleanup } from '../vm/cleanup.ts';
import { QemuVm, type QemuVmOptions } from '../vm/qemu-vm.ts';
import { createRunDir, removeRunDir } from '../vm/run-dir.ts';

export interface PlainLaunchOptions extends Omit<QemuVmOptions, 'disk'> {
  /** Raw disk image; the guest sees it as /dev/vda. */
  diskPath: string;
  readOnly?: boolean;
}

const EXPORT_NAME = 'vda';

async function closeExport(nbd: NbdServer, backend: BlockBackend, dir: string): Promise<void> {
  await nbd.close();
  await backend.close();
  await removeRunDir(dir);
}

export class PlainLaunch {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly vm: QemuVm,
    readonly nbd: NbdServer,
    private readonly backend: BlockBackend,
    private readonly diskRunDir: string,
    private readonly unregister: () => void,
  ) {}

  static async start(options: PlainLaunchOptions): Promise<PlainLaunch> {
    const { diskPath, readOnly, ...vmOptions } = options;
    const backend = await FileBackend.open(diskPath, { readOnly: readOnly ?? false });
    const diskRunDir = await createRunDir(options.runDirBase);
    const nbd = new NbdServer({ socketPath: path.join(diskRunDir, 'disk.sock'), exports: new Map([[EXPORT_NAME, backend]]) });
    const teardown = (): Promise<void> => closeExport(nbd, backend, diskRunDir);
    const unregister = registerCleanup(teardown);
    let vm: QemuVm;
    try {
      await nbd.listen();
      vm = await QemuVm.start({ ...vmOptions, disk: { socketPath: nbd.socketPath, exportName: EXPORT_NAME } });
    } catch (err) {
      unregister();
      await teardown();
      throw err;
    }
    return new PlainLaunch(vm, nbd, backend, diskRunDir, unregister);
  }

  /** Stops QEMU (if still running), then the export; the disk file is closed and left in place. Idempotent. */
  stop(graceMs = 5000): Promise<void> {
    this.stopping ??= (async () => {
      this.unregister();
      await this.vm.stop({ graceMs });
      await closeExport(this.nbd, this.backend, this.diskRunDir);
    })();
    return this.stopping;
  }
}
