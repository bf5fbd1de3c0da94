/**
 * An introspection handle on a running VM: its RAM file opened for reading and the kernel CR3 and
 * paging mode read from vCPU 0. CR3 follows whatever process the vCPU runs, but every process's PGD
 * maps the same kernel half, so any recent value works for kernel reads; refresh() re-reads it (a
 * process that has exited may have had its PGD freed and reused).
 */
import type { QemuVm } from '../vm/qemu-vm.ts';
import { readCpuState, type CpuState } from './cpu-state.ts';
import { GuestMemory } from './guest-memory.ts';
import { GuestReader } from './guest-reader.ts';

export interface GuestIntrospection {
  readonly reader: GuestReader;
  /** The kernel CR3 as last read from the vCPU. */
  readonly cr3: bigint;
  readonly la57: boolean;
  /** Re-reads CR3 from vCPU 0 and hands it to the reader. */
  refresh(): Promise<CpuState>;
  close(): void;
}

export async function openGuestIntrospection(vm: QemuVm): Promise<GuestIntrospection> {
  const cpu = await readCpuState(vm.qmp, 0);
  const mem = GuestMemory.open(vm.memoryFile, vm.memoryBytes);
  const reader = new GuestReader(mem, { kernelCr3: cpu.cr3, la57: cpu.la57 });
  return {
    reader,
    get cr3() {
      return reader.kernelCr3;
    },
    la57: cpu.la57,
    async refresh() {
      const now = await readCpuState(vm.qmp, 0);
      // The paging depth is fixed at boot; a change means the guest rebooted under us.
      if (now.la57 !== cpu.la57) throw new Error('the guest switched between 4- and 5-level paging: it has rebooted');
      reader.setKernelCr3(now.cr3);
      return now;
    },
    close() {
      mem.close();
    },
  };
}
