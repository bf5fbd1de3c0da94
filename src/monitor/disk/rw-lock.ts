/**
 * A readers-writer lock for promises. Writers go first: once one waits, new readers queue behind it, so a
 * stream of reads cannot starve a flush.
 */
export class RwLock {
  #readers = 0;
  #writing = false;
  readonly #writers: (() => void)[] = [];
  readonly #readersWaiting: (() => void)[] = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#writing || this.#writers.length > 0) await new Promise<void>((r) => this.#readersWaiting.push(r));
    else this.#readers++;
    try {
      return await fn();
    } finally {
      this.#readers--;
      this.#wake();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#writing || this.#readers > 0 || this.#writers.length > 0) await new Promise<void>((r) => this.#writers.push(r));
    else this.#writing = true;
    try {
      return await fn();
    } finally {
      this.#writing = false;
      this.#wake();
    }
  }

  /** Hands the lock on: to the next writer if the lock is free, else to every waiting reader. */
  #wake(): void {
    if (this.#writing || this.#readers > 0) return;
    const writer = this.#writers.shift();
    if (writer) {
      this.#writing = true;
      writer();
      return;
    }
    const readers = this.#readersWaiting.splice(0);
    this.#readers += readers.length;
    for (const r of readers) r();
  }
}
