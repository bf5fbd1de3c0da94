/**
 * The authority's attestation state: `attest.db` (SQLite, WAL, synchronous=FULL so a commit survives a
 * crash) in the authority directory. Every attestation is recorded as pending (with its nonce) before
 * the nonce leaves, and its verdict is committed before anyone is told; a revocation notice is
 * committed before it is delivered. Migrations append to MIGRATIONS, each with its user_version bump.
 */
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { AttestEnroll, SignedNotice, VerdictCode } from '../../formats/protocol/attestation.ts';

export const ATTEST_DB_FILE = 'attest.db';

const MIGRATIONS: readonly { version: number; sql: string }[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE vms (
        vm_id       TEXT PRIMARY KEY CHECK (length(vm_id) = 32),
        enrollment  TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('pending', 'trusted', 'revoked')),
        enrolled_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE attestations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        vm_id       TEXT NOT NULL REFERENCES vms (vm_id),
        nonce       BLOB NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        ok          INTEGER CHECK (ok IN (0, 1)),
        code        TEXT,
        reason      TEXT,
        path        TEXT,
        digest      TEXT,
        pcrs        TEXT,
        ima_entries INTEGER
      ) STRICT;
      CREATE INDEX attestations_by_vm ON attestations (vm_id, id);
      CREATE TABLE notices (
        attestation_id INTEGER PRIMARY KEY REFERENCES attestations (id),
        vm_id          TEXT NOT NULL REFERENCES vms (vm_id),
        signed         TEXT NOT NULL,
        webhook        TEXT,
        attempts       INTEGER NOT NULL DEFAULT 0,
        delivered_at   INTEGER
      ) STRICT;
    `,
  },
];

export type VmStatus = 'pending' | 'trusted' | 'revoked';

export interface VmRow {
  vmId: string;
  enrollment: AttestEnroll;
  status: VmStatus;
}

export interface VerdictRow {
  id: number;
  vmId: string;
  startedAt: Date;
  finishedAt: Date | null;
  ok: boolean | null;
  code: VerdictCode | null;
  reason: string | null;
  path: string | null;
  digest: string | null;
  /** JSON of the quoted PCR values (wire form), when the quote verified. */
  pcrs: string | null;
  imaEntries: number | null;
  notice: SignedNotice | null;
}

interface AttRow {
  id: number;
  vm_id: string;
  started_at: number;
  finished_at: number | null;
  ok: number | null;
  code: string | null;
  reason: string | null;
  path: string | null;
  digest: string | null;
  pcrs: string | null;
  ima_entries: number | null;
  signed: string | null;
}

export class AttestDb {
  private constructor(private readonly sql: Database.Database) {}

  static open(authorityDir: string): AttestDb {
    const path = join(authorityDir, ATTEST_DB_FILE);
    closeSync(openSync(path, 'a', 0o600));
    const sql = new Database(path);
    try {
      if (sql.pragma('journal_mode = WAL', { simple: true }) !== 'wal') throw new Error(`${path}: cannot use WAL journaling`);
      sql.pragma('synchronous = FULL');
      sql.pragma('foreign_keys = ON');
      const at = sql.pragma('user_version', { simple: true }) as number;
      const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version;
      if (at > latest) throw new Error(`${path}: schema version ${at} is newer than this vmseal (${latest})`);
      for (const m of MIGRATIONS) {
        if (m.version <= at) continue;
        sql.transaction(() => {
          sql.exec(m.sql);
          sql.pragma(`user_version = ${m.version}`);
        })();
      }
    } catch (e) {
      sql.close();
      throw e;
    }
    return new AttestDb(sql);
  }

  close(): void {
    if (this.sql.open) this.sql.close();
  }

  /** Enrolls a VM, or replaces its enrollment (new references/policy) and makes it pending again. */
  enroll(vmId: string, e: AttestEnroll, now: Date): void {
    this.sql
      .prepare(`INSERT INTO vms (vm_id, enrollment, status, enrolled_at) VALUES (?, ?, 'pending', ?)
                ON CONFLICT (vm_id) DO UPDATE SET enrollment = excluded.enrollment, status = 'pending', enrolled_at = excluded.enrolled_at`)
      .run(vmId, JSON.stringify(e), now.getTime());
  }

  vm(vmId: string): VmRow | undefined {
    const r = this.sql.prepare('SELECT vm_id, enrollment, status FROM vms WHERE vm_id = ?').get(vmId) as { vm_id: string; enrollment: string; status: VmStatus } | undefined;
    return r && { vmId: r.vm_id, enrollment: JSON.parse(r.enrollment) as AttestEnroll, status: r.status };
  }

  /** Records an attestation about to start; returns its id. */
  begin(vmId: string, nonce: Buffer, now: Date): number {
    return Number(this.sql.prepare('INSERT INTO attestations (vm_id, nonce, started_at) VALUES (?, ?, ?)').run(vmId, nonce, now.getTime()).lastInsertRowid);
  }

  /**
   * Commits a verdict, the VM's new status and (on a first failure) the signed notice, in one
   * transaction. `makeNotice` runs inside it, so a notice exists exactly for the attestation that revoked.
   */
  finish(
    id: number,
    v: { ok: boolean; code: VerdictCode; reason: string; path: string | null; digest: string | null; pcrs: string | null; imaEntries: number | null },
    now: Date,
    makeNotice: () => { signed: SignedNotice; webhook: string | null },
  ): SignedNotice | null {
    return this.sql.transaction(() => {
      const row = this.sql.prepare('SELECT vm_id, finished_at FROM attestations WHERE id = ?').get(id) as { vm_id: string; finished_at: number | null } | undefined;
      if (!row || row.finished_at !== null) throw new Error(`attestation ${id} is not pending`);
      this.sql
        .prepare('UPDATE attestations SET finished_at = ?, ok = ?, code = ?, reason = ?, path = ?, digest = ?, pcrs = ?, ima_entries = ? WHERE id = ?')
        .run(now.getTime(), v.ok ? 1 : 0, v.code, v.reason, v.path, v.digest, v.pcrs, v.imaEntries, id);
      const status = (this.sql.prepare('SELECT status FROM vms WHERE vm_id = ?').get(row.vm_id) as { status: VmStatus }).status;
      if (v.ok) {
        if (status === 'pending') this.sql.prepare("UPDATE vms SET status = 'trusted' WHERE vm_id = ?").run(row.vm_id);
        return null;
      }
      // The relay can always withhold evidence (availability is not protected); that is reported, not revoked.
      if (status === 'revoked' || v.code === 'EVIDENCE_UNAVAILABLE') return null;
      this.sql.prepare("UPDATE vms SET status = 'revoked' WHERE vm_id = ?").run(row.vm_id);
      const n = makeNotice();
      this.sql.prepare('INSERT INTO notices (attestation_id, vm_id, signed, webhook) VALUES (?, ?, ?, ?)').run(id, row.vm_id, JSON.stringify(n.signed), n.webhook);
      return n.signed;
    })();
  }

  /** Notices with a webhook not yet delivered. */
  undelivered(): { attestationId: number; signed: SignedNotice; webhook: string; attempts: number }[] {
    const rows = this.sql.prepare('SELECT attestation_id, signed, webhook, attempts FROM notices WHERE webhook IS NOT NULL AND delivered_at IS NULL ORDER BY attestation_id').all() as {
      attestation_id: number;
      signed: string;
      webhook: string;
      attempts: number;
    }[];
    return rows.map((r) => ({ attestationId: r.attestation_id, signed: JSON.parse(r.signed) as SignedNotice, webhook: r.webhook, attempts: r.attempts }));
  }

  deliveryAttempt(attestationId: number, delivered: boolean, now: Date): void {
    this.sql.prepare('UPDATE notices SET attempts = attempts + 1, delivered_at = ? WHERE attestation_id = ?').run(delivered ? now.getTime() : null, attestationId);
  }

  /** The latest `limit` attestations of a VM, newest first. */
  history(vmId: string, limit = 100): VerdictRow[] {
    const rows = this.sql
      .prepare(
        `SELECT a.*, n.signed FROM attestations a LEFT JOIN notices n ON n.attestation_id = a.id
         WHERE a.vm_id = ? ORDER BY a.id DESC LIMIT ?`,
      )
      .all(vmId, limit) as AttRow[];
    return rows.map((r) => ({
      id: r.id,
      vmId: r.vm_id,
      startedAt: new Date(r.started_at),
      finishedAt: r.finished_at === null ? null : new Date(r.finished_at),
      ok: r.ok === null ? null : r.ok === 1,
      code: r.code as VerdictCode | null,
      reason: r.reason,
      path: r.path,
      digest: r.digest,
      pcrs: r.pcrs,
      imaEntries: r.ima_entries,
      notice: r.signed ? (JSON.parse(r.signed) as SignedNotice) : null,
    }));
  }
}
