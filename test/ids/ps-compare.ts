/**
 * The guest's own `ps -o pid,ppid,user,comm` against a process list read from outside: every process
 * both see has the same parent, uid and name; one seen by only one side must be short-lived.
 */
import assert from 'node:assert/strict';
import type { PsRow } from '../../src/ids/checks/pslist.ts';

/** What lives for moments in the demo guest: our ps and cat, the sensor daemon's `sleep 5` loop, the crontab's minutely `date` (crond forks, sh -c date). */
const TRANSIENT = /^(ps|cat|sh|sleep|date|crond)$/;
const TRANSIENT_OR_KWORKER = /^(kworker|ps|cat|sh|sleep|date|crond)/;

/** Asserts that `rows` agree with `psOut` (users resolved through `passwd`); returns the rows by pid. */
export function assertAgreesWithPs(passwd: string, psOut: string, rows: readonly PsRow[]): Map<number, PsRow> {
  const uidOf = new Map(passwd.split('\n').filter(Boolean).map((l) => [l.split(':')[0] as string, Number(l.split(':')[2])]));
  const ps = psOut
    .trim()
    .split('\n')
    .slice(1)
    .map((l) => {
      const [pid, ppid, user, ...comm] = l.trim().split(/\s+/);
      return { pid: Number(pid), ppid: Number(ppid), uid: uidOf.get(user as string) ?? Number(user), comm: comm.join(' ') };
    });
  assert.ok(ps.length > 20, `ps shows ${ps.length} processes`);
  const ours = new Map(rows.map((r) => [r.pid, r]));
  for (const p of ps) {
    const r = ours.get(p.pid);
    if (!r) {
      assert.match(p.comm, TRANSIENT, `pid ${p.pid} ${p.comm} from ps is missing in pslist`);
      continue;
    }
    assert.equal(r.ppid, p.ppid, `ppid of ${p.pid} ${p.comm}`);
    assert.equal(r.uid, p.uid, `uid of ${p.pid} ${p.comm}`);
    // /proc shows a workqueue worker as "kworker/0:1-events" (idle) or "kworker/0:1+events" (busy); the task's comm stops before.
    assert.ok(p.comm === r.comm || (p.comm.startsWith(r.comm) && /^[-+]/.test(p.comm.slice(r.comm.length))), `comm of ${p.pid}: ps ${p.comm}, pslist ${r.comm}`);
  }
  const psPids = new Set(ps.map((p) => p.pid));
  for (const r of rows) if (!psPids.has(r.pid)) assert.match(r.comm, TRANSIENT_OR_KWORKER, `pid ${r.pid} ${r.comm} only in pslist`);
  return ours;
}
