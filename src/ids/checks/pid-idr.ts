/**
 * Every pid the kernel has allocated, from init_pid_ns.idr: an xarray (radix tree) walked one tree
 * level per round trip. Entry encoding from include/linux/xarray.h: an internal entry has low bits
 * 10; internal entries above 4096 are node pointers (node + 2); smaller ones are sibling, retry or
 * zero markers; entries with the low bit set are values. Anything else is a `struct pid *`.
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { KPtr } from '../kernel/kobject.ts';
import type { PidNamespace, XaNode } from '../kernel/linux-types.ts';

/** A tree deeper than this is corrupt (64-bit indices in 6-bit levels need at most 11). */
const MAX_LEVELS = 12;

export interface IdrEntry {
  /** The idr index plus idr_base: the pid number in init_pid_ns. */
  nr: number;
  /** The `struct pid`. */
  pid: bigint;
}

const isInternal = (e: bigint) => (e & 3n) === 2n;
const isNode = (e: bigint) => isInternal(e) && e > 4096n;

export async function pidIdrEntries(k: KernelView): Promise<IdrEntry[]> {
  const ns = await k.var<PidNamespace>('init_pid_ns');
  const base = BigInt(ns.idr.idr_base);
  const head = ns.idr.idr_rt.xa_head.addr;
  if (head === 0n) return [];
  if (!isInternal(head)) return (head & 1n) === 0n ? [{ nr: Number(base), pid: head }] : [];
  if (!isNode(head)) return [];
  const out: IdrEntry[] = [];
  let level: { node: bigint; index: bigint }[] = [{ node: head - 2n, index: 0n }];
  for (let depth = 0; level.length > 0; depth++) {
    if (depth >= MAX_LEVELS) throw new Error('pid IDR deeper than any valid xarray');
    const nodes = await k.atAll<XaNode>('xa_node', level.map((l) => l.node));
    const next: typeof level = [];
    nodes.forEach((n, i) => {
      const at = (level[i] as { index: bigint }).index;
      const shift = BigInt(n.shift);
      let slot = 0n;
      for (const p of n.slots as Iterable<KPtr<unknown>>) {
        const e = p.addr;
        const index = at + (slot++ << shift);
        if (e === 0n) continue;
        if (isNode(e)) {
          if (shift === 0n) throw new Error('xa_node at the leaf level');
          next.push({ node: e - 2n, index });
        } else if (!isInternal(e) && (e & 1n) === 0n) out.push({ nr: Number(index + base), pid: e });
      }
    });
    level = next;
  }
  return out;
}

