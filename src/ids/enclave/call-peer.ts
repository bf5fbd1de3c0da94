/**
 * One end of the ECALL/OCALL pipe (formats/protocol/enclave-call.ts). The host side makes ECALLs and
 * serves OCALLs; the enclave side the reverse. Both run the same loop: incoming calls go to `serve`,
 * incoming results settle the matching outstanding call. A malformed stream, a result nobody asked for
 * or a call in the wrong direction breaks the peer: every outstanding call fails and `onBroken` says why.
 */
import type { Readable, Writable } from 'node:stream';
import {
  EnclaveCallError,
  FrameDecoder,
  FrameKind,
  RESULT_OK,
  decodeResult,
  encodeFrameHeader,
  errorResult,
  type Frame,
} from '../../formats/protocol/enclave-call.ts';

export type CallRole = 'host' | 'enclave';

/** Serves one incoming call; a thrown error becomes an error result (the stream goes on). */
export type CallServer = (type: number, payload: Buffer) => Promise<Uint8Array>;

/** The other side closed the pipe: the normal end of an enclave. */
export class PipeClosedError extends EnclaveCallError {
  override name = 'PipeClosedError';
}

/** The peer answered a call with an error result. */
export class RemoteCallError extends Error {
  override name = 'RemoteCallError';
}

const OK_STATUS = Buffer.of(RESULT_OK);

interface Pending {
  type: number;
  resolve: (body: Buffer) => void;
  reject: (err: Error) => void;
}

export class CallPeer {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private broken: Error | undefined;
  private readonly callKind: FrameKind;
  private readonly resultKind: FrameKind;
  private readonly servedKind: FrameKind;
  private readonly answerKind: FrameKind;

  constructor(
    readonly role: CallRole,
    private readonly input: Readable,
    private readonly output: Writable,
    private readonly serve: CallServer,
    private readonly onBroken: (err: Error) => void = () => {},
  ) {
    const host = role === 'host';
    this.callKind = host ? FrameKind.ecall : FrameKind.ocall;
    this.resultKind = host ? FrameKind.ecallResult : FrameKind.ocallResult;
    this.servedKind = host ? FrameKind.ocall : FrameKind.ecall;
    this.answerKind = host ? FrameKind.ocallResult : FrameKind.ecallResult;
    input.on('data', (chunk: Buffer) => this.receive(chunk));
    input.on('end', () => this.break(new PipeClosedError(`the ${host ? 'enclave' : 'host'} closed the pipe`)));
    input.on('error', (err) => this.break(err));
    output.on('error', (err) => this.break(err));
  }

  /** Makes a call; resolves with the result body, rejects with RemoteCallError or the break reason. */
  call(type: number, payload: Uint8Array): Promise<Buffer> {
    if (this.broken) return Promise.reject(this.broken);
    const callId = this.nextId;
    this.nextId = this.nextId === 0xffff_ffff ? 1 : this.nextId + 1;
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(callId, { type, resolve, reject });
      try {
        this.send(this.callKind, type, callId, [payload]);
      } catch (err) {
        this.pending.delete(callId);
        reject(err as Error);
      }
    });
  }

  get closed(): Error | undefined {
    return this.broken;
  }

  /** Fails every outstanding call and ignores anything that arrives later. */
  break(reason: Error): void {
    if (this.broken) return;
    this.broken = reason;
    this.input.removeAllListeners('data');
    for (const p of this.pending.values()) p.reject(reason);
    this.pending.clear();
    this.onBroken(reason);
  }

  private receive(chunk: Buffer): void {
    if (this.broken) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.break(err as Error);
      return;
    }
    for (const frame of frames) {
      if (this.broken) return;
      if (frame.kind === this.resultKind) this.settle(frame);
      else if (frame.kind === this.servedKind) void this.answer(frame);
      else this.break(new EnclaveCallError(`the ${this.role === 'host' ? 'enclave' : 'host'} sent a frame of kind ${frame.kind}, which only flows the other way`));
    }
  }

  private settle(frame: Frame): void {
    const p = this.pending.get(frame.callId);
    if (!p || p.type !== frame.type) {
      this.break(new EnclaveCallError(`result for call ${frame.callId} (type ${frame.type}) that is not outstanding`));
      return;
    }
    this.pending.delete(frame.callId);
    try {
      const result = decodeResult(frame.payload);
      if (result.ok) p.resolve(result.body);
      else p.reject(new RemoteCallError(result.error));
    } catch (err) {
      p.reject(err as Error);
      this.break(err as Error);
    }
  }

  /**
   * Writes one frame whose payload is `parts` in order, header and parts in one corked write: the
   * payload (a channel reply of a few hundred KiB) is handed to the pipe as it is, never copied to
   * be framed. Throws before writing anything if the frame is invalid or too large.
   */
  private send(kind: FrameKind, type: number, callId: number, parts: readonly Uint8Array[]): void {
    let bytes = 0;
    for (const part of parts) bytes += part.length;
    const head = encodeFrameHeader(kind, type, callId, bytes);
    this.output.cork();
    try {
      this.output.write(head);
      for (const part of parts) if (part.length > 0) this.output.write(part);
    } finally {
      this.output.uncork();
    }
  }

  private async answer(frame: Frame): Promise<void> {
    let parts: Uint8Array[];
    try {
      parts = [OK_STATUS, await this.serve(frame.type, frame.payload)];
    } catch (err) {
      parts = [errorResult(err instanceof Error ? err.message : String(err))];
    }
    if (this.broken) return;
    try {
      this.send(this.answerKind, frame.type, frame.callId, parts);
    } catch (err) {
      // A result too large to frame is reported as an error result instead.
      this.send(this.answerKind, frame.type, frame.callId, [errorResult((err as Error).message)]);
    }
  }
}
