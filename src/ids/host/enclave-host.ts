/**
 * The host library's handle on one enclave process: starts it through the loader, makes ECALLs and
 * serves its OCALLs (channel reads go to `relayRead`, logs to `onLog`). Everything it passes along is
 * either sealed (channel frames, registration keys) or meant for the host (results, heartbeat MACs).
 * A malformed stream from the enclave kills the enclave: a host cannot resynchronise a broken pipe.
 */
import {
  Ecall,
  Ocall,
  decodeJsonPayload,
  decodePsRows,
  encodeJson,
  heartbeatResultSchema,
  initResultSchema,
  logParamsSchema,
  checkResultSchema,
  registerResultSchema,
  registeredResultSchema,
  type EnclaveConfig,
  type InitParams,
  type PsRowWire,
} from '../../formats/protocol/enclave-call.ts';
import type { z } from 'zod';
import { CallPeer, PipeClosedError } from '../enclave/call-peer.ts';
import { loadEnclave, type LoaderOptions } from '../enclave/loader.ts';
import type { SandboxedProcess } from '../enclave/sandbox.ts';

export interface EnclaveHostOptions extends LoaderOptions {
  /** Relays one sealed channel frame to the monitor and returns its sealed reply. */
  relayRead?: (frame: Buffer) => Promise<Buffer>;
  onLog?: (level: string, message: string) => void;
  /** The enclave's stderr lines (diagnostics; default: dropped). */
  onStderr?: (line: string) => void;
}

export type CheckResult = z.output<typeof checkResultSchema>;

export class EnclaveHost {
  /** Resolves when the enclave process exits. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private brokenReason: Error | undefined;

  private constructor(
    readonly child: SandboxedProcess,
    readonly measurement: string,
    readonly netns: boolean,
    private readonly peer: CallPeer,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  static async start(config: EnclaveConfig, opts: EnclaveHostOptions = {}): Promise<EnclaveHost> {
    const loaded = await loadEnclave(config, opts);
    const { child } = loaded;
    let stderrTail = '';
    child.stderr.on('data', (c: Buffer) => {
      stderrTail = (stderrTail + c.toString('utf8')).slice(-4000);
      const lines = stderrTail.split('\n');
      stderrTail = lines.pop() ?? '';
      for (const line of lines) opts.onStderr?.(line);
    });
    const serve = async (type: number, payload: Buffer): Promise<Uint8Array> => {
      if (type === Ocall.channelRead) {
        if (!opts.relayRead) throw new Error('this host relays no channel reads');
        return opts.relayRead(payload);
      }
      const log = decodeJsonPayload('log', logParamsSchema, payload);
      opts.onLog?.(log.level, log.message);
      return encodeJson({});
    };
    let host: EnclaveHost | undefined;
    const peer = new CallPeer('host', child.stdout, child.stdin, serve, (reason) => {
      if (host) host.brokenReason = reason;
      if (!(reason instanceof PipeClosedError)) child.kill('SIGKILL');
    });
    child.stdin.on('error', () => {});
    child.once('exit', (code, signal) => peer.break(new PipeClosedError(`the enclave exited (${signal ?? `code ${code}`})`)));
    host = new EnclaveHost(child, loaded.measurement, loaded.netns, peer);
    return host;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Why the pipe broke, if it did. */
  get broken(): Error | undefined {
    return this.brokenReason ?? this.peer.closed;
  }

  private async ecall<S extends z.ZodType>(type: number, what: string, params: unknown, schema: S): Promise<z.output<S>> {
    return decodeJsonPayload(what, schema, await this.peer.call(type, encodeJson(params)));
  }

  /** Hands the enclave its configuration and runtime parameters; returns the measurement it computed of itself. */
  init(params: InitParams): Promise<{ measurement: string }> {
    return this.ecall(Ecall.init, 'init result', params, initResultSchema);
  }

  register(): Promise<z.output<typeof registerResultSchema>> {
    return this.ecall(Ecall.register, 'register result', {}, registerResultSchema);
  }

  registered(signature: string): Promise<{ ok: true }> {
    return this.ecall(Ecall.registered, 'registered result', { signature }, registeredResultSchema);
  }

  heartbeat(seq: number, nonce: Buffer): Promise<{ status: number; mac: Buffer }> {
    return this.ecall(Ecall.heartbeat, 'heartbeat result', { seq, nonce: nonce.toString('base64') }, heartbeatResultSchema);
  }

  /** Runs one enabled check with the settings of the measured configuration. */
  runCheck(name: string): Promise<CheckResult> {
    return this.ecall(Ecall.runCheck, 'check result', { name }, checkResultSchema);
  }

  async pslist(): Promise<PsRowWire[]> {
    return decodePsRows(await this.peer.call(Ecall.pslist, encodeJson({})));
  }

  /** Asks the enclave to stop; kills it if it has not exited within `graceMs`. */
  async stop(graceMs = 2000): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.peer.call(Ecall.stop, encodeJson({})).catch(() => this.child.kill('SIGKILL'));
      await this.exited;
      clearTimeout(timer);
    }
  }
}
