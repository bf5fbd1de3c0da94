/**
 * The process list as the kernel holds it: thread-group leaders on init_task.tasks, with their
 * credentials, parent and thread count, in a handful of round trips whatever the process count
 * (one request of list walks for the ring, one batch for creds, signals and parents not on the list).
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { KObj, KPtr } from '../kernel/kobject.ts';
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
  const head = initAddr + BigInt(k.model.offsetOf('task_struct', 'tasks').offset);
  return { initAddr, leaders: await k.list<TaskStruct>(head, 'task_struct', 'tasks', { fields: TASK_FIELDS }) };
}

export async function listProcesses(k: KernelView): Promise<ProcessInfo[]> {
  const { leaders } = await readTaskList(k);
  const byAddr = new Map<bigint, KObj<TaskStruct>>(leaders.map((t) => [t.$addr, t] as const));
  // A parent not on the list (init_task itself, or a thread) has its tgid read in the same request
  // as the credentials and signal structs, which depend on the list alone too.
  const missing = [...new Set(leaders.map((t) => t.real_parent.addr).filter((a) => a !== 0n && !byAddr.has(a)))];
  const n = leaders.length;
  const objs = await k.derefAll<object>(
    [...leaders.map((t) => t.cred as KPtr<object>), ...leaders.map((t) => t.signal as KPtr<object>), ...missing.map((a) => k.pointer<object>(a, 'task_struct'))],
    { tolerant: true, fields: { cred: CRED_FIELDS, signal_struct: ['nr_threads'], task_struct: ['tgid'] } },
  );
  const creds = objs.slice(0, n) as (KObj<Cred> | null)[];
  const signals = objs.slice(n, 2 * n) as (KObj<SignalStruct> | null)[];
  for (const p of objs.slice(2 * n) as (KObj<TaskStruct> | null)[]) if (p) byAddr.set(p.$addr, p);
  return leaders.map((t, i) => {
    const cred = creds[i] ?? null;
    return {
      pid: t.pid,
      ppid: byAddr.get(t.real_parent.addr)?.tgid ?? 0,
      comm: t.comm,
      uid: cred?.uid.val ?? -1,
      euid: cred?.euid.val ?? -1,
      suid: cred?.suid.val ?? -1,
      fsuid: cred?.fsuid.val ?? -1,
      state: stateChar(t.__state, t.exit_state),
      threads: signals[i]?.nr_threads ?? 1,
      kthread: (t.flags & PF_KTHREAD) !== 0,
      startTime: t.start_time,
      execId: t.self_exec_id,
      task: t,
      cred,
    };
  });
}
