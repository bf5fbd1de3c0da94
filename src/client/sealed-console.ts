/**
 * The tenant's end of the sealed console. Output frames must arrive numbered 1, 2, 3, …: a gap means
 * the management plane dropped output (reported, since it cannot be hidden); a frame that does not
 * open or repeats a number is refused. Input is sealed and numbered the same way.
 */
import { randomBytes } from 'node:crypto';
import { AeadError, open, seal } from '../crypto/aead.ts';
import { deriveConsoleSessionKey } from '../crypto/keys.ts';
import {
  CONSOLE_FRAME_MAX_DATA,
  CONSOLE_NONCE_BYTES,
  consoleAad,
  consoleFramesResponseSchema,
  consoleOpenResponseSchema,
  decodeConsoleFrame,
  encodeConsoleFrame,
} from '../formats/protocol/console-frame.ts';
import type { MgmtClient } from './mgmt-client.ts';

export class ConsoleIntegrityError extends Error {
  override name = 'ConsoleIntegrityError';
}

export class SealedConsole {
  #inSeq = 0;
  #outSeq = 0;
  #closed = false;

  private constructor(
    private readonly mgmt: MgmtClient,
    private readonly vmId: string,
    readonly sessionId: string,
    private readonly key: Buffer,
  ) {}

  static async open(mgmt: MgmtClient, vmId: string, consoleKey: Buffer): Promise<SealedConsole> {
    const tenantNonce = randomBytes(CONSOLE_NONCE_BYTES);
    const { sessionId } = consoleOpenResponseSchema.parse(await mgmt.openConsole(vmId, tenantNonce.toString('base64')));
    return new SealedConsole(mgmt, vmId, sessionId, deriveConsoleSessionKey(consoleKey, tenantNonce, Buffer.from(sessionId, 'hex')));
  }

  /**
   * Waits up to `waitMs` for output and returns it; `onGap(n)` hears about n frames the management
   * plane withheld (the monitor's backlog is bounded too, so a very slow reader also sees gaps).
   */
  async read(waitMs = 10_000, onGap?: (missing: number) => void): Promise<Buffer> {
    const { frames } = consoleFramesResponseSchema.parse(await this.mgmt.consoleFrames(this.vmId, this.sessionId, this.#outSeq, waitMs));
    const out: Buffer[] = [];
    for (const f of frames) {
      let plaintext: Buffer;
      try {
        plaintext = open(this.key, Buffer.from(f.frame, 'base64'), consoleAad('out', this.sessionId));
      } catch (err) {
        if (err instanceof AeadError) throw new ConsoleIntegrityError(`console frame #${f.seq} was not sealed by the monitor (${err.code})`);
        throw err;
      }
      const { seq, data } = decodeConsoleFrame(plaintext);
      if (seq <= this.#outSeq) throw new ConsoleIntegrityError(`console frame #${seq} replayed (expected #${this.#outSeq + 1})`);
      if (seq > this.#outSeq + 1) onGap?.(seq - this.#outSeq - 1);
      this.#outSeq = seq;
      out.push(data);
    }
    return Buffer.concat(out);
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.#closed) throw new Error('console is closed');
    for (let at = 0; at < data.length; at += CONSOLE_FRAME_MAX_DATA) {
      const seq = ++this.#inSeq;
      const frame = seal(this.key, encodeConsoleFrame(seq, data.subarray(at, at + CONSOLE_FRAME_MAX_DATA)), consoleAad('in', this.sessionId));
      await this.mgmt.consoleInput(this.vmId, this.sessionId, frame.toString('base64'));
    }
  }

  close(): void {
    this.#closed = true;
  }
}
