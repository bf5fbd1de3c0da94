/** Plain counters over all connections of one server, e.g. to see whether a paused VM still does I/O. */
export interface NbdServerStats {
  connections: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  flushes: number;
  trims: number;
  writeZeroes: number;
  /** Requests answered with an error (refused by the checks or failed in the backend). */
  errors: number;
}

export function emptyStats(): NbdServerStats {
  return { connections: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0, trims: 0, writeZeroes: 0, errors: 0 };
}

/** What the server logs through; pino's Logger fits. */
export interface NbdLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}
