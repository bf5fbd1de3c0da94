/**
 * Hidden processes (DKOM): cross-view of the task list against the pid IDR. A rootkit that unlinks
 * a task from init_task.tasks leaves its pid allocated; a pid whose task (pid->tasks[PIDTYPE_PID])
 * belongs to no thread group on the list is hidden. A guest that runs while we read can create or
 * reap a task between the two views, so a suspect is confirmed by a second pass before alerting.
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { KObj } from '../kernel/kobject.ts';
import type { Pid, TaskStruct } from '../kernel/linux-types.ts';
import { hex, type Alert, type Check } from './check.ts';
import { pidIdrEntries } from './pid-idr.ts';
import { readTaskList } from './processes.ts';

interface Suspect {
  nr: number;
  pid: bigint;
  task: KObj<TaskStruct>;
}

async function findSuspects(k: KernelView): Promise<Suspect[]> {
  const { initAddr, leaders } = await readTaskList(k);
  const visible = new Set([initAddr, ...leaders.map((t) => t.$addr)]);
  const visiblePids = new Set(leaders.map((t) => t.pid));
  const entries = (await pidIdrEntries(k)).filter((e) => !visiblePids.has(e.nr));
  const pids = await k.derefAll<Pid>(entries.map((e) => k.pointer<Pid>(e.pid, 'pid')), { tolerant: true });
  const pidType = k.model.constant('PIDTYPE_PID');
  const linkMember = `pid_links[${pidType}]`;
  const owners = entries.flatMap((e, i) => {
    const first = pids[i]?.tasks.at(pidType).first.addr ?? 0n;
    // A pid kept only as a process group or session id has no task of its own.
    return first === 0n ? [] : [{ ...e, task: k.containerOf(first, 'task_struct', linkMember) }];
  });
  const tasks = await k.derefAll<TaskStruct>(owners.map((o) => k.pointer<TaskStruct>(o.task, 'task_struct')), { tolerant: true });
  const suspects: Suspect[] = [];
  owners.forEach((o, i) => {
    const t = tasks[i];
    // Threads are not on the task list; their group leader is.
    if (t && !visible.has(t.group_leader.addr)) suspects.push({ nr: o.nr, pid: o.pid, task: t });
  });
  return suspects;
}

export function hiddenProcessCheck(): Check {
  return {
    name: 'hidden-process',
    async scan(k) {
      const first = await findSuspects(k);
      if (first.length === 0) return { alerts: [] };
      const again = new Map((await findSuspects(k)).map((s) => [`${s.nr}:${s.task.$addr}`, s]));
      const alerts: Alert[] = first
        .filter((s) => again.has(`${s.nr}:${s.task.$addr}`))
        .map((s) => ({
          check: 'hidden-process',
          kind: 'hidden-process',
          message: `hidden process: pid ${s.nr} (${s.task.comm}) is allocated in the pid IDR but missing from the task list`,
          evidence: {
            pid: s.nr,
            tgid: s.task.tgid,
            comm: s.task.comm,
            task: hex(s.task.$addr),
            structPid: hex(s.pid),
            groupLeader: hex(s.task.group_leader.addr),
            tasksNext: hex(s.task.tasks.next.addr),
            tasksPrev: hex(s.task.tasks.prev.addr),
          },
        }));
      return { alerts };
    },
  };
}
