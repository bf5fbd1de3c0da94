/**
 * System call table hooks: every sys_call_table entry must point into the kernel's text,
 * [_stext, _etext) after the slide. A rootkit that redirects a syscall to module code or to
 * injected memory points it elsewhere.
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import { hex, type Alert, type Check } from './check.ts';

/**
 * Entries of the x86-64 table in 6.1 (__NR_syscalls: syscall_64.tbl ends at 450). Used only when
 * the profile gives sys_call_table no array type (BTF does not describe it).
 */
export const X86_64_NR_SYSCALLS_6_1 = 451;

export interface SyscallHookOptions {
  /** Table length; defaults to the profile's array type, else X86_64_NR_SYSCALLS_6_1. */
  entries?: number;
}

export async function readSyscallTable(k: KernelView, opts: SyscallHookOptions = {}): Promise<{ table: bigint; entries: bigint[]; stext: bigint; etext: bigint }> {
  const t = k.model.symbolType('sys_call_table');
  const n = opts.entries ?? (t?.kind === 'array' ? t.count : X86_64_NR_SYSCALLS_6_1);
  const table = k.sym('sys_call_table');
  const raw = await k.bytes(table, n * 8);
  const entries = Array.from({ length: n }, (_, i) => raw.readBigUInt64LE(i * 8));
  return { table, entries, stext: k.sym('_stext'), etext: k.sym('_etext') };
}

export function syscallHooksCheck(opts: SyscallHookOptions = {}): Check {
  return {
    name: 'syscall-hooks',
    async scan(k) {
      const { table, entries, stext, etext } = await readSyscallTable(k, opts);
      const alerts: Alert[] = [];
      entries.forEach((v, nr) => {
        if (v >= stext && v < etext) return;
        alerts.push({
          check: 'syscall-hooks',
          kind: 'syscall-hook',
          message: `sys_call_table[${nr}] = ${hex(v)} points outside kernel text [${hex(stext)}, ${hex(etext)})`,
          evidence: { nr, value: hex(v), slot: hex(table + BigInt(nr) * 8n), stext: hex(stext), etext: hex(etext) },
        });
      });
      return { alerts };
    },
  };
}
