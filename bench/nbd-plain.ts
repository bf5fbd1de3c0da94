/**
 * Plain-file NBD throughput: our server (`vmseal disk serve`, in its own process) against
 * qemu-nbd on the same 512 MiB raw file, measured with `qemu-img bench` over a unix socket.
 *
 * Fairness: both servers use the host page cache and no per-write sync (qemu-nbd
 * --cache=writeback --aio=threads, its defaults; ours does buffered pread/pwrite). The client
 * runs with `-t none`: for an NBD target that only means QEMU keeps no cache of its own and
 * sends no flushes, so every request reaches the server. Passes alternate between the two
 * servers (and swap order each round) so background load hits both alike; the best of the
 * rounds is reported, since other load can only slow a pass down.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, closeSync, writeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const FILE_MIB = 512;
const BLOCK = 65536;
const DEPTH = 16;
const COUNT = 8000;
const ROUNDS = Number(process.env.NBD_BENCH_ROUNDS ?? 5);
const GOAL = 0.8;
const MIB = 1024 * 1024;
const repo = resolve(import.meta.dirname, '..');

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

function makeImage(path: string): void {
  const block = Buffer.alloc(MIB);
  randomFillSync(block);
  const fd = openSync(path, 'w');
  try {
    for (let i = 0; i < FILE_MIB; i++) {
      block.writeUInt32LE(i, 0); // no two MiB alike
      writeSync(fd, block);
    }
  } finally {
    closeSync(fd);
  }
}

/** Waits until a real NBD client gets the export's size (a bare connect would make qemu-nbd log a broken pipe). */
async function waitForExport(socket: string, child: ChildProcess, what: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before listening`);
    if (existsSync(socket) && spawnSync('nbdinfo', ['--size', `nbd+unix:///disk?socket=${socket}`], { stdio: 'ignore', timeout: 10_000 }).status === 0) return;
    await sleep(100);
  }
  throw new Error(`${what} did not start serving on ${socket}`);
}

function startVmseal(file: string, socket: string): ChildProcess {
  // Runs the real `vmseal disk serve` command module, without needing the whole CLI.
  const entry = [
    "import { Command } from 'commander';",
    "import { registerDiskCommands } from './src/cli/commands/disk.ts';",
    "const p = new Command().name('vmseal'); registerDiskCommands(p);",
    'await p.parseAsync(process.argv);',
  ].join('\n');
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', entry, 'vmseal', 'disk', 'serve', '--file', file, '--socket', socket, '--export', 'disk'], {
    cwd: repo,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

function startQemuNbd(file: string, socket: string): ChildProcess {
  return spawn('qemu-nbd', ['-f', 'raw', '--cache=writeback', '--aio=threads', '--persistent', '-x', 'disk', `--socket=${socket}`, file], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

/** One qemu-img bench pass; returns MiB/s. */
function pass(socket: string, write: boolean): number {
  const args = ['bench', '-f', 'raw', '-t', 'none', '-c', String(COUNT), '-d', String(DEPTH), '-s', String(BLOCK)];
  if (write) args.push('-w');
  args.push(`nbd+unix:///disk?socket=${socket}`);
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', timeout: 120_000 });
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout ?? '');
  if (r.status !== 0 || !m) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr || r.stdout}`);
  return (COUNT * BLOCK) / MIB / Number(m[1]);
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

const dir = mkdtempSync(join(tmpdir(), 'vmseal-nbd-bench-'));
let ours: ChildProcess | undefined;
let qemu: ChildProcess | undefined;
const cleanup = async (): Promise<void> => {
  await Promise.all([stop(ours), stop(qemu)]);
  rmSync(dir, { recursive: true, force: true });
};
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => void cleanup().finally(() => process.exit(130)));
}

try {
  const file = join(dir, 'disk.raw');
  const oursSock = join(dir, 'vmseal.sock');
  const qemuSock = join(dir, 'qemu-nbd.sock');
  log(`nbd-plain: ${FILE_MIB} MiB raw file, qemu-img bench -c ${COUNT} -d ${DEPTH} -s ${BLOCK} -t none, ${ROUNDS} rounds`);
  makeImage(file);
  ours = startVmseal(file, oursSock);
  qemu = startQemuNbd(file, qemuSock);
  await waitForExport(oursSock, ours, 'vmseal disk serve');
  await waitForExport(qemuSock, qemu, 'qemu-nbd');

  const servers = { vmseal: oursSock, qemu_nbd: qemuSock } as const;
  type Name = keyof typeof servers;
  const results: Record<Name, { read: number[]; write: number[] }> = { vmseal: { read: [], write: [] }, qemu_nbd: { read: [], write: [] } };
  // Warm-up: page cache for the file, JIT for our server; not counted.
  for (const s of Object.values(servers)) {
    pass(s, false);
    pass(s, true);
  }
  for (let round = 0; round < ROUNDS; round++) {
    const order: Name[] = round % 2 === 0 ? ['vmseal', 'qemu_nbd'] : ['qemu_nbd', 'vmseal'];
    for (const mode of ['read', 'write'] as const) {
      for (const name of order) results[name][mode].push(pass(servers[name], mode === 'write'));
    }
  }

  const best = (xs: number[]): number => Math.max(...xs);
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const r2 = (x: number): number => Math.round(x * 100) / 100;
  log('');
  log('server     mode    best MiB/s  median MiB/s  all passes');
  for (const name of Object.keys(servers) as Name[]) {
    for (const mode of ['read', 'write'] as const) {
      const xs = results[name][mode];
      log(`${name.padEnd(10)} ${mode.padEnd(6)} ${best(xs).toFixed(0).padStart(11)} ${median(xs).toFixed(0).padStart(13)}  ${xs.map((x) => x.toFixed(0)).join(' ')}`);
    }
  }
  const ratio = {
    read: r2(best(results.vmseal.read) / best(results.qemu_nbd.read)),
    write: r2(best(results.vmseal.write) / best(results.qemu_nbd.write)),
  };
  log(`ratio vmseal/qemu-nbd (best): read ${ratio.read}, write ${ratio.write}; goal ${GOAL}`);
  const summary = {
    bench: 'nbd-plain',
    file_mib: FILE_MIB,
    block: BLOCK,
    depth: DEPTH,
    count: COUNT,
    rounds: ROUNDS,
    vmseal: { read_mibps: r2(best(results.vmseal.read)), write_mibps: r2(best(results.vmseal.write)) },
    qemu_nbd: { read_mibps: r2(best(results.qemu_nbd.read)), write_mibps: r2(best(results.qemu_nbd.write)) },
    median: {
      vmseal: { read_mibps: r2(median(results.vmseal.read)), write_mibps: r2(median(results.vmseal.write)) },
      qemu_nbd: { read_mibps: r2(median(results.qemu_nbd.read)), write_mibps: r2(median(results.qemu_nbd.write)) },
    },
    ratio,
    goal: GOAL,
    meets_goal: { read: ratio.read >= GOAL, write: ratio.write >= GOAL },
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
} finally {
  await cleanup();
}
