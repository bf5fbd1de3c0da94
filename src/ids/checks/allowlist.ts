/**
 * Unauthorized programs: every user process (kernel threads run no program) must match the
 * allowlist by its comm, and — when the list names executables — by the path of its executable.
 * A process is reported once (told apart by pid and start time, so a reused pid is a new process);
 * a monitoring loop that scans every few seconds would otherwise repeat the same alert forever.
 * A task without an mm has exited (exit_mm ran): its program is gone, so only its comm is judged. An
 * exe that cannot be read while the guest runs (an exit or exec between our reads) is read again
 * before it counts.
 */
import { hex, type Alert, type Check } from './check.ts';
import { exePaths } from './exe-path.ts';
import type { KernelView } from '../kernel/kernel-view.ts';
import { listProcesses, type ProcessInfo } from './processes.ts';

interface Verdict {
  /** pid and start time: a reused pid is a new process. */
  key: string;
  proc: ProcessInfo;
  exe: string | null;
  commOk: boolean;
  exeOk: boolean;
  ok: boolean;
}

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
  async function judge(k: KernelView): Promise<Verdict[]> {
    const procs = (await listProcesses(k)).filter((p) => !p.kthread);
    const paths = await exePaths(k, procs.map((p) => p.task));
    return procs.map((proc, i) => {
      const exe = paths[i] ?? null;
      const commOk = comms.has(proc.comm);
      const exeOk = exes === null || proc.task.mm.isNull || (exe !== null && exes.has(exe));
      return { key: `${proc.pid}:${proc.startTime}`, proc, exe, commOk, exeOk, ok: commOk && exeOk };
    });
  }
  return {
    name: 'allowlist',
    async scan(k) {
      const first = await judge(k);
      const unsure = first.filter((v) => !v.ok && v.commOk && v.exe === null);
      // Only an unreadable exe can be a race; ask once more before calling it unauthorized.
      const again = unsure.length === 0 ? null : new Map((await judge(k)).map((v) => [v.key, v]));
      const alerts: Alert[] = [];
      const alive = new Set<string>();
      for (const v of first) {
        alive.add(v.key);
        const now = v.exe === null && v.commOk && again ? again.get(v.key) : v;
        if (!now || now.ok || reported.has(v.key)) continue;
        reported.add(v.key);
        const p = now.proc;
        alerts.push({
          check: 'allowlist',
          kind: 'unauthorized-program',
          message: `unauthorized program: pid ${p.pid} ${p.comm}${now.exe ? ` (${now.exe})` : ''}`,
          evidence: { pid: p.pid, ppid: p.ppid, comm: p.comm, exe: now.exe, uid: p.uid, task: hex(p.task.$addr), commAllowed: now.commOk, exeAllowed: now.exeOk },
        });
      }
      for (const key of reported) if (!alive.has(key)) reported.delete(key);
      return { alerts };
    },
  };
}
