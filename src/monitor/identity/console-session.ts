/**
 * The monitor's end of sealed console sessions: output of the VM's serial console is sealed into
 * numbered frames kept in a bounded backlog for the tenant to fetch through the management plane;
 * input frames are opened and taken strictly in order before they reach the guest.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { AeadError, open, seal } from '../../crypto/aead.ts';
import { deriveConsoleSessionKey } from '../../crypto/keys.ts';
import {
  CONSOLE_FRAME_MAX_DATA,
  CONSOLE_NONCE_BYTES,
  consoleAad,
  decodeConsoleFrame,
  encodeConsoleFrame,
} from '../../formats/protocol/console-frame.ts';
import { RefusalError } from './refusal.ts';

/** What a session needs of the VM's console. */
export interface ConsoleSource {
  on(event: 'data', fn: (text: string) => void): unknown;
  off(event: 'data', fn: (text: string) => void): unknown;
  write(input: Uint8Array): void;
  lastOutput(chars?: number): string;
}

const BACKLOG_FRAMES = 2048;
/** Console history sealed into the first frames, so a new session shows the current prompt. */
const HISTORY_CHARS = 4096;

export class ConsoleSession extends EventEmitter {
  readonly sessionId: string;
  readonly #key: Buffer;
  readonly #source: ConsoleSource;
  readonly #frames: Array<{ seq: number; frame: Buffer }> = [];
  readonly #onData = (text: string) => this.#push(Buffer.from(text, 'utf8'));
  #outSeq = 0;
  #inSeq = 0;
  #closed = false;

  constructor(consoleKey: Buffer, tenantNonce: Buffer, source: ConsoleSource) {
    super();
    if (tenantNonce.length !== CONSOLE_NONCE_BYTES) throw new RefusalError('TAMPER', 'console session: bad tenant nonce');
    const monitorNonce = randomBytes(CONSOLE_NONCE_BYTES);
    this.sessionId = monitorNonce.toString('hex');
    this.#key = deriveConsoleSessionKey(consoleKey, tenantNonce, monitorNonce);
    this.#source = source;
    this.#push(Buffer.from(source.lastOutput(HISTORY_CHARS), 'utf8'));
    source.on('data', this.#onData);
  }

  #push(data: Buffer): void {
    for (let at = 0; at < data.length; at += CONSOLE_FRAME_MAX_DATA) {
      const seq = ++this.#outSeq;
      const frame = seal(this.#key, encodeConsoleFrame(seq, data.subarray(at, at + CONSOLE_FRAME_MAX_DATA)), consoleAad('out', this.sessionId));
      this.#frames.push({ seq, frame });
      if (this.#frames.length > BACKLOG_FRAMES) this.#frames.shift();
    }
    this.emit('frames');
  }

  /** Sealed output frames numbered above `after`. */
  framesAfter(after: number): Array<{ seq: number; frame: Buffer }> {
    return this.#frames.filter((f) => f.seq > after);
  }

  /** Opens one input frame; it must be the next in order. Its bytes go to the guest. */
  input(sealed: Buffer): void {
    if (this.#closed) throw new Error('console session is closed');
    let plaintext: Buffer;
    try {
      plaintext = open(this.#key, sealed, consoleAad('in', this.sessionId));
    } catch (err) {
      if (err instanceof AeadError) throw new RefusalError('TAMPER', `console input does not open with this session's key (${err.code})`);
      throw err;
    }
    const { seq, data } = decodeConsoleFrame(plaintext);
    if (seq !== this.#inSeq + 1) throw new RefusalError(seq <= this.#inSeq ? 'REPLAY' : 'TAMPER', `console input #${seq} arrived when #${this.#inSeq + 1} was due`);
    this.#inSeq = seq;
    this.#source.write(data);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#source.off('data', this.#onData);
    this.emit('frames');
  }
}
