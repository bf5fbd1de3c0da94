/**
 * Starts a bundled program as a confined process: Node's permission model (Node 20:
 * `--experimental-permission`) with read access to the bundle file alone, which also denies every file
 * write, child processes, worker threads and native addons; and a fresh network namespace (util-linux
 * `unshare --net`, or `unshare --user --map-root-user --net` when not root) with no interface up, since
 * Node 20's permission model does not cover the network. The environment is emptied.
 *
 * When no network namespace can be made, starting fails unless the caller passes
 * `insecureNoNetns: true`, which runs the process with the file/child-process confinement only.
 */
import { spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';

export class SandboxUnavailableError extends Error {
  override name = 'SandboxUnavailableError';
}

export interface SandboxOptions {
  /** Run without a network namespace if none can be made (the process can then reach the network). */
  insecureNoNetns?: boolean;
  /** The Node binary (default: the one running now). */
  nodePath?: string;
}

export interface SandboxCommand {
  command: string;
  args: string[];
  /** Whether the process runs in its own network namespace. */
  netns: boolean;
}

const UNSHARE = '/usr/bin/unshare';
let netnsProbe: { args: string[] } | { error: string } | undefined;

/** Which `unshare` arguments make a network namespace here, probed once per process. */
function probeNetns(): { args: string[] } | { error: string } {
  if (netnsProbe) return netnsProbe;
  const candidates = process.getuid?.() === 0 ? [['--net'], ['--user', '--map-root-user', '--net']] : [['--user', '--map-root-user', '--net']];
  const failures: string[] = [];
  for (const args of candidates) {
    const r = spawnSync(UNSHARE, [...args, '--', '/bin/true'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
    if (r.status === 0) return (netnsProbe = { args });
    failures.push(`unshare ${args.join(' ')}: ${r.error?.message ?? (r.stderr.toString('utf8').trim() || `exit ${r.status}`)}`);
  }
  return (netnsProbe = { error: failures.join('; ') });
}

export function sandboxCommand(bundlePath: string, opts: SandboxOptions = {}): SandboxCommand {
  if (bundlePath.includes(',')) throw new SandboxUnavailableError(`bundle path ${bundlePath} contains a comma, which --allow-fs-read would split`);
  const node = opts.nodePath ?? process.execPath;
  const nodeArgs = ['--experimental-permission', `--allow-fs-read=${bundlePath}`, '--disable-warning=ExperimentalWarning', bundlePath];
  const probe = probeNetns();
  if ('args' in probe) return { command: UNSHARE, args: [...probe.args, '--', node, ...nodeArgs], netns: true };
  if (!opts.insecureNoNetns) {
    throw new SandboxUnavailableError(
      `cannot give the enclave its own network namespace (${probe.error}); run as root or enable unprivileged user namespaces, ` +
        'or accept an enclave that can reach the network with --insecure-no-netns',
    );
  }
  return { command: node, args: nodeArgs, netns: false };
}

export type SandboxedProcess = ChildProcessByStdio<Writable, Readable, Readable>;

/** Spawns the bundle confined; stdin/stdout are the call pipe, stderr carries the program's diagnostics. */
export function spawnSandboxed(bundlePath: string, opts: SandboxOptions = {}): { child: SandboxedProcess; netns: boolean } {
  const cmd = sandboxCommand(bundlePath, opts);
  // unshare execs node in place, so the child's pid is the program's own (signals reach it directly).
  const child = spawn(cmd.command, cmd.args, { stdio: ['pipe', 'pipe', 'pipe'], env: {} });
  return { child, netns: cmd.netns };
}
