/**
 * d_path() from outside: the path of each process's executable (mm->exe_file->f_path), climbing
 * dentries and crossing mounts one level per round trip for all processes at once.
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { KObj, KPtr } from '../kernel/kobject.ts';
import type { Dentry, File, Mount, MmStruct, TaskStruct } from '../kernel/linux-types.ts';

/** Deepest path followed; a loop in hostile memory ends here instead of spinning. */
const MAX_DEPTH = 64;

interface Walk {
  dentry: KObj<Dentry>;
  mount: KObj<Mount>;
  names: string[];
  done: boolean;
}

/** Exe path per task (null for kernel threads or when unreadable), in task order. */
export async function exePaths(k: KernelView, tasks: readonly KObj<TaskStruct>[]): Promise<(string | null)[]> {
  const mms = await k.derefAll<MmStruct>(tasks.map((t) => t.mm), { tolerant: true });
  const files = await k.derefAll<File>(mms.map((m) => m?.exe_file ?? nullPtr(k)), { tolerant: true });
  const dentries = await k.derefAll<Dentry>(files.map((f) => f?.f_path.dentry ?? nullPtr(k)), { tolerant: true });
  const mountAddrs = files.map((f) => (f && !f.f_path.mnt.isNull ? k.containerOf(f.f_path.mnt.addr, 'mount', 'mnt') : 0n));
  const mounts = await readMaybe<Mount>(k, 'mount', mountAddrs);
  const walks: (Walk | null)[] = dentries.map((d, i) => {
    const m = mounts[i];
    return d && m ? { dentry: d, mount: m, names: [], done: false } : null;
  });
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const active = walks.filter((w): w is Walk => w !== null && !w.done);
    if (active.length === 0) break;
    await collectNames(k, active);
    // At a mount's root, continue from its mountpoint in the parent mount (follow_up()).
    const next: { w: Walk; dentry: bigint; mount: bigint }[] = [];
    for (const w of active) {
      const atMountRoot = w.dentry.$addr === mountRoot(w.mount);
      if (atMountRoot) {
        const parent = w.mount.mnt_parent.addr;
        if (parent === w.mount.$addr || parent === 0n) w.done = true;
        else next.push({ w, dentry: w.mount.mnt_mountpoint.addr, mount: parent });
      } else if (w.dentry.d_parent.addr === w.dentry.$addr) w.done = true;
      else next.push({ w, dentry: w.dentry.d_parent.addr, mount: w.mount.$addr });
    }
    if (next.length === 0) break;
    const ds = await readMaybe<Dentry>(k, 'dentry', next.map((n) => n.dentry));
    const ms = await readMaybe<Mount>(k, 'mount', next.map((n) => (n.mount === n.w.mount.$addr ? 0n : n.mount)));
    next.forEach((n, i) => {
      const d = ds[i];
      if (!d) n.w.done = true;
      else {
        n.w.dentry = d;
        n.w.mount = ms[i] ?? n.w.mount;
      }
    });
  }
  return walks.map((w) => (w ? '/' + w.names.reverse().filter((s) => s !== '/').join('/') : null));
}

function mountRoot(m: KObj<Mount>): bigint {
  return m.mnt.mnt_root.addr;
}

/** Appends each walk's current dentry name (inline names come from the snapshot; long ones are one batch). */
async function collectNames(k: KernelView, walks: Walk[]): Promise<void> {
  const isRoot = (w: Walk) => w.dentry.$addr === mountRoot(w.mount);
  const far = walks.filter((w) => !isRoot(w) && w.dentry.d_name.name.addr !== w.dentry.$addrOf('d_iname'));
  const texts = await k.bytesAll(far.map((w) => ({ addr: w.dentry.d_name.name.addr, len: Math.min(w.dentry.d_name.len, 255) })));
  const farName = new Map(far.map((w, i) => [w, texts[i]?.toString('latin1') ?? '?']));
  for (const w of walks) if (!isRoot(w)) w.names.push(farName.get(w) ?? w.dentry.$str('d_iname'));
}

async function readMaybe<T extends object>(k: KernelView, type: string, addrs: readonly bigint[]): Promise<(KObj<T> | null)[]> {
  return k.derefAll<T>(addrs.map((a) => k.pointer<T>(a, type)), { tolerant: true });
}

function nullPtr<T>(k: KernelView): KPtr<T> {
  return k.pointer<T>(0n, 'dentry');
}
