import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { MIGRATIONS, MonitorDb, MonitorDbError } from '../../src/monitor/state/monitor-db.ts';
import { tempDir } from './sealed-fixtures.ts';

const ID = 'a'.repeat(32);

test('the database is created 0600, in WAL mode with synchronous=FULL, at the latest schema', async (t) => {
  const dir = await tempDir(t, 'vmseal-db-');
  const path = join(dir, 'monitor.db');
  const db = MonitorDb.open(path);
  t.after(() => db.close());
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  assert.equal(db.sql.pragma('journal_mode', { simple: true }), 'wal');
  assert.equal(db.sql.pragma('synchronous', { simple: true }), 2); // FULL
  assert.equal(db.schemaVersion, MIGRATIONS.length);
  db.adoptImageRoot(ID, randomBytes(32));
  assert.equal((await stat(`${path}-wal`)).mode & 0o777, 0o600);
  db.close();
  // Reopening migrates nothing and keeps the data.
  const again = MonitorDb.open(path);
  t.after(() => again.close());
  assert.equal(again.schemaVersion, MIGRATIONS.length);
  assert.ok(again.imageRoot(ID));
});

test('a database from a newer monitor is refused, not misread', async (t) => {
  const dir = await tempDir(t, 'vmseal-db-');
  const path = join(dir, 'monitor.db');
  const raw = new Database(path);
  raw.pragma(`user_version = ${MIGRATIONS.length + 1}`);
  raw.close();
  assert.throws(() => MonitorDb.open(path), /newer than this monitor/);
});

test('roots and pending writes: each step checks the state it expects', async (t) => {
  const dir = await tempDir(t, 'vmseal-db-');
  const db = MonitorDb.open(join(dir, 'monitor.db'));
  t.after(() => db.close());
  const r0 = randomBytes(32);
  const r1 = randomBytes(32);
  assert.equal(db.imageRoot(ID), undefined);
  db.adoptImageRoot(ID, r0);
  assert.deepEqual(db.imageRoot(ID), r0);
  assert.throws(() => db.adoptImageRoot(ID, r1), /already has a root/);
  assert.throws(() => db.imageRoot('not-an-id'), MonitorDbError);
  assert.throws(() => db.adoptImageRoot('b'.repeat(32), Buffer.alloc(31)), /32 bytes/);

  const first = { sectors: [3, 7, 2 ** 40], oldLeaves: randomBytes(96), newLeaves: randomBytes(96) };
  const second = { sectors: [7], oldLeaves: first.newLeaves.subarray(32, 64), newLeaves: randomBytes(32) };
  assert.throws(() => db.recordPendingWrites(ID, r1, first), /not the one these writes started from/);
  assert.throws(() => db.recordPendingWrites(ID, r0, { ...first, sectors: [7, 3, 9] }), /ascending/);
  assert.throws(() => db.recordPendingWrites(ID, r0, { ...first, newLeaves: randomBytes(64) }), /one 32-byte old and new leaf/);
  assert.throws(() => db.commitRoot(ID, r0, r1), /no pending writes/);
  assert.deepEqual(db.pendingWrites(ID), []);
  // Several spills between two commits: records kept in order.
  db.recordPendingWrites(ID, r0, first);
  db.recordPendingWrites(ID, r0, second);
  assert.deepEqual(db.pendingWrites(ID), [first, second]);
  assert.throws(() => db.commitRoot(ID, r1, r1), /not the one these writes started from/);
  assert.deepEqual(db.imageRoot(ID), r0, 'a refused step changes nothing');
  assert.equal(db.pendingWrites(ID).length, 2);
  db.commitRoot(ID, r0, r1);
  assert.deepEqual(db.imageRoot(ID), r1);
  assert.deepEqual(db.pendingWrites(ID), []);
  assert.throws(() => db.recordPendingWrites(ID, r0, first), /not the one/, 'a backend with a stale root cannot record');

  // A pending record cannot exist for an image without a root (foreign key).
  assert.throws(() => db.recordPendingWrites('c'.repeat(32), r0, first), /has no root/);
});

test('migration 4 carries a pending flush of the old schema over as the first pending write record', async (t) => {
  const dir = await tempDir(t, 'vmseal-db-');
  const path = join(dir, 'monitor.db');
  const raw = new Database(path);
  for (const m of MIGRATIONS.slice(0, 3)) raw.exec(m.sql);
  raw.pragma('user_version = 3');
  const r0 = randomBytes(32);
  const old = { sectors: Buffer.alloc(16), oldLeaves: randomBytes(64), newLeaves: randomBytes(64) };
  old.sectors.writeBigUInt64LE(5n, 0);
  old.sectors.writeBigUInt64LE(9n, 8);
  raw.prepare('INSERT INTO image_roots VALUES (?, ?, 0)').run(ID, r0);
  raw.prepare('INSERT INTO pending_flushes VALUES (?, ?, ?, ?, ?, ?, 0)').run(ID, r0, randomBytes(32), old.sectors, old.oldLeaves, old.newLeaves);
  raw.close();
  const db = MonitorDb.open(path);
  t.after(() => db.close());
  assert.equal(db.schemaVersion, MIGRATIONS.length);
  assert.deepEqual(db.pendingWrites(ID), [{ sectors: [5, 9], oldLeaves: old.oldLeaves, newLeaves: old.newLeaves }]);
  assert.deepEqual(db.sql.prepare("SELECT name FROM sqlite_master WHERE name = 'pending_flushes'").all(), []);
});
