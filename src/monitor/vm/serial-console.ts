import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { printable, TextTail } from './text-tail.ts';

/**
 * The guest's serial console (ttyS0), reached over a connected unix socket. Guest output is
 * hostile and unbounded: only the last `transcriptChars` characters are kept, as a transcript
 * addressed by absolute position so callers can `mark()` a point, send a command and
 * `waitFor()` output that arrived after it.
 *
 * Events: 'data' (string, as decoded UTF-8), 'close' (Error: why) once.
 */

const DEFAULT_TRANSCRIPT_CHARS = 1024 * 1024;
const ERROR_TAIL_CHARS = 2048;

export interface SerialConsoleOptions {
  transcriptChars?: number;
  /** Extra text for timeout errors, e.g. the tail of QEMU's stderr. */
  diagnostics?: () => string;
}

export interface WaitForOptions {
  /** Only output at or after this position (from `mark()`) can match; default 0 = anything retained. */
  since?: number;
}

interface Waiter {
  pattern: string | RegExp;
  from: number;
  /** For string patterns: transcript end at the last unsuccessful scan, to avoid rescanning. */
  scanned: number;
  resolve: (text: string) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

function describe(pattern: string | RegExp): string {
  return typeof pattern === 'string' ? JSON.stringify(pattern) : String(pattern);
}

export class SerialConsole extends EventEmitter {
  private readonly transcript: TextTail;
  private readonly decoder = new StringDecoder('utf8');
  private readonly waiters = new Set<Waiter>();
  private readonly diagnostics: (() => string) | undefined;
  private closeReason: Error | null = null;

  constructor(
    private readonly socket: net.Socket,
    opts: SerialConsoleOptions = {},
  ) {
    super();
    this.transcript = new TextTail(opts.transcriptChars ?? DEFAULT_TRANSCRIPT_CHARS);
    this.diagnostics = opts.diagnostics;
    socket.on('data', (chunk: Buffer) => this.append(this.decoder.write(chunk)));
    socket.on('error', (err) => this.shutdown(new Error(`serial console socket error: ${err.message}`)));
    socket.on('close', () => this.shutdown(new Error('serial console closed by QEMU')));
  }

  get closed(): boolean {
    return this.closeReason !== null;
  }

  /** The current end of the transcript; pass it as `since` to match only later output. */
  mark(): number {
    return this.transcript.end;
  }

  /** Retained output from position `since` (default: everything retained). */
  text(since = 0): string {
    return this.transcript.since(since);
  }

  /** The last `chars` characters of output, for error messages. */
  lastOutput(chars = ERROR_TAIL_CHARS): string {
    return this.transcript.last(chars);
  }

  /** Sends input to the guest. Throws if the console is closed. */
  write(input: string | Uint8Array): void {
    if (this.closeReason) throw new Error(`serial console is closed: ${this.closeReason.message}`);
    this.socket.write(input);
  }

  /**
   * Resolves with the output from `since` through the end of the first match of `pattern`.
   * Rejects after `timeoutMs`, or when the console closes, with the tail of the output.
   */
  waitFor(pattern: string | RegExp, timeoutMs: number, opts: WaitForOptions = {}): Promise<string> {
    // A fresh non-global copy: a caller's /g or /y regex would otherwise carry lastIndex between scans.
    const matcher = typeof pattern === 'string' ? pattern : new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    const from = opts.since ?? 0;
    return new Promise<string>((resolve, reject) => {
      const waiter: Waiter = {
        pattern: matcher,
        from,
        scanned: from,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(this.failure(`waited ${timeoutMs} ms for ${describe(pattern)} on the serial console`, from));
        }, timeoutMs),
      };
      if (this.check(waiter)) return;
      if (this.closeReason) {
        clearTimeout(waiter.timer);
        reject(this.failure(`serial console closed while waiting for ${describe(pattern)}`, from));
        return;
      }
      this.waiters.add(waiter);
    });
  }

  /** Disconnects from QEMU; waiters reject. The transcript stays readable. Idempotent. */
  close(): void {
    this.shutdown(new Error('serial console closed'));
  }

  private append(text: string): void {
    if (text === '') return;
    this.transcript.append(text);
    this.emit('data', text);
    for (const w of this.waiters) this.check(w);
  }

  /** Settles `w` if its pattern now matches; returns whether it did. */
  private check(w: Waiter): boolean {
    const from = Math.max(w.from, this.transcript.start);
    const hay = this.transcript.since(from);
    let end = -1;
    if (typeof w.pattern === 'string') {
      const resumeAt = Math.max(0, w.scanned - from - w.pattern.length + 1);
      const at = hay.indexOf(w.pattern, resumeAt);
      if (at >= 0) end = at + w.pattern.length;
      else w.scanned = this.transcript.end;
    } else {
      const m = w.pattern.exec(hay);
      if (m) end = m.index + m[0].length;
    }
    if (end < 0) return false;
    clearTimeout(w.timer);
    this.waiters.delete(w);
    w.resolve(hay.slice(0, end));
    return true;
  }

  private failure(message: string, since: number): Error {
    const output = printable(this.transcript.since(Math.max(since, this.transcript.end - ERROR_TAIL_CHARS)));
    const extra = this.diagnostics?.().trim();
    return new Error(
      `${message} (since position ${since}); console output after that${output ? ` (last ${ERROR_TAIL_CHARS} chars at most):\n${output}` : ': (none)'}` +
        (extra ? `\n${extra}` : ''),
    );
  }

  private shutdown(reason: Error): void {
    if (this.closeReason) return;
    this.closeReason = reason;
    this.socket.destroy();
    this.append(this.decoder.end());
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(this.failure(`serial console closed (${reason.message}) while waiting for ${describe(w.pattern)}`, w.from));
    }
    this.waiters.clear();
    this.emit('close', reason);
  }
}
