/**
 * The monitor's alert log: every refused request and every integrity failure, committed to SQLite
 * before the refusal is answered, so the record survives whatever the management plane does next.
 */
import type Database from 'better-sqlite3';

/** WRITE_PROTECT: a guest write to a protected file's blocks was refused (docs/integrity.md). */
export const ALERT_KINDS = ['REDIRECT', 'REPLAY', 'TAMPER', 'BAD_KERNEL', 'BAD_KEY_OR_DISK', 'DISK_FAILURE', 'BAD_SIGNATURE', 'WRONG_VM', 'POLICY', 'WRITE_PROTECT'] as const;
export type AlertKind = (typeof ALERT_KINDS)[number];

export interface Alert {
  id: number;
  at: string;
  kind: AlertKind;
  vmId: string | null;
  detail: string;
}

export class AlertLog {
  readonly #insert: Database.Statement;
  readonly #since: Database.Statement;

  constructor(db: Database.Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS alerts (
      id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, vm_id TEXT, detail TEXT NOT NULL)`);
    this.#insert = db.prepare('INSERT INTO alerts (at, kind, vm_id, detail) VALUES (?, ?, ?, ?)');
    this.#since = db.prepare('SELECT id, at, kind, vm_id AS vmId, detail FROM alerts WHERE id > ? ORDER BY id LIMIT ?');
  }

  raise(kind: AlertKind, vmId: string | null, detail: string): Alert {
    const at = new Date().toISOString();
    const id = Number(this.#insert.run(at, kind, vmId, detail).lastInsertRowid);
    return { id, at, kind, vmId, detail };
  }

  /** Alerts with an id above `afterId`, oldest first, at most `limit`. */
  list(afterId = 0, limit = 1000): Alert[] {
    return this.#since.all(afterId, limit) as Alert[];
  }
}
