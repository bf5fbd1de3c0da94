/**
 * The last `capacity` characters of a growing text, addressed by absolute position (characters
 * appended since creation). Serial consoles and QEMU's stderr are written by parties we do not
 * trust to be brief, so nothing here grows without bound.
 */
export class TextTail {
  private text = '';
  private base = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0) throw new RangeError(`TextTail capacity must be a positive integer, got ${capacity}`);
  }

  append(chunk: string): void {
    this.text += chunk;
    // Trim in batches (25 % slack) so appending stays amortised O(chunk) instead of copying per call.
    if (this.text.length > this.capacity + (this.capacity >> 2)) {
      const drop = this.text.length - this.capacity;
      this.text = this.text.slice(drop);
      this.base += drop;
    }
  }

  /** Absolute position of the first retained character. */
  get start(): number {
    return this.base;
  }

  /** Absolute position just after the last character appended. */
  get end(): number {
    return this.base + this.text.length;
  }

  /** Retained text from absolute position `from` (clamped to what is still retained). */
  since(from: number): string {
    return this.text.slice(Math.max(0, from - this.base));
  }

  /** The last `chars` characters (at most `capacity`). */
  last(chars: number): string {
    return this.text.slice(Math.max(0, this.text.length - Math.min(chars, this.capacity)));
  }
}

/**
 * Makes guest- or QEMU-written text safe to embed in error messages and logs: line ends are
 * normalised and every other control character (terminal escapes included) is shown as \xNN.
 */
export function printable(text: string): string {
  return text
    .replace(/\r\n/g, '\n')
    .replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
