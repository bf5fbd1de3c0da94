/**
 * The QEMU command line for one vmseal VM, as a pure function of its resolved settings.
 *
 * Choices worth knowing:
 * - `-nodefaults -no-user-config -display none`: only the devices listed here exist; no host
 *   config file can add any.
 * - No `-no-reboot`: with it a guest reboot *and* QMP `system_reset` would make QEMU exit, so
 *   `reset()` could not work. No `-no-shutdown`: a guest poweroff must end the QEMU process.
 * - `-sandbox on,...`: QEMU parses guest-controlled data, so it runs under seccomp with spawn,
 *   privilege changes and resource control denied.
 * - Guest RAM is a shared memory-backend-file in the run dir so the monitor can map it for
 *   introspection; QEMU connects out to the runner's unix sockets for QMP and the serial console.
 * - TCG keeps QEMU's default threading (multi-threaded TCG, one host thread per vCPU): with one
 *   vCPU it is the same as thread=single, and with more it is what lets 2 host cores help.
 */

export type Accel = 'tcg' | 'kvm';

export interface NbdDisk {
  /** Unix socket of the monitor's NBD server. */
  socketPath: string;
  exportName: string;
}

export interface QemuArgsSpec {
  accel: Accel;
  kernel: string;
  initrd: string;
  cmdline: string;
  memoryMiB: number;
  cpus: number;
  memoryFile: string;
  qmpSocket: string;
  consoleSocket: string;
  disk?: NbdDisk;
  name?: string;
  extraArgs?: readonly string[];
}

/** Escapes a value for QEMU's comma-separated option syntax (QemuOpts and keyval both read ",," as ","). */
export function optValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/** Accelerator and matching CPU model; the KVM probe uses exactly these. */
export function accelArgs(accel: Accel): string[] {
  // KVM: the host CPU model, so the guest sees what it really runs on. TCG: QEMU's default qemu64.
  return accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg'];
}

export function buildQemuArgs(spec: QemuArgsSpec): string[] {
  const args = ['-nodefaults', '-no-user-config', '-display', 'none'];
  args.push('-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  if (spec.name !== undefined) args.push('-name', `guest=${optValue(spec.name)}`);
  args.push(...accelArgs(spec.accel));
  args.push(
    '-object',
    `memory-backend-file,id=ram0,size=${spec.memoryMiB}M,mem-path=${optValue(spec.memoryFile)},share=on`,
    '-machine',
    'q35,memory-backend=ram0',
    '-m',
    `${spec.memoryMiB}M`,
    '-smp',
    String(spec.cpus),
  );
  args.push('-chardev', `socket,id=qmp,path=${optValue(spec.qmpSocket)},server=off`, '-mon', 'chardev=qmp,mode=control');
  args.push('-chardev', `socket,id=ser0,path=${optValue(spec.consoleSocket)},server=off`, '-serial', 'chardev:ser0');
  // -kernel/-initrd/-append take their argument verbatim (no option parsing), so no escaping.
  args.push('-kernel', spec.kernel, '-initrd', spec.initrd, '-append', spec.cmdline);
  if (spec.disk) {
    const { socketPath, exportName } = spec.disk;
    args.push(
      '-blockdev',
      `driver=nbd,node-name=disk0,server.type=unix,server.path=${optValue(socketPath)},export=${optValue(exportName)},discard=unmap`,
      '-device',
      'virtio-blk-pci,drive=disk0',
    );
  }
  if (spec.extraArgs) args.push(...spec.extraArgs);
  return args;
}
