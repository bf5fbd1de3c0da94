/** The process list (pid, ppid, comm, uid, state, threads); it never alerts, it shows. */
import { hex, type Check } from './check.ts';
import { listProcesses } from './processes.ts';

export interface PsRow {
  pid: number;
  ppid: number;
  comm: string;
  uid: number;
  euid: number;
  state: string;
  threads: number;
  kthread: boolean;
  task: string;
}

export function psRow(p: Awaited<ReturnType<typeof listProcesses>>[number]): PsRow {
  return { pid: p.pid, ppid: p.ppid, comm: p.comm, uid: p.uid, euid: p.euid, state: p.state, threads: p.threads, kthread: p.kthread, task: hex(p.task.$addr) };
}

export function pslistCheck(): Check<PsRow[]> {
  return {
    name: 'pslist',
    async scan(k) {
      return { alerts: [], data: (await listProcesses(k)).map(psRow) };
    },
  };
}

