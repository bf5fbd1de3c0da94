/** The process list (pid, ppid, comm, uid, state, threads); it never alerts, it shows. */
import { hex, type Check } from './check.ts';
import { listProcesses } from './processes.ts';
import type { PsRowWire } from '../../formats/protocol/enclave-call.ts';

/** The wire type is the row type: the enclave encodes exactly these fields (formats/protocol/enclave-call.ts). */
export type PsRow = PsRowWire;

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

