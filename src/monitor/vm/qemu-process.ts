import { spawn, type ChildProcess } from 'node:child_process';

export const QEMU_BINARY = 'qemu-system-x86_64';

/**
 * Spawns QEMU so that it can never outlive the monitor: `setpriv --pdeathsig SIGKILL` (util-linux)
 * sets PR_SET_PDEATHSIG and then execs QEMU in the same process (same pid), so even a SIGKILLed
 * monitor, which runs no cleanup at all, takes its QEMU processes down with it.
 * The child gets its own process group, so a terminal's Ctrl-C reaches only the monitor, which
 * then stops QEMU in order (quit, then signals) instead of racing it.
 */
export function spawnQemu(args: readonly string[]): ChildProcess {
  return spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', QEMU_BINARY, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
}
