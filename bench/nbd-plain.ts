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
import { BenchScratch, best, log, makeImage, median, qemuImgBench, r2, startQemuNbd, startVmsealPlain, waitForExport } from './lib/nbd-bench.ts';

const FILE_MIB = 512;
const BLOCK = 65536;
const DEPTH = 16;
const COUNT = 8000;
const ROUNDS = Number(process.env.NBD_BENCH_ROUNDS ?? 5);
const GOAL = 0.8;
const shape = { count: COUNT, depth: DEPTH, block: BLOCK };

const scratch = new BenchScratch('vmseal-nbd-bench-');
const pass = (socket: string, write: boolean): Promise<number> => qemuImgBench(socket, write, shape);

try {
  const file = scratch.path('disk.raw');
  const oursSock = scratch.path('vmseal.sock');
  const qemuSock = scratch.path('qemu-nbd.sock');
  log(`nbd-plain: ${FILE_MIB} MiB raw file, qemu-img bench -c ${COUNT} -d ${DEPTH} -s ${BLOCK} -t none, ${ROUNDS} rounds`);
  makeImage(file, FILE_MIB);
  const ours = scratch.own(startVmsealPlain(file, oursSock));
  const qemu = scratch.own(startQemuNbd(file, qemuSock));
  await waitForExport(oursSock, ours, 'vmseal disk serve');
  await waitForExport(qemuSock, qemu, 'qemu-nbd');

  const servers = { vmseal: oursSock, qemu_nbd: qemuSock } as const;
  type Name = keyof typeof servers;
  const results: Record<Name, { read: number[]; write: number[] }> = { vmseal: { read: [], write: [] }, qemu_nbd: { read: [], write: [] } };
  // Warm-up: page cache for the file, JIT for our server; not counted.
  for (const s of Object.values(servers)) {
    await pass(s, false);
    await pass(s, true);
  }
  for (let round = 0; round < ROUNDS; round++) {
    const order: Name[] = round % 2 === 0 ? ['vmseal', 'qemu_nbd'] : ['qemu_nbd', 'vmseal'];
    for (const mode of ['read', 'write'] as const) {
      for (const name of order) results[name][mode].push(await pass(servers[name], mode === 'write'));
    }
  }

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
  await scratch.cleanup();
}
