/**
 * The process list as the kernel holds it: thread-group leaders on init_task.tasks, with their
 * credentials, parent and thread count, in one request whatever the process count (one 'gather'
 * op: the ring walked, each leader's cred, signal struct and parent followed by the monitor).
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { KObj } from '../kernel/kobject.ts';
import type { Cred, SignalStruct, TaskStruct } from '../kernel/linux-types.ts';

/** PF_KTHREAD from include/linux/sched.h: a kernel thread has no user program. */
export const PF_KTHREAD = 0x00200000;

export interface ProcessInfo {
  pid: number;
  ppid: number;
  comm: string;
  uid: number;
  euid: number;
  suid: number;
  fsuid: number;
  /** One letter as in /proc/PID/stat (R, S, D, T, t, X, Z, P, I). */
  state: string;
  threads: number;
  kthread: boolean;
  startTime: bigint;
  execId: bigint;
  task: KObj<TaskStruct>;
  cred: KObj<Cred> | null;
}

/** "RSDTtXZPI": the kernel's task_index_to_char over TASK_REPORT bits, with I for TASK_IDLE. */
const STATE_CHARS = 'RSDTtXZPI';
const TASK_REPORT = 0x7f;
const TASK_IDLE = 0x402;

export function stateChar(state: number, exitState: number): string {
  if (state === TASK_IDLE) return 'I';
  const bits = (state | exitState) & TASK_REPORT;
  const index = bits === 0 ? 0 : 32 - Math.clz32(bits);
  return STATE_CHARS[index] ?? '?';
}

/** The members of task_struct the checks read; list snapshots stop after the last of them. */
export const TASK_FIELDS = ['pid', 'tgid', 'comm', '__state', 'exit_state', 'flags', 'start_time', 'self_exec_id', 'real_parent', 'group_leader', 'tasks', 'cred', 'real_cred', 'signal', 'mm'] as const;

/** The members of cred the checks read. */
export const CRED_FIELDS = ['uid', 'euid', 'suid', 'fsuid'] as const;

/** The leaders on init_task.tasks; the ring's head is found from the symbol, without reading init_task. */
export async function readTaskList(k: KernelView): Promise<{ initAddr: bigint; leaders: KObj<TaskStruct>[] }> {
  const initAddr = k.sym('init_task');
  return { initAddr, leaders: await k.list<TaskStruct>(taskRingHead(k, initAddr), 'task_struct', 'tasks', { fields: TASK_FIELDS }) };
}

function taskRingHead(k: KernelView, initAddr: bigint): bigint {
  return initAddr + BigInt(k.model.offsetOf('task_struct', 'tasks').offset);
}

export async function listProcesses(k: KernelView): Promise<ProcessInfo[]> {
  // One op: the monitor follows each leader's cred, signal and real_parent pointers as it walks.
  const rows = await k.gather<TaskStruct>(taskRingHead(k, k.sym('init_task')), 'task_struct', 'tasks', {
    fields: TASK_FIELDS,
    follow: { cred: CRED_FIELDS, signal: ['nr_threads'], real_parent: ['tgid'] },
  });
  return rows.map(({ entry: t, follow }) => {
    const cred = follow.cred as KObj<Cred> | null;
    const parent = follow.real_parent as KObj<TaskStruct> | null;
    const signal = follow.signal as KObj<SignalStruct> | null;
    return {
      pid: t.pid,
      ppid: parent?.tgid ?? 0,
      comm: t.comm,
      uid: cred?.uid.val ?? -1,
      euid: cred?.euid.val ?? -1,
      suid: cred?.suid.val ?? -1,
      fsuid: cred?.fsuid.val ?? -1,
      state: stateChar(t.__state, t.exit_state),
      threads: signal?.nr_threads ?? 1,
      kthread: (t.flags & PF_KTHREAD) !== 0,
      startTime: t.start_time,
      execId: t.self_exec_id,
      task: t,
      cred,
    };
  });
}
