/**
 * The kernel structures the checks use, declared like C headers but holding only member names and
 * what they decode to (kobject.ts says how BTF types map to JS values). Offsets and sizes come from
 * the profile at run time; these declarations only let TypeScript check the checks.
 */
import type { KArr, KObj, KPtr } from './kobject.ts';

export interface ListHead {
  next: KPtr<ListHead>;
  prev: KPtr<ListHead>;
}

export interface HlistHead {
  first: KPtr<HlistNode>;
}

export interface HlistNode {
  next: KPtr<HlistNode>;
}

export interface Kuid {
  val: number;
}

export interface Cred {
  uid: KObj<Kuid>;
  gid: KObj<Kuid>;
  suid: KObj<Kuid>;
  sgid: KObj<Kuid>;
  euid: KObj<Kuid>;
  egid: KObj<Kuid>;
  fsuid: KObj<Kuid>;
  fsgid: KObj<Kuid>;
}

export interface TaskStruct {
  pid: number;
  tgid: number;
  comm: string;
  __state: number;
  exit_state: number;
  flags: number;
  start_time: bigint;
  self_exec_id: bigint;
  real_parent: KPtr<TaskStruct>;
  group_leader: KPtr<TaskStruct>;
  tasks: KObj<ListHead>;
  thread_group: KObj<ListHead>;
  cred: KPtr<Cred>;
  real_cred: KPtr<Cred>;
  signal: KPtr<SignalStruct>;
  mm: KPtr<MmStruct>;
}

export interface SignalStruct {
  nr_threads: number;
}

export interface MmStruct {
  exe_file: KPtr<File>;
}

export interface File {
  f_path: KObj<Path>;
}

export interface Path {
  mnt: KPtr<VfsMount>;
  dentry: KPtr<Dentry>;
}

export interface VfsMount {
  mnt_root: KPtr<Dentry>;
}

export interface Mount {
  mnt: KObj<VfsMount>;
  mnt_parent: KPtr<Mount>;
  mnt_mountpoint: KPtr<Dentry>;
}

export interface Qstr {
  name: KPtr<unknown>;
  len: number;
}

export interface Dentry {
  d_name: KObj<Qstr>;
  d_parent: KPtr<Dentry>;
}

export interface Module {
  name: string;
  state: number;
  list: KObj<ListHead>;
}

export interface Kobject {
  name: KPtr<unknown>;
  entry: KObj<ListHead>;
}

export interface Kset {
  list: KObj<ListHead>;
}

export interface ModuleKobject {
  kobj: KObj<Kobject>;
  mod: KPtr<Module>;
}

export interface Upid {
  nr: number;
}

export interface Pid {
  level: number;
  numbers: KArr<KObj<Upid>>;
  tasks: KArr<KObj<HlistHead>>;
}

export interface XArray {
  xa_head: KPtr<unknown>;
}

export interface XaNode {
  shift: number;
  slots: KArr<KPtr<unknown>>;
}

export interface Idr {
  idr_rt: KObj<XArray>;
  idr_base: number;
}

export interface PidNamespace {
  idr: KObj<Idr>;
}
