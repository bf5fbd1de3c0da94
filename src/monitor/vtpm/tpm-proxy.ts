/**
 * The TPM proxy between QEMU's tpm-emulator backend and a VM's swtpm.
 *
 * Control channel: QEMU connects to `ctrlPath` (in the VM's private run dir). Every control command is
 * framed by its known size and relayed to swtpm, except
 *   - CMD_SET_DATAFD: the proxy keeps QEMU's data fd; swtpm already has the proxy's own socketpair end;
 *   - CMD_GET_STATEBLOB / CMD_SET_STATEBLOB: refused, as their capability bits are hidden: they would let
 *     the host export the TPM's state decrypted, or replace it;
 *   - anything unframeable: the connection is closed.
 * Data channel: every TPM command from the guest is parsed (src/formats/tpm2). A command that is malformed,
 * truncated, oversized or unknown is answered with the TPM error code a TPM gives it, and never forwarded.
 * A well-formed one goes to the policy hook, which may forward it to this VM's swtpm, answer it, or send it
 * to another VM's swtpm (read-only NV sharing). QEMU sends one command and waits for its response, so the
 * proxy handles one at a time and drops bytes that arrive while one is in flight.
 */
import { Socket } from 'node:net';
import { unlink } from 'node:fs/promises';
import { HEADER_SIZE, TPM_CC, TPM_CC_VENDOR_BIT, TPM_RC, TPM_RH, Tpm2FormatError, errorResponse, parseCommand, rcForHandle, type ParsedCommand } from '../../formats/tpm2/index.ts';
import { acceptConnection, closeFd, listenUnix, watchReadable, type ReadableWatch } from '../unix/fd-passing.ts';
import { NativeSocket } from './native-socket.ts';
import type { SwtpmControl } from './swtpm-control.ts';
import { CMD, CTRL_FRAMES, GET_STATEBLOB_RESPONSE, MAX_STATEBLOB, PTM_RES, STATEBLOB_HEADER, WITHHELD_CAPS, ctrlResult } from './swtpm-ctrl.ts';
import type { TpmEndpoint } from './tpm-channel.ts';

/** swtpm's (and libtpms's) TPM_PT_MAX_COMMAND_SIZE. */
export const PROXY_MAX_COMMAND_SIZE = 4096;

/**
 * `observe` sees the VM's own swtpm's response to a forwarded command before the guest does; `rewrite` then
 * turns it into what the guest gets (vendor-capability.ts advertises vmseal's vendor commands so).
 */
export type PolicyDecision = { action: 'forward'; observe?: (response: Buffer) => void; rewrite?: (response: Buffer) => Buffer } | { action: 'respond'; response: Buffer } | { action: 'forward-to'; instance: TpmEndpoint };

/** Decides what happens to one well-formed guest command. Throwing answers TPM_RC_FAILURE. */
export type CommandPolicy = (cmd: ParsedCommand, raw: Buffer) => PolicyDecision | Promise<PolicyDecision>;

export const forwardAll: CommandPolicy = () => ({ action: 'forward' });

export interface TpmProxyOptions {
  ctrlPath: string;
  swtpm: { control: SwtpmControl; tpm: TpmEndpoint };
  policy?: CommandPolicy;
  /**
   * Runs once after the first successful TPM2_Startup following each CMD_INIT (a TPM reset), before that
   * response reaches the guest. A failure turns the response into TPM_RC_FAILURE.
   */
  onFirstStartup?: (tpm: TpmEndpoint) => Promise<void>;
  maxCommandSize?: number;
  log?: (msg: string) => void;
}

export interface TpmProxyStats {
  forwarded: number;
  /** Answered with an error without reaching any TPM: did not parse. */
  rejected: number;
  answeredByPolicy: number;
  forwardedElsewhere: number;
  /** Bytes dropped because they arrived while a command was in flight or after a bad size. */
  droppedBytes: number;
  measuredBoots: number;
}

export class TpmProxy {
  readonly stats: TpmProxyStats = { forwarded: 0, rejected: 0, answeredByPolicy: 0, forwardedElsewhere: 0, droppedBytes: 0, measuredBoots: 0 };
  #listenFd: number | undefined;
  #listenWatch: ReadableWatch | undefined;
  #ctrl: NativeSocket | undefined;
  #ctrlBuffer: Buffer = Buffer.alloc(0);
  #ctrlFds: number[] = [];
  #ctrlBusy = false;
  #guest: Socket | undefined;
  #guestBuffer: Buffer = Buffer.alloc(0);
  #guestBusy = false;
  #armed = false;
  #closed = false;
  readonly #policy: CommandPolicy;
  readonly #max: number;

  private constructor(private readonly o: TpmProxyOptions) {
    this.#policy = o.policy ?? forwardAll;
    this.#max = o.maxCommandSize ?? PROXY_MAX_COMMAND_SIZE;
  }

  /** Listens on `ctrlPath` for QEMU; the first connection is kept and the listener then closed. */
  static listen(o: TpmProxyOptions): TpmProxy {
    const p = new TpmProxy(o);
    p.#listenFd = listenUnix(o.ctrlPath);
    p.#listenWatch = watchReadable(p.#listenFd, () => p.#accept());
    return p;
  }

  #log(msg: string): void {
    this.o.log?.(msg);
  }

  #accept(): void {
    if (this.#listenFd === undefined) return;
    let fd: number | undefined;
    try {
      fd = acceptConnection(this.#listenFd);
    } catch (err) {
      this.#log(`tpm proxy: accept failed: ${(err as Error).message}`);
    }
    if (fd === undefined) return;
    this.#stopListening();
    this.#ctrl = new NativeSocket(fd, {
      onData: (data, fds) => {
        this.#ctrlFds.push(...fds);
        this.#ctrlBuffer = Buffer.concat([this.#ctrlBuffer, data]);
        this.#pumpCtrl();
      },
      onClose: (reason) => {
        this.#log(`tpm proxy: control connection closed: ${reason}`);
        this.#dropFds();
      },
    });
  }

  #stopListening(): void {
    this.#listenWatch?.stop();
    this.#listenWatch = undefined;
    if (this.#listenFd !== undefined) closeFd(this.#listenFd);
    this.#listenFd = undefined;
    void unlink(this.o.ctrlPath).catch(() => undefined);
  }

  #dropFds(): void {
    for (const fd of this.#ctrlFds.splice(0)) closeFd(fd);
  }

  #replyCtrl(b: Buffer): void {
    try {
      this.#ctrl?.send(b);
    } catch (err) {
      this.#ctrl?.close(`write failed: ${(err as Error).message}`);
    }
  }

  /** Handles every complete control message in the buffer, one at a time. */
  #pumpCtrl(): void {
    while (!this.#ctrlBusy && this.#ctrl && !this.#ctrl.closed && this.#ctrlBuffer.length >= 4) {
      const buf = this.#ctrlBuffer;
      const code = buf.readUInt32BE(0);
      if (code === CMD.GET_STATEBLOB) {
        if (buf.length < 4 + STATEBLOB_HEADER) return;
        this.#ctrlBuffer = buf.subarray(4 + STATEBLOB_HEADER);
        this.#log('tpm proxy: refused CMD_GET_STATEBLOB');
        this.#replyCtrl(ctrlResult(PTM_RES.FAIL, GET_STATEBLOB_RESPONSE));
        continue;
      }
      if (code === CMD.SET_STATEBLOB) {
        if (buf.length < 4 + STATEBLOB_HEADER) return;
        const length = buf.readUInt32BE(4 + 8);
        if (length > MAX_STATEBLOB) return this.#ctrl.close(`CMD_SET_STATEBLOB of ${length} bytes`);
        if (buf.length < 4 + STATEBLOB_HEADER + length) return;
        this.#ctrlBuffer = buf.subarray(4 + STATEBLOB_HEADER + length);
        this.#log('tpm proxy: refused CMD_SET_STATEBLOB');
        this.#replyCtrl(ctrlResult(PTM_RES.FAIL));
        continue;
      }
      if (code === CMD.SET_DATAFD) {
        this.#ctrlBuffer = buf.subarray(4);
        const fd = this.#ctrlFds.shift();
        this.#dropFds();
        if (fd === undefined) {
          this.#replyCtrl(ctrlResult(PTM_RES.BAD_PARAMETER));
          continue;
        }
        this.#adoptGuest(fd);
        this.#replyCtrl(ctrlResult(PTM_RES.SUCCESS));
        continue;
      }
      const frame = CTRL_FRAMES.get(code);
      if (!frame) return this.#ctrl.close(`unknown control command 0x${code.toString(16)}`);
      if (buf.length < 4 + frame.request) return;
      // The padded form is recognised by length: QEMU writes each control message whole and waits for its answer.
      const size = frame.requestPadded !== undefined && buf.length - 4 >= frame.requestPadded ? frame.requestPadded : frame.request;
      const request = Buffer.from(buf.subarray(4, 4 + size));
      this.#ctrlBuffer = buf.subarray(4 + size);
      this.#dropFds(); // descriptors belong only to SET_DATAFD
      this.#ctrlBusy = true;
      void this.#relayCtrl(code, request, frame.response).finally(() => {
        this.#ctrlBusy = false;
        this.#pumpCtrl();
      });
    }
  }

  async #relayCtrl(code: number, request: Buffer, responseSize: number): Promise<void> {
    let rsp: Buffer;
    try {
      rsp = await this.o.swtpm.control.request(code, request, responseSize);
    } catch (err) {
      this.#log(`tpm proxy: swtpm control failed: ${(err as Error).message}`);
      rsp = code === CMD.GET_CAPABILITY ? Buffer.alloc(8) : ctrlResult(PTM_RES.FAIL, responseSize);
    }
    if (code === CMD.GET_CAPABILITY) {
      rsp.writeBigUInt64BE(rsp.readBigUInt64BE(0) & ~WITHHELD_CAPS);
    } else if (code === CMD.INIT && rsp.readUInt32BE(0) === PTM_RES.SUCCESS) {
      // A reset: PCRs are back to zero, the next successful Startup starts a new boot.
      this.#armed = true;
    }
    this.#replyCtrl(rsp);
  }

  #adoptGuest(fd: number): void {
    this.#guest?.destroy();
    this.#guestBuffer = Buffer.alloc(0);
    const s = new Socket({ fd, readable: true, writable: true });
    this.#guest = s;
    s.on('data', (d: Buffer) => this.#guestData(s, d));
    s.on('error', (e) => this.#log(`tpm proxy: guest data channel: ${e.message}`));
  }

  #guestData(s: Socket, d: Buffer): void {
    if (s !== this.#guest) return;
    if (this.#guestBusy) {
      this.stats.droppedBytes += d.length;
      return;
    }
    this.#guestBuffer = Buffer.concat([this.#guestBuffer, d]);
    if (this.#guestBuffer.length < HEADER_SIZE) return;
    const size = this.#guestBuffer.readUInt32BE(2);
    if (size < HEADER_SIZE || size > this.#max) {
      // Answered now: no more bytes of this command are worth waiting for.
      this.stats.droppedBytes += this.#guestBuffer.length;
      this.#guestBuffer = Buffer.alloc(0);
      this.stats.rejected++;
      s.write(errorResponse(TPM_RC.COMMAND_SIZE));
      return;
    }
    if (this.#guestBuffer.length < size) return;
    const command = Buffer.from(this.#guestBuffer.subarray(0, size));
    this.stats.droppedBytes += this.#guestBuffer.length - size;
    this.#guestBuffer = Buffer.alloc(0);
    this.#guestBusy = true;
    void this.handleCommand(command).then((rsp) => {
      this.#guestBusy = false;
      if (!s.destroyed) s.write(rsp);
    });
  }

  /** The response to one complete guest command; never throws. Exposed for tests and benchmarks. */
  async handleCommand(command: Buffer): Promise<Buffer> {
    let cmd: ParsedCommand;
    try {
      cmd = parseCommand(command, { maxSize: this.#max });
    } catch (err) {
      this.stats.rejected++;
      if (err instanceof Tpm2FormatError) return errorResponse(err.rc);
      return errorResponse(TPM_RC.FAILURE);
    }
    if (touchesEndorsementControl(cmd)) {
      this.stats.rejected++;
      return errorResponse(rcForHandle(TPM_RC.HIERARCHY, 1));
    }
    try {
      const decision = await this.#policy(cmd, command);
      if (decision.action === 'respond') {
        this.stats.answeredByPolicy++;
        return decision.response;
      }
      // vmseal's vendor commands are the policy's to answer; no TPM behind the proxy knows them.
      if (cmd.commandCode & TPM_CC_VENDOR_BIT) {
        this.stats.rejected++;
        return errorResponse(TPM_RC.COMMAND_CODE);
      }
      if (decision.action === 'forward-to') {
        this.stats.forwardedElsewhere++;
        return await decision.instance.transact(command);
      }
      this.stats.forwarded++;
      const rsp = await this.o.swtpm.tpm.transact(command);
      decision.observe?.(rsp);
      if (cmd.commandCode === TPM_CC.Startup && this.#armed && rsp.length >= HEADER_SIZE && rsp.readUInt32BE(6) === TPM_RC.SUCCESS) {
        this.#armed = false;
        if (this.o.onFirstStartup) {
          await this.o.onFirstStartup(this.o.swtpm.tpm);
          this.stats.measuredBoots++;
        }
      }
      return decision.rewrite ? decision.rewrite(rsp) : rsp;
    } catch (err) {
      this.#log(`tpm proxy: ${cmd.name}: ${(err as Error).message}`);
      return errorResponse(TPM_RC.FAILURE);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopListening();
    this.#ctrl?.close();
    this.#guest?.destroy();
    this.#dropFds();
  }
}

/**
 * The monitor re-creates its attestation key under the endorsement hierarchy with an empty auth
 * (attestation-key.ts). A guest that set an endorsement password or disabled the hierarchy would stop
 * attestation (never fool it), so both are refused: HierarchyChangeAuth on TPM_RH_ENDORSEMENT, and
 * HierarchyControl whose `enable` parameter names TPM_RH_ENDORSEMENT.
 */
function touchesEndorsementControl(cmd: ParsedCommand): boolean {
  if (cmd.commandCode === TPM_CC.HierarchyChangeAuth) return cmd.handles[0] === TPM_RH.ENDORSEMENT;
  if (cmd.commandCode !== TPM_CC.HierarchyControl) return false;
  return cmd.parameters.length >= 4 && cmd.parameters.readUInt32BE(0) === TPM_RH.ENDORSEMENT;
}
