/**
 * The monitor's persistent state: one SQLite database (better-sqlite3, synchronous API).
 *
 * Durability: journal_mode=WAL with synchronous=FULL. In WAL mode a commit appends to the -wal file, and with
 * FULL SQLite fsyncs that file before the commit returns, so a committed transaction survives power loss (with
 * NORMAL it could be lost until the next checkpoint). WAL rather than a rollback journal: one fsync per commit
 * instead of several, and the database file itself is only rewritten at checkpoints. The file is created 0600
 * and its directory fsynced once, so the database's own name survives a crash right after creation.
 *
 * Schema changes are migrations: append to MIGRATIONS (never edit a released one). Each runs in its own
 * transaction together with the bump of PRAGMA user_version, so a crash leaves the schema at a known version.
 * A database newer than this code (user_version beyond the list) is refused rather than misread.
 *
 * Tables of the sealed-disk work: the trusted integrity root of every image, and the pending records of the
 * writes put into its files since that root was committed (docs/sealed-disk.md, "Writes, FLUSH and crashes").
 */
import { closeSync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'image integrity roots and pending flushes',
    sql: `
      CREATE TABLE image_roots (
        image_id   TEXT PRIMARY KEY CHECK (length(image_id) = 32),
        root       BLOB NOT NULL CHECK (length(root) = 32),
        updated_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE pending_flushes (
        image_id   TEXT PRIMARY KEY REFERENCES image_roots (image_id),
        old_root   BLOB NOT NULL CHECK (length(old_root) = 32),
        new_root   BLOB NOT NULL CHECK (length(new_root) = 32),
        sectors    BLOB NOT NULL CHECK (length(sectors) % 8 = 0),
        old_leaves BLOB NOT NULL CHECK (length(old_leaves) = 4 * length(sectors)),
        new_leaves BLOB NOT NULL CHECK (length(new_leaves) = 4 * length(sectors)),
        created_at INTEGER NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 2,
    name: 'IDS session ids ever registered',
    // Kept for good: a session id registers once per monitor, even across restarts (docs/ids.md).
    sql: `
      CREATE TABLE ids_sessions (
        session_id    TEXT PRIMARY KEY CHECK (length(session_id) = 32),
        vm_id         TEXT NOT NULL CHECK (length(vm_id) = 32),
        measurement   TEXT NOT NULL CHECK (length(measurement) = 64),
        registered_at INTEGER NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 3,
    name: 'vTPM NV index owners and read grants',
    // Tokens are AEAD under the NV manager key (monitor/vtpm/nv-token.ts); the plain columns only index them.
    sql: `
      CREATE TABLE nv_owners (
        nv_index   INTEGER PRIMARY KEY,
        owner      TEXT NOT NULL CHECK (length(owner) = 32),
        data_size  INTEGER NOT NULL,
        token      BLOB NOT NULL,
        created_at INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX nv_owners_by_owner ON nv_owners (owner);
      CREATE TABLE nv_grants (
        nv_index      INTEGER NOT NULL,
        grantee       TEXT NOT NULL CHECK (length(grantee) = 32),
        grantee_vm_id TEXT NOT NULL CHECK (length(grantee_vm_id) = 32),
        token         BLOB NOT NULL,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (nv_index, grantee)
      ) STRICT;
    `,
  },
  {
    version: 4,
    name: 'pending writes: several records per image, one per buffer spilled since the last committed root',
    // A pending flush of version 1 started from the image's current root (it was checked when recorded), so it
    // becomes the first and only record of its image.
    sql: `
      CREATE TABLE pending_writes (
        image_id   TEXT NOT NULL REFERENCES image_roots (image_id),
        seq        INTEGER NOT NULL CHECK (seq >= 1),
        sectors    BLOB NOT NULL CHECK (length(sectors) % 8 = 0),
        old_leaves BLOB NOT NULL CHECK (length(old_leaves) = 4 * length(sectors)),
        new_leaves BLOB NOT NULL CHECK (length(new_leaves) = 4 * length(sectors)),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (image_id, seq)
      ) STRICT;
      INSERT INTO pending_writes (image_id, seq, sectors, old_leaves, new_leaves, created_at)
        SELECT image_id, 1, sectors, old_leaves, new_leaves, created_at FROM pending_flushes;
      DROP TABLE pending_flushes;
    `,
  },
  {
    version: 5,
    name: 'vTPM peers: VMs an owner VM\'s guest may share its NV indices with (monitor/vtpm/nv-peers.ts)',
    // As for nv_grants, the token (AEAD under the NV manager key) is the truth; the plain columns index it.
    sql: `
      CREATE TABLE nv_peers (
        owner      TEXT NOT NULL CHECK (length(owner) = 32),
        peer       TEXT NOT NULL CHECK (length(peer) = 32),
        peer_vm_id TEXT NOT NULL CHECK (length(peer_vm_id) = 32),
        token      BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (owner, peer)
      ) STRICT;
    `,
  },
];

const HASH_BYTES = 32;
const IMAGE_ID = /^[0-9a-f]{32}$/;

/**
 * Sectors written into an image's files (not necessarily durably) since its root was last committed: each
 * listed sector's leaf before and after that write.
 */
export interface PendingWrites {
  /** Ascending, distinct sector numbers. */
  sectors: number[];
  /** 32 bytes per sector, in the order of `sectors`. */
  oldLeaves: Buffer;
  newLeaves: Buffer;
}

export class MonitorDbError extends Error {
  override readonly name = 'MonitorDbError';
}

function checkImageId(id: string): void {
  if (!IMAGE_ID.test(id)) throw new MonitorDbError(`bad image id ${JSON.stringify(id.slice(0, 40))}`);
}

function checkHash(h: Buffer, what: string): void {
  if (!Buffer.isBuffer(h) || h.length !== HASH_BYTES) throw new MonitorDbError(`${what} must be ${HASH_BYTES} bytes`);
}

function encodeSectors(sectors: number[]): Buffer {
  const b = Buffer.alloc(sectors.length * 8);
  let prev = -1;
  sectors.forEach((s, i) => {
    if (!Number.isSafeInteger(s) || s <= prev) throw new MonitorDbError('pending write sectors must be ascending, distinct integers');
    prev = s;
    // u64 LE as two u32 halves: a BigInt per sector showed up in the spill path's profile.
    b.writeUInt32LE(s % 0x1_0000_0000, i * 8);
    b.writeUInt32LE(Math.floor(s / 0x1_0000_0000), i * 8 + 4);
  });
  return b;
}

function decodeSectors(b: Buffer): number[] {
  const out: number[] = [];
  let prev = -1;
  for (let at = 0; at < b.length; at += 8) {
    const hi = b.readUInt32LE(at + 4);
    const v = hi * 0x1_0000_0000 + b.readUInt32LE(at);
    if (hi > 0x1f_ffff || v <= prev) throw new MonitorDbError('corrupt pending write record (sector list)');
    prev = v;
    out.push(prev);
  }
  return out;
}

interface PendingRow {
  sectors: Buffer;
  old_leaves: Buffer;
  new_leaves: Buffer;
}

export class MonitorDb {
  /** The connection, for other state modules' own tables (added through MIGRATIONS). */
  readonly sql: Database.Database;

  private constructor(sql: Database.Database) {
    this.sql = sql;
  }

  /** Opens (creating if needed, mode 0600) and migrates the database at `path`. */
  static open(path: string): MonitorDb {
    // Created here so its mode is 0600 whatever the umask; SQLite gives -wal and -shm the same mode.
    closeSync(openSync(path, 'a', 0o600));
    const sql = new Database(path, { timeout: 5000 });
    try {
      if (sql.pragma('journal_mode = WAL', { simple: true }) !== 'wal') throw new MonitorDbError(`${path}: cannot use WAL journaling`);
      sql.pragma('synchronous = FULL');
      sql.pragma('foreign_keys = ON');
      migrate(sql, path);
      syncDir(dirname(path));
      return new MonitorDb(sql);
    } catch (err) {
      sql.close();
      throw err;
    }
  }

  get schemaVersion(): number {
    return this.sql.pragma('user_version', { simple: true }) as number;
  }

  close(): void {
    if (this.sql.open) this.sql.close();
  }

  /** The trusted integrity root of an image, if this monitor has one. */
  imageRoot(imageId: string): Buffer | undefined {
    checkImageId(imageId);
    const row = this.sql.prepare('SELECT root FROM image_roots WHERE image_id = ?').get(imageId) as { root: Buffer } | undefined;
    return row?.root;
  }

  /** Records the first trusted root of an image (from its launch bundle); an image that has one keeps it. */
  adoptImageRoot(imageId: string, root: Buffer): void {
    checkImageId(imageId);
    checkHash(root, 'root');
    const r = this.sql.prepare('INSERT INTO image_roots (image_id, root, updated_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING').run(imageId, root, Date.now());
    if (r.changes === 0) throw new MonitorDbError(`image ${imageId} already has a root`);
  }

  /** The image's pending write records, oldest first (empty if its files are as its root says). */
  pendingWrites(imageId: string): PendingWrites[] {
    checkImageId(imageId);
    const rows = this.sql
      .prepare('SELECT sectors, old_leaves, new_leaves FROM pending_writes WHERE image_id = ? ORDER BY seq')
      .all(imageId) as PendingRow[];
    return rows.map((r) => ({ sectors: decodeSectors(r.sectors), oldLeaves: r.old_leaves, newLeaves: r.new_leaves }));
  }

  /**
   * Records, durably (one fsync), writes about to go into the image's files. `root` must be the image's
   * committed root: a record made by a backend whose view of the image is stale is refused.
   */
  recordPendingWrites(imageId: string, root: Buffer, p: PendingWrites): void {
    checkImageId(imageId);
    checkHash(root, 'root');
    const sectors = encodeSectors(p.sectors);
    if (p.oldLeaves.length !== p.sectors.length * HASH_BYTES || p.newLeaves.length !== p.sectors.length * HASH_BYTES) {
      throw new MonitorDbError('pending writes: one 32-byte old and new leaf per sector expected');
    }
    this.sql.transaction(() => {
      this.#expectRoot(imageId, root);
      const { seq } = this.sql.prepare('SELECT coalesce(max(seq), 0) + 1 AS seq FROM pending_writes WHERE image_id = ?').get(imageId) as { seq: number };
      this.sql
        .prepare('INSERT INTO pending_writes (image_id, seq, sectors, old_leaves, new_leaves, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(imageId, seq, sectors, p.oldLeaves, p.newLeaves, Date.now());
    })();
  }

  /**
   * A FLUSH (or the end of crash recovery), once the files are synced: in one transaction the root moves from
   * `oldRoot` to `newRoot` and every pending record of the image goes away. A root only moves over recorded
   * writes, so at least one record must exist.
   */
  commitRoot(imageId: string, oldRoot: Buffer, newRoot: Buffer): void {
    checkImageId(imageId);
    checkHash(newRoot, 'new root');
    this.sql.transaction(() => {
      this.#expectRoot(imageId, oldRoot);
      if (this.sql.prepare('DELETE FROM pending_writes WHERE image_id = ?').run(imageId).changes === 0) {
        throw new MonitorDbError(`image ${imageId} has no pending writes to commit`);
      }
      this.sql.prepare('UPDATE image_roots SET root = ?, updated_at = ? WHERE image_id = ?').run(newRoot, Date.now(), imageId);
    })();
  }

  #expectRoot(imageId: string, root: Buffer): void {
    const current = this.imageRoot(imageId);
    if (!current) throw new MonitorDbError(`image ${imageId} has no root`);
    if (!current.equals(root)) throw new MonitorDbError(`image ${imageId}: root is not the one these writes started from`);
  }
}

function migrate(sql: Database.Database, path: string): void {
  const current = sql.pragma('user_version', { simple: true }) as number;
  MIGRATIONS.forEach((m, i) => {
    if (m.version !== i + 1) throw new MonitorDbError(`migration "${m.name}" has version ${m.version}, expected ${i + 1}`);
  });
  const latest = MIGRATIONS.length;
  if (current > latest) throw new MonitorDbError(`${path}: schema version ${current} is newer than this monitor (${latest})`);
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue;
    sql.transaction(() => {
      sql.exec(m.sql);
      sql.pragma(`user_version = ${m.version}`);
    })();
  }
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
