/**
 * A VM's vTPM as the monitor runs it: its swtpm (state under the monitor's vTPM dir, encrypted under
 * K_vtpm, provisioned with an EK certificate on first launch), the proxy QEMU connects to, and the measured
 * launch the proxy performs at every boot. Created in launch, stopped with the VM; a relaunch of the same
 * VM (same volume key) finds the same state.
 */
import { join } from 'node:path';
import { deriveVmKey } from '../../crypto/keys.ts';
import { createRunDir, removeRunDir } from '../vm/run-dir.ts';
import { extendLaunch, measureBootFiles } from './measured-launch.ts';
import { SwtpmInstance, hasTpmState, vtpmStateDir } from './swtpm-instance.ts';
import type { TpmEndpoint } from './tpm-channel.ts';
import { TpmProxy, type CommandPolicy } from './tpm-proxy.ts';
import type { VtpmCa } from './vtpm-ca.ts';
import { provisionVtpm } from './vtpm-provision.ts';

export interface VtpmOptions {
  /** The monitor's persistent vTPM directory (one 0700 subdirectory per VM). */
  stateBase: string;
  /** Where the private run dir (control socket, event log) is made; default: the monitor's run dir base. */
  runDirBase?: string;
  volumeKey: Uint8Array;
  ca: VtpmCa;
  /** For logs and the EK certificate subject. */
  name: string;
  boot: { kernel: string; initrd: string; cmdline: string };
  policy?: CommandPolicy;
  log?: (msg: string) => void;
  /** Tests: also write the EK certificates here at provisioning. */
  ekCertDir?: string;
}

export const VTPM_CTRL_SOCKET = 'tpm-ctrl.sock';
export const VTPM_EVENT_LOG = 'tpm-eventlog.bin';

export class Vtpm {
  #stopping: Promise<void> | undefined;

  private constructor(
    readonly stateDir: string,
    readonly runDir: string,
    readonly swtpm: SwtpmInstance,
    readonly proxy: TpmProxy,
  ) {}

  static async start(o: VtpmOptions): Promise<Vtpm> {
    const key = deriveVmKey(o.volumeKey, 'vtpm');
    const stateDir = await vtpmStateDir(o.stateBase, key);
    const measurements = await measureBootFiles(o.boot.kernel, o.boot.initrd, o.boot.cmdline);
    if (!(await hasTpmState(stateDir))) {
      await provisionVtpm({ stateDir, key, ca: o.ca, vmName: o.name, ...(o.ekCertDir ? { ekCertDir: o.ekCertDir } : {}) });
    }
    const runDir = await createRunDir(o.runDirBase);
    let swtpm: SwtpmInstance | undefined;
    try {
      swtpm = await SwtpmInstance.start({ stateDir, key, name: o.name });
      const eventLog = join(runDir, VTPM_EVENT_LOG);
      const proxy = TpmProxy.listen({
        ctrlPath: join(runDir, VTPM_CTRL_SOCKET),
        swtpm,
        ...(o.policy ? { policy: o.policy } : {}),
        ...(o.log ? { log: o.log } : {}),
        onFirstStartup: (tpm) => extendLaunch(tpm, measurements, eventLog),
      });
      return new Vtpm(stateDir, runDir, swtpm, proxy);
    } catch (err) {
      await swtpm?.stop();
      await removeRunDir(runDir);
      throw err;
    } finally {
      key.fill(0);
    }
  }

  get ctrlPath(): string {
    return join(this.runDir, VTPM_CTRL_SOCKET);
  }

  /** The monitor-owned TCG event log of the current boot (PCRs 8 and 9). */
  get eventLogPath(): string {
    return join(this.runDir, VTPM_EVENT_LOG);
  }

  /** This VM's swtpm, for another VM's proxy to read a shared NV index from. */
  get endpoint(): TpmEndpoint {
    return this.swtpm.tpm;
  }

  /** QEMU arguments attaching the TPM (a CRB interface, as the demo guest's kernel drives). */
  qemuArgs(): string[] {
    return ['-chardev', `socket,id=chrtpm,path=${this.ctrlPath}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-crb,tpmdev=tpm0'];
  }

  /** Stops the proxy and swtpm (its state stays on disk) and removes the run dir. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.proxy.close();
      await this.swtpm.stop();
      await removeRunDir(this.runDir);
    })();
    return this.#stopping;
  }
}
