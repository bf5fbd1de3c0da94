/**
 * Durable command counters, one per VM id, in the monitor's SQLite state. `advance` is one
 * transaction: the new counter is committed (fsync'd with synchronous=FULL) before the caller acts.
 */
import type Database from 'better-sqlite3';
import type { CounterStore } from '../identity/command-gate.ts';

export class VmCounters implements CounterStore {
  readonly #advance: (vmId: string, counter: number) => boolean;

  constructor(db: Database.Database) {
    db.exec('CREATE TABLE IF NOT EXISTS vm_command_counters (vm_id TEXT PRIMARY KEY, last_counter INTEGER NOT NULL)');
    const upsert = db.prepare(
      `INSERT INTO vm_command_counters (vm_id, last_counter) VALUES (?, ?)
       ON CONFLICT (vm_id) DO UPDATE SET last_counter = excluded.last_counter WHERE excluded.last_counter > last_counter`,
    );
    this.#advance = (vmId, counter) => upsert.run(vmId, counter).changes === 1;
  }

  advance(vmId: string, counter: number): boolean {
    return this.#advance(vmId, counter);
  }
}
