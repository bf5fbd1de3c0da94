/**
 * One swtpm process for one VM. Its state directory belongs to the monitor (0700) and is encrypted by swtpm
 * with `--key` (AES-256-CBC under K_vtpm = deriveVmKey(VK, 'vtpm')); the key reaches swtpm through a pipe,
 * never a file. Both channels are socketpairs made here: the control channel is swtpm's `clientfd`, and the
 * data channel's swtpm end is handed over at once with CMD_SET_DATAFD, so the monitor (not QEMU) always holds
 * the only way to send swtpm TPM commands.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { chmod, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { closeFd, socketPair } from '../unix/fd-passing.ts';
import { SwtpmControl } from './swtpm-control.ts';
import { CMD, CTRL_FRAMES, PTM_RES } from './swtpm-ctrl.ts';
import { TpmChannel } from './tpm-channel.ts';

export const VTPM_KEY_BYTES = 32;
const STOP_GRACE_MS = 3000;

/**
 * The directory name of a VM's vTPM state: stable across relaunches of the same VM (same volume key) and
 * revealing nothing of the key. VM ids are fresh per launch, so they cannot name persistent state.
 */
export function vtpmStateId(vtpmKey: Uint8Array): string {
  return createHmac('sha256', vtpmKey).update('vmseal/v1/vtpm-state-dir').digest('hex').slice(0, 32);
}

/** Creates (0700) and returns `<base>/<stateId>`; `base` itself is made 0700 too. */
export async function vtpmStateDir(base: string, vtpmKey: Uint8Array): Promise<string> {
  await mkdir(base, { recursive: true, mode: 0o700 });
  await chmod(base, 0o700);
  const dir = join(base, vtpmStateId(vtpmKey));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  return dir;
}

/** Whether swtpm has written permanent state (tpm2-00.permall) in `dir`. */
export async function hasTpmState(dir: string): Promise<boolean> {
  return (await readdir(dir)).includes('tpm2-00.permall');
}

function checkKey(key: Uint8Array): void {
  if (key.length !== VTPM_KEY_BYTES) throw new RangeError(`vTPM key must be ${VTPM_KEY_BYTES} bytes, got ${key.length}`);
}

/** Spawns `cmd` with `key` readable on fd `keyFd` (a pipe, closed after the key) and extra fds before it. */
export function spawnWithKey(cmd: string, args: string[], key: Buffer, extraFds: number[] = []): ChildProcess {
  const keyFd = 3 + extraFds.length;
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe', ...extraFds, 'pipe'] });
  const pipe = child.stdio[keyFd];
  if (!pipe || !('end' in pipe)) throw new Error('no key pipe');
  pipe.on('error', () => undefined); // a child that exits early is reported by its exit status
  pipe.end(key);
  return child;
}

export interface SwtpmStartOptions {
  stateDir: string;
  /** K_vtpm, 32 bytes. */
  key: Uint8Array;
  name: string;
}

export class SwtpmInstance {
  #stderr = '';
  readonly #exited: Promise<void>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    readonly control: SwtpmControl,
    readonly tpm: TpmChannel,
  ) {
    child.stderr?.setEncoding('utf8').on('data', (s: string) => {
      if (this.#stderr.length < 8192) this.#stderr += s;
    });
    child.stdout?.resume();
    this.#exited = new Promise((r) => child.once('exit', () => r()));
  }

  static async start(o: SwtpmStartOptions): Promise<SwtpmInstance> {
    checkKey(o.key);
    const [ctrl, ctrlPeer] = socketPair();
    const [data, dataPeer] = socketPair();
    let child: ChildProcess;
    try {
      child = spawnWithKey(
        'swtpm',
        ['socket', '--tpm2', '--tpmstate', `dir=${o.stateDir},mode=0600`, '--ctrl', 'type=unixio,clientfd=3', '--key', 'fd=4,mode=aes-256-cbc,format=binary', '--locality', 'reject-locality-4'],
        Buffer.from(o.key),
        [ctrlPeer],
      );
    } catch (err) {
      for (const fd of [ctrl, ctrlPeer, data, dataPeer]) closeFd(fd);
      throw err;
    }
    closeFd(ctrlPeer);
    const control = new SwtpmControl(ctrl);
    const inst = new SwtpmInstance(o.name, child, control, new TpmChannel(data, o.name));
    try {
      const res = await control.request(CMD.SET_DATAFD, Buffer.alloc(0), CTRL_FRAMES.get(CMD.SET_DATAFD)!.response, [dataPeer]);
      if (res.readUInt32BE(0) !== PTM_RES.SUCCESS) throw new Error(`swtpm refused its data channel: result ${res.readUInt32BE(0)}`);
    } catch (err) {
      await inst.stop();
      throw new Error(`swtpm for ${o.name} did not start: ${(err as Error).message}; ${inst.stderr.trim()}`);
    } finally {
      closeFd(dataPeer);
    }
    return inst;
  }

  get stderr(): string {
    return this.#stderr;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves when the process has exited. */
  exited(): Promise<void> {
    return this.#exited;
  }

  /** CMD_SHUTDOWN (swtpm writes its state and exits), SIGTERM after a grace period. */
  async stop(): Promise<void> {
    if (this.running && !this.control.failed) {
      await this.control.request(CMD.SHUTDOWN, Buffer.alloc(0), 4).catch(() => undefined);
    }
    this.tpm.close();
    this.control.close();
    if (this.running) {
      const t = setTimeout(() => this.child.kill('SIGTERM'), STOP_GRACE_MS);
      await this.#exited;
      clearTimeout(t);
    }
  }
}
