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

test('roots and pending flushes: each step checks the state it expects', async (t) => {
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

  const pending = { oldRoot: r0, newRoot: r1, sectors: [3, 7, 2 ** 40], oldLeaves: randomBytes(96), newLeaves: randomBytes(96) };
  assert.throws(() => db.recordPendingFlush(ID, { ...pending, oldRoot: r1 }), /not the one this flush started from/);
  assert.throws(() => db.recordPendingFlush(ID, { ...pending, sectors: [7, 3, 9] }), /ascending/);
  assert.throws(() => db.recordPendingFlush(ID, { ...pending, newLeaves: randomBytes(64) }), /one 32-byte old and new leaf/);
  assert.throws(() => db.commitFlush(ID, r0, r1), /no pending flush/);
  db.recordPendingFlush(ID, pending);
  assert.deepEqual(db.pendingFlush(ID), pending);
  assert.throws(() => db.recordPendingFlush(ID, pending), /already has a pending flush/);
  assert.throws(() => db.commitFlush(ID, r1, r1), /not the one this flush started from/);
  assert.deepEqual(db.imageRoot(ID), r0, 'a refused step changes nothing');
  db.commitFlush(ID, r0, r1);
  assert.deepEqual(db.imageRoot(ID), r1);
  assert.equal(db.pendingFlush(ID), undefined);

  // A pending record cannot exist for an image without a root (foreign key).
  assert.throws(() => db.recordPendingFlush('c'.repeat(32), pending), /has no root/);
});
