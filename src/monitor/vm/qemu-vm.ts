import type { ChildProcess } from 'node:child_process';
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { registerCleanup, registerExitHook } from './cleanup.ts';
import { withDeadline } from './deadline.ts';
import { resolveAccel } from './kvm-probe.ts';
import { buildQemuArgs, type Accel, type NbdDisk } from './qemu-args.ts';
import { spawnQemu } from './qemu-process.ts';
import { QmpClient } from './qmp-client.ts';
import { createRunDir, removeRunDir, removeRunDirSync } from './run-dir.ts';
import { SerialConsole } from './serial-console.ts';
import { OneShotListener } from './unix-listener.ts';
import { printable, TextTail } from './text-tail.ts';

/**
 * One QEMU process running one VM, owned from spawn to the removal of its files.
 *
 * Lifecycle: start() creates a private run dir, listens on qmp.sock and console.sock, spawns QEMU
 * (which connects to both at startup) and negotiates QMP. When QEMU exits for any reason (stop(),
 * guest poweroff, crash) the sockets are closed and the run dir, guest RAM included, is deleted.
 * SIGINT/SIGTERM of the monitor stop the VM through cleanup.ts; a plain process exit SIGKILLs
 * QEMU and deletes the run dir synchronously; a SIGKILLed monitor still takes QEMU down
 * (PR_SET_PDEATHSIG, see qemu-process.ts) but cannot delete the run dir.
 */

export interface QemuVmOptions {
  kernel: string;
  initrd: string;
  cmdline: string;
  /** The monitor's NBD export; the guest sees it as /dev/vda. */
  disk?: NbdDisk;
  /** Default 512. */
  memoryMiB?: number;
  /** Default 1. */
  cpus?: number;
  /** Default 'tcg'. 'kvm' fails unless the KVM probe passes; 'auto' falls back to TCG with a warning. */
  accel?: 'tcg' | 'kvm' | 'auto';
  /** Default: see defaultRunDirBase() in run-dir.ts. */
  runDirBase?: string;
  name?: string;
  /** Appended verbatim to QEMU's command line (trusted callers only). */
  extraArgs?: string[];
  /** Bound for spawning QEMU up to a negotiated QMP connection. Default 30 s. */
  startTimeoutMs?: number;
}

export interface VmExit {
  code: number | null;
  signal: string | null;
}

export interface VmStatus {
  running: boolean;
  /** QEMU's RunState, e.g. 'running', 'paused', 'shutdown'. */
  status: string;
}

const noNul = (s: string): boolean => !s.includes('\0');
const pathString = z.string().min(1).refine(noNul, 'must not contain NUL bytes');
const optionsSchema = z.object({
  kernel: pathString,
  initrd: pathString,
  cmdline: z
    .string()
    .max(4096)
    .refine((s) => !/[\x00-\x08\x0a-\x1f\x7f]/.test(s), 'must not contain control characters'),
  disk: z
    .object({
      socketPath: pathString,
      // NBD export names are at most 4096 bytes.
      exportName: z.string().refine(noNul, 'must not contain NUL bytes').refine((s) => Buffer.byteLength(s) <= 4096, 'at most 4096 bytes'),
    })
    .optional(),
  memoryMiB: z.number().int().min(16).max(1024 * 1024).default(512),
  cpus: z.number().int().min(1).max(64).default(1),
  accel: z.enum(['tcg', 'kvm', 'auto']).default('tcg'),
  runDirBase: pathString.optional(),
  name: z
    .string()
    .regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be 1-64 characters of A-Z a-z 0-9 . _ -')
    .optional(),
  extraArgs: z.array(z.string().refine(noNul, 'must not contain NUL bytes')).optional(),
  startTimeoutMs: z.number().int().positive().max(600_000).default(30_000),
});
type ParsedOptions = z.output<typeof optionsSchema>;

const statusSchema = z.object({ running: z.boolean(), status: z.string() });

const STDERR_KEEP_CHARS = 64 * 1024;
const ERROR_STDERR_CHARS = 4096;
const ERROR_CONSOLE_CHARS = 2048;
const SIGNAL_CLEANUP_GRACE_MS = 2000;
const KILL_WAIT_MS = 5000;
/** After a startup step fails, how long to wait for QEMU's exit so the error can carry its stderr. */
const EXIT_SETTLE_MS = 2000;

function parseOptions(options: QemuVmOptions): ParsedOptions {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || 'options'}: ${i.message}`).join('; ');
    throw new TypeError(`invalid QemuVm options: ${issues}`);
  }
  return parsed.data;
}

async function regularFile(file: string, what: string): Promise<string> {
  const abs = path.resolve(file);
  let st;
  try {
    st = await stat(abs);
  } catch (err) {
    throw new Error(`${what} ${abs} cannot be read: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!st.isFile()) throw new Error(`${what} ${abs} is not a regular file`);
  return abs;
}

export class QemuVm {
  private child: ChildProcess | null = null;
  private ramBytes = 0;
  private qmpClient: QmpClient | null = null;
  private serial: SerialConsole | null = null;
  private readonly listeners: OneShotListener[] = [];
  private readonly output = new TextTail(STDERR_KEEP_CHARS);
  private exitInfo: VmExit | null = null;
  private resolveExited: (exit: VmExit) => void = () => undefined;
  private readonly exited = new Promise<VmExit>((resolve) => {
    this.resolveExited = resolve;
  });
  private finalizing: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private readonly unregisterCleanup: () => void;
  private readonly unregisterExitHook: () => void;

  private constructor(
    readonly runDir: string,
    readonly accel: Accel,
  ) {
    this.unregisterCleanup = registerCleanup(() => this.stop({ graceMs: SIGNAL_CLEANUP_GRACE_MS }));
    this.unregisterExitHook = registerExitHook(() => {
      const child = this.child;
      if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      removeRunDirSync(this.runDir);
    });
  }

  /** Boots a VM; resolves once QEMU runs and QMP is negotiated. On failure everything is torn down. */
  static async start(options: QemuVmOptions): Promise<QemuVm> {
    const o = parseOptions(options);
    o.kernel = await regularFile(o.kernel, 'kernel');
    o.initrd = await regularFile(o.initrd, 'initrd');
    const { accel, warning } = await resolveAccel(o.accel);
    if (warning) process.emitWarning(warning, { code: 'VMSEAL_KVM_FALLBACK' });
    const vm = new QemuVm(await createRunDir(o.runDirBase), accel);
    try {
      await vm.launch(o);
      return vm;
    } catch (err) {
      await vm.stop({ graceMs: 1000 }).catch(() => undefined);
      throw err;
    }
  }

  /** Guest RAM, shared with QEMU (0600, exactly memoryMiB MiB); deleted when QEMU exits. */
  get memoryFile(): string {
    return path.join(this.runDir, 'guest.ram');
  }

  /** Size of guest RAM (and of memoryFile) in bytes. */
  get memoryBytes(): number {
    if (this.ramBytes === 0) throw new Error('QEMU is not started');
    return this.ramBytes;
  }

  get qmp(): QmpClient {
    if (!this.qmpClient) throw new Error('QEMU is not started');
    return this.qmpClient;
  }

  get console(): SerialConsole {
    if (!this.serial) throw new Error('QEMU is not started');
    return this.serial;
  }

  get pid(): number {
    const pid = this.child?.pid;
    if (pid === undefined) throw new Error('QEMU is not started');
    return pid;
  }

  /** Pauses the vCPUs (QMP stop). */
  async pause(): Promise<void> {
    await this.qmp.execute('stop');
  }

  /** Resumes the vCPUs (QMP cont). */
  async resume(): Promise<void> {
    await this.qmp.execute('cont');
  }

  async status(): Promise<VmStatus> {
    return this.qmp.execute('query-status', undefined, { schema: statusSchema });
  }

  /** Presses the ACPI power button; the guest decides whether to shut down (then QEMU exits). */
  async powerdown(): Promise<void> {
    await this.qmp.execute('system_powerdown');
  }

  /** Hard reset; the guest reboots the same kernel, initrd and cmdline. */
  async reset(): Promise<void> {
    await this.qmp.execute('system_reset');
  }

  /** Resolves when QEMU has exited and its run dir is removed; rejects after `timeoutMs`. */
  waitForExit(timeoutMs: number): Promise<VmExit> {
    const done = this.exited.then(async (exit) => {
      await this.finalizing;
      return exit;
    });
    return withDeadline(done, timeoutMs, () => new Error(`QEMU did not exit within ${timeoutMs} ms${this.tails()}`));
  }

  /**
   * Ends QEMU: QMP quit, then SIGTERM, then SIGKILL, each after `graceMs` (default 5000); then
   * closes the sockets and removes the run dir including guest RAM. Idempotent.
   */
  stop(opts: { graceMs?: number } = {}): Promise<void> {
    this.stopping ??= this.terminate(opts.graceMs ?? 5000);
    return this.stopping;
  }

  private async launch(o: ParsedOptions): Promise<void> {
    // QEMU sizes an empty mem-path file itself (ftruncate) and never unlinks a file it did not
    // create; creating it here fixes its mode at 0600 whatever QEMU's umask.
    await writeFile(this.memoryFile, '', { mode: 0o600, flag: 'wx' });
    this.ramBytes = o.memoryMiB * 1024 * 1024;
    const qmpListener = await this.listen('qmp.sock');
    const consoleListener = await this.listen('console.sock');
    // stop() (e.g. from a signal) may have run during the awaits above; never spawn after it.
    if (this.stopping) throw new Error('QEMU start aborted: the VM was stopped during startup');
    const args = buildQemuArgs({
      accel: this.accel,
      kernel: o.kernel,
      initrd: o.initrd,
      cmdline: o.cmdline,
      memoryMiB: o.memoryMiB,
      cpus: o.cpus,
      memoryFile: this.memoryFile,
      qmpSocket: qmpListener.path,
      consoleSocket: consoleListener.path,
      disk: o.disk,
      name: o.name,
      extraArgs: o.extraArgs,
    });

    const child = spawnQemu(args);
    this.child = child;
    // QEMU prints most diagnostics on stderr and a few on stdout; both go to one bounded buffer.
    child.stdout?.setEncoding('utf8').on('data', (s: string) => this.output.append(s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => this.output.append(s));
    child.once('error', (err) => {
      this.output.append(`\n[spawn failed: ${err.message}]\n`);
      this.markExited({ code: null, signal: null });
    });
    child.once('close', (code, signal) => this.markExited({ code, signal }));

    const deadline = Date.now() + o.startTimeoutMs;
    const [qmpSocket, consoleSocket] = await this.duringStartup(
      Promise.all([qmpListener.accept(), consoleListener.accept()]),
      'QEMU to connect to the QMP and serial console sockets',
      deadline,
    );
    this.serial = new SerialConsole(consoleSocket, { diagnostics: () => this.stderrTail() });
    this.qmpClient = await this.duringStartup(
      QmpClient.open(qmpSocket, { timeoutMs: Math.max(1, deadline - Date.now()), diagnostics: () => this.tails() }),
      'the QMP greeting and capability negotiation',
      deadline,
    );
  }

  private async listen(name: string): Promise<OneShotListener> {
    const listener = await OneShotListener.listen(path.join(this.runDir, name));
    this.listeners.push(listener);
    if (this.finalizing) listener.close(); // finalize() already closed the others
    return listener;
  }

  /** Races a startup step against QEMU exiting and the start deadline; errors carry QEMU's output. */
  private async duringStartup<T>(work: Promise<T>, what: string, deadline: number): Promise<T> {
    const exitedEarly = this.exited.then((exit): never => {
      throw this.exitError(exit, what);
    });
    const left = Math.max(1, deadline - Date.now());
    try {
      return await withDeadline(Promise.race([work, exitedEarly]), left, () => new Error(`timed out waiting for ${what}`));
    } catch (err) {
      // A socket error usually means QEMU is on its way out; prefer the error with its exit status.
      const exit = await withDeadline(this.exited, EXIT_SETTLE_MS, () => new Error('still running')).catch(() => null);
      if (exit) throw this.exitError(exit, what);
      throw new Error(`QEMU startup failed: ${err instanceof Error ? err.message : String(err)}${this.tails()}`, { cause: err });
    }
  }

  private exitError(exit: VmExit, what: string): Error {
    const how = exit.signal ? `was killed by ${exit.signal}` : exit.code === null ? 'could not be started' : `exited with status ${exit.code}`;
    return new Error(`QEMU ${how} while waiting for ${what}${this.tails()}`);
  }

  private stderrTail(): string {
    const text = printable(this.output.last(ERROR_STDERR_CHARS)).trim();
    return text ? `QEMU stderr (last ${ERROR_STDERR_CHARS} chars at most):\n${text}` : 'QEMU stderr: (empty)';
  }

  private tails(): string {
    const parts = [this.stderrTail()];
    if (this.serial) {
      const text = printable(this.serial.lastOutput(ERROR_CONSOLE_CHARS));
      parts.push(text ? `serial console (last ${ERROR_CONSOLE_CHARS} chars at most):\n${text}` : 'serial console: (no output)');
    }
    return `\n${parts.join('\n')}`;
  }

  private markExited(exit: VmExit): void {
    if (this.exitInfo) return;
    this.exitInfo = exit;
    // QEMU is gone: release sockets and delete guest RAM now, not only when someone calls stop().
    // A failure here surfaces through stop()/waitForExit(), which await the same promise.
    this.finalize().catch(() => undefined);
    this.resolveExited(exit);
  }

  private async exitedWithin(ms: number): Promise<boolean> {
    return withDeadline(this.exited, ms, () => new Error('timeout')).then(
      () => true,
      () => false,
    );
  }

  private async terminate(graceMs: number): Promise<void> {
    const child = this.child;
    if (child && !this.exitInfo) {
      const qmp = this.qmpClient && !this.qmpClient.closed ? this.qmpClient : null;
      if (qmp) {
        // QEMU may exit before its reply arrives; the exit below is what counts.
        await qmp.execute('quit', undefined, { timeoutMs: graceMs }).catch(() => undefined);
      }
      if (!qmp || !(await this.exitedWithin(graceMs))) {
        child.kill('SIGTERM');
        if (!(await this.exitedWithin(graceMs))) {
          child.kill('SIGKILL');
          if (!(await this.exitedWithin(KILL_WAIT_MS))) {
            await this.finalize();
            throw new Error(`QEMU pid ${child.pid} did not exit within ${KILL_WAIT_MS} ms of SIGKILL${this.tails()}`);
          }
        }
      }
    }
    await this.finalize();
  }

  private finalize(): Promise<void> {
    this.finalizing ??= (async () => {
      for (const l of this.listeners) l.close();
      this.qmpClient?.close();
      this.serial?.close();
      try {
        await removeRunDir(this.runDir);
      } finally {
        this.unregisterCleanup();
        this.unregisterExitHook();
      }
    })();
    return this.finalizing;
  }
}
