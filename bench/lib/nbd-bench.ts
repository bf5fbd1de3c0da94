/**
 * Pieces shared by the NBD benchmarks: the test file, NBD servers in child processes (ours and
 * qemu-nbd), `qemu-img bench` passes, and a scratch directory whose processes and files are removed
 * however the run ends.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, closeSync, writeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const MIB = 1024 * 1024;
/** Every server in the benchmarks serves its disk under this export name. */
export const EXPORT = 'disk';
export const repo = resolve(import.meta.dirname, '..', '..');

export function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

export function nbdUri(socket: string): string {
  return `nbd+unix:///${EXPORT}?socket=${socket}`;
}

/** Writes `mib` MiB of random bytes, no two MiB alike. */
export function makeImage(path: string, mib: number): void {
  const block = Buffer.alloc(MIB);
  randomFillSync(block);
  const fd = openSync(path, 'w');
  try {
    for (let i = 0; i < mib; i++) {
      block.writeUInt32LE(i, 0);
      writeSync(fd, block);
    }
  } finally {
    closeSync(fd);
  }
}

/** Waits until a real NBD client gets the export's size (a bare connect would make qemu-nbd log a broken pipe). */
export async function waitForExport(socket: string, child: ChildProcess, what: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before listening`);
    if (existsSync(socket) && spawnSync('nbdinfo', ['--size', nbdUri(socket)], { stdio: 'ignore', timeout: 10_000 }).status === 0) return;
    await sleep(100);
  }
  throw new Error(`${what} did not start serving on ${socket}`);
}

/** Our plain-file server: the real `vmseal disk serve` command module, without needing the whole CLI. */
export function startVmsealPlain(file: string, socket: string): ChildProcess {
  const entry = [
    "import { Command } from 'commander';",
    "import { registerDiskCommands } from './src/cli/commands/disk.ts';",
    "const p = new Command().name('vmseal'); registerDiskCommands(p);",
    'await p.parseAsync(process.argv);',
  ].join('\n');
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', entry, 'vmseal', 'disk', 'serve', '--file', file, '--socket', socket, '--export', EXPORT], {
    cwd: repo,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

/**
 * qemu-nbd with its defaults made explicit (page cache, no per-write sync). `image` is the file
 * argument and `before` what goes ahead of the options, e.g. `--object` and `--image-opts` for a
 * LUKS image opened through QEMU's luks driver.
 */
export function startQemuNbd(image: string, socket: string, before: string[] = ['-f', 'raw']): ChildProcess {
  return spawn('qemu-nbd', [...before, '--cache=writeback', '--aio=threads', '--persistent', '-x', EXPORT, `--socket=${socket}`, image], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

export interface QemuImgBenchShape {
  count: number;
  depth: number;
  block: number;
}

/** Client tools running right now; BenchScratch.cleanup() stops them too. */
const tools = new Set<ChildProcess>();

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a client tool to completion, killed after `timeoutMs`. Asynchronous so that a signal's
 * cleanup can run (and stop the tool) while a pass is under way.
 */
export function runTool(cmd: string, args: string[], timeoutMs: number): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    tools.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      tools.delete(child);
      reject(err);
    });
    child.once('close', (status, signal) => {
      clearTimeout(timer);
      tools.delete(child);
      resolve({ status, stdout, stderr: signal ? `${stderr}(killed by ${signal})` : stderr });
    });
  });
}

/**
 * One sequential `qemu-img bench` pass; returns MiB/s. `-t none`: for an NBD target that only
 * means QEMU keeps no cache of its own and sends no flushes, so every request reaches the server.
 */
export async function qemuImgBench(socket: string, write: boolean, shape: QemuImgBenchShape): Promise<number> {
  const args = ['bench', '-f', 'raw', '-t', 'none', '-c', String(shape.count), '-d', String(shape.depth), '-s', String(shape.block)];
  if (write) args.push('-w');
  args.push(nbdUri(socket));
  const r = await runTool('qemu-img', args, 120_000);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  if (r.status !== 0 || !m) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr || r.stdout}`);
  return (shape.count * shape.block) / MIB / Number(m[1]);
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process has exited. */
export async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

export const best = (xs: number[]): number => Math.max(...xs);
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
export const r2 = (x: number): number => Math.round(x * 100) / 100;

/**
 * A scratch directory and the servers started for one run. cleanup() stops them and any running
 * client tool, and removes the directory; it also runs on SIGINT and SIGTERM, so an interrupted run leaves nothing behind.
 */
export class BenchScratch {
  readonly dir: string;
  readonly #children: ChildProcess[] = [];

  constructor(prefix: string) {
    this.dir = mkdtempSync(join(tmpdir(), prefix));
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => void this.cleanup().finally(() => process.exit(130)));
    }
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  /** Takes ownership of a started server: cleanup() stops it. */
  own(child: ChildProcess): ChildProcess {
    this.#children.push(child);
    return child;
  }

  async cleanup(): Promise<void> {
    await Promise.all([...this.#children, ...tools].map((c) => stop(c)));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
