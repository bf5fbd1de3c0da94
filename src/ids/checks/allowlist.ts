/**
 * Unauthorized programs: every user process (kernel threads run no program) must match the
 * allowlist by its comm, and — when the list names executables — by the path of its executable.
 * A process is reported once (told apart by pid and start time, so a reused pid is a new process);
 * a monitoring loop that scans every few seconds would otherwise repeat the same alert forever.
 */
import { hex, type Alert, type Check } from './check.ts';
import { exePaths } from './exe-path.ts';
import { listProcesses } from './processes.ts';

export interface AllowlistOptions {
  /** Allowed process names (task comm, at most 15 characters as the kernel keeps them). */
  comms: readonly string[];
  /** Allowed executable paths; when given, a process whose exe is elsewhere is unauthorized too. */
  exes?: readonly string[];
}

export function allowlistCheck(opts: AllowlistOptions): Check {
  const comms = new Set(opts.comms);
  const exes = opts.exes ? new Set(opts.exes) : null;
  const reported = new Set<string>();
  return {
    name: 'allowlist',
    async scan(k) {
      const procs = (await listProcesses(k)).filter((p) => !p.kthread);
      const paths = await exePaths(k, procs.map((p) => p.task));
      const alerts: Alert[] = [];
      const alive = new Set<string>();
      procs.forEach((p, i) => {
        const key = `${p.pid}:${p.startTime}`;
        alive.add(key);
        const exe = paths[i] ?? null;
        const commOk = comms.has(p.comm);
        const exeOk = exes === null || (exe !== null && exes.has(exe));
        if ((commOk && exeOk) || reported.has(key)) return;
        reported.add(key);
        alerts.push({
          check: 'allowlist',
          kind: 'unauthorized-program',
          message: `unauthorized program: pid ${p.pid} ${p.comm}${exe ? ` (${exe})` : ''}`,
          evidence: { pid: p.pid, ppid: p.ppid, comm: p.comm, exe, uid: p.uid, task: hex(p.task.$addr), commAllowed: commOk, exeAllowed: exeOk },
        });
      });
      for (const key of reported) if (!alive.has(key)) reported.delete(key);
      return { alerts };
    },
  };
}
