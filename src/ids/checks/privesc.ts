/**
 * Privilege escalation: a process whose uid, euid and suid were all non-root, and which later has
 * uid or euid 0 without an exec in between (self_exec_id unchanged), got root the way a kernel
 * exploit or a credential-patching rootkit gives it — not through a setuid binary, whose exec bumps
 * self_exec_id. Tasks are told apart by pid and start time, so a reused pid is a new task.
 */
import { hex, type Alert, type Check } from './check.ts';
import { listProcesses } from './processes.ts';

interface Seen {
  uid: number;
  euid: number;
  suid: number;
  execId: bigint;
  cred: bigint;
}

export function privescCheck(): Check {
  const seen = new Map<string, Seen>();
  return {
    name: 'privesc',
    async scan(k) {
      const procs = await listProcesses(k);
      const alerts: Alert[] = [];
      const alive = new Set<string>();
      for (const p of procs) {
        if (!p.cred) continue;
        const key = `${p.pid}:${p.startTime}`;
        alive.add(key);
        const before = seen.get(key);
        const now: Seen = { uid: p.uid, euid: p.euid, suid: p.suid, execId: p.execId, cred: p.cred.$addr };
        if (before && before.uid !== 0 && before.euid !== 0 && before.suid !== 0 && (now.uid === 0 || now.euid === 0) && now.execId === before.execId)
          alerts.push({
            check: 'privesc',
            kind: 'privilege-escalation',
            message: `privilege escalation: pid ${p.pid} (${p.comm}) became uid ${now.uid}/euid ${now.euid} (was ${before.uid}/${before.euid}) without exec`,
            evidence: {
              pid: p.pid,
              comm: p.comm,
              task: hex(p.task.$addr),
              startTime: p.startTime.toString(),
              before: { uid: before.uid, euid: before.euid, suid: before.suid, cred: hex(before.cred) },
              after: { uid: now.uid, euid: now.euid, suid: now.suid, fsuid: p.fsuid, cred: hex(now.cred) },
              selfExecId: now.execId.toString(),
            },
          });
        seen.set(key, now);
      }
      for (const key of seen.keys()) if (!alive.has(key)) seen.delete(key);
      return { alerts };
    },
  };
}
