/**
 * Disk-path throughput, the same 512 MiB of data served five ways, each server in its own process:
 *   qemu_nbd       qemu-nbd over the raw file (the anchor);
 *   qemu_luks      qemu-nbd over a LUKS1 image (aes-256-xts-plain64) through QEMU's own luks driver;
 *   vmseal_plain   our NBD server over the raw file (`vmseal disk serve`);
 *   vmseal_xts     our NBD server over a sealed LUKS2 image, XTS only (XtsBackend, integrity 'none');
 *   vmseal_sealed  our NBD server over the same sealed image: SealedBackend, XTS + integrity tree.
 * The goals for "our export XTS" are judged on vmseal_xts, the one for "XTS + integrity" on vmseal_sealed.
 *
 * Tools: `qemu-img bench` 64 KiB depth 16, sequential read and write; fio's nbd engine, 4 KiB random
 * read and write at depth 32. Fairness as in nbd-plain: every server uses the page cache and no
 * per-write sync, and neither client sends flushes. The sealed disk, too, syncs only on FLUSH and FUA,
 * but each spill of its write-back buffer (at 16 of 32 MiB) first commits a record of the spilled
 * sectors' leaves to SQLite (one small fsync); that cost is part of what this measures. Before timing,
 * `qemu-img compare` proves every export serves the same bytes as the raw file. Passes rotate the
 * order of the targets each round; the best pass is reported (other load can only slow a pass down), the
 * median beside it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { IntegritySidecarWriter, sidecarPathFor } from '../src/client/integrity-sidecar-writer.ts';
import { sealImage } from '../src/client/image-seal.ts';
import { BenchScratch, EXPORT, MIB, best, log, makeImage, median, nbdUri, qemuImgBench, r2, repo, runTool, startQemuNbd, startVmsealPlain, waitForExport } from './lib/nbd-bench.ts';

const FILE_MIB = 512;
const QIB = { count: 8000, depth: 16, block: 65536 };
const FIO = { bs: 4096, iodepth: 32 };
const ROUNDS = positiveInt('DISK_BENCH_ROUNDS', 5);
const FIO_ROUNDS = positiveInt('DISK_BENCH_FIO_ROUNDS', 2);
const FIO_SECONDS = positiveInt('DISK_BENCH_FIO_SECONDS', 5);
const GOALS = { xts_vs_qemu_nbd: 0.75, xts_vs_qemu_luks: 2, xts_integrity_vs_plain: 0.5 } as const;

const TARGETS = ['qemu_nbd', 'qemu_luks', 'vmseal_plain', 'vmseal_xts', 'vmseal_sealed'] as const;
type Target = (typeof TARGETS)[number];
const TESTS = ['seq_read', 'seq_write', 'rand_read', 'rand_write'] as const;
type Test = (typeof TESTS)[number];

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 100) throw new Error(`${name} must be an integer in 1..100, got ${JSON.stringify(raw)}`);
  return n;
}

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await runTool(cmd, args, 120_000);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
}

/**
 * The LUKS1 image QEMU's luks driver makes, filled with the raw file's bytes through that driver.
 * Returns qemu-nbd's arguments for serving it through the same driver.
 */
async function makeQemuLuks(raw: string, image: string, secretFile: string): Promise<{ before: string[]; image: string }> {
  const secret = `secret,id=sec0,file=${secretFile}`;
  await run('qemu-img', [
    'create', '-q', '-f', 'luks', '--object', secret,
    // A 10 ms PBKDF2 budget: unlocking speed is not what is measured.
    '-o', 'key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10',
    image, `${FILE_MIB}M`,
  ]);
  const opts = `driver=luks,key-secret=sec0,file.filename=${image}`;
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '--object', secret, '--target-image-opts', raw, opts]);
  return { before: ['--object', secret, '--image-opts'], image: opts };
}

interface SealedFiles {
  image: string;
  sidecar: string;
  payloadOffset: number;
  volumeKey: Buffer;
  root: Buffer;
  sectors: number;
}

/** Seals the raw file as `vmseal image seal` does: LUKS2 image and integrity sidecar in one pass. */
async function makeSealed(raw: string, image: string): Promise<SealedFiles> {
  const sidecar = sidecarPathFor(image);
  let writer: IntegritySidecarWriter | undefined;
  try {
    const sealed = await sealImage({
      input: raw,
      output: image,
      passphrase: Buffer.from('bench'),
      pbkdf: 'pbkdf2',
      kdfCost: { iterations: 1000 }, // unlocking speed is not what is measured
      onStart: async ({ volumeKey, sectors }) => {
        writer = await IntegritySidecarWriter.create(sidecar, volumeKey, sectors);
      },
      onCiphertext: (first, ciphertext) => writer!.add(first, ciphertext),
    });
    return { image, sidecar, payloadOffset: sealed.payloadOffset, volumeKey: sealed.volumeKey, root: await writer!.finish(), sectors: sealed.sectors };
  } catch (err) {
    await writer?.abort();
    throw err;
  }
}

/** Our sealed export in its own process (bench/lib/serve-sealed.ts); the key travels in a 0600 file. */
function startSealed(files: SealedFiles, integrity: 'tree' | 'none', socket: string, configPath: string, dbPath: string): ChildProcess {
  const config = {
    image: files.image,
    sidecar: files.sidecar,
    payloadOffset: files.payloadOffset,
    volumeKey: files.volumeKey.toString('hex'),
    root: files.root.toString('hex'),
    db: dbPath,
    socket,
    export: EXPORT,
    integrity,
    sectors: files.sectors,
  };
  writeFileSync(configPath, JSON.stringify(config), { mode: 0o600 });
  return spawn(process.execPath, ['--import', 'tsx', 'bench/lib/serve-sealed.ts', configPath], { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Byte-for-byte: the export serves exactly the raw file's contents. */
async function checkSameData(raw: string, socket: string, target: Target): Promise<void> {
  const r = await runTool('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', raw, nbdUri(socket)], 120_000);
  if (r.status !== 0) throw new Error(`${target} does not serve the raw file's bytes (qemu-img compare exit ${r.status}): ${r.stderr || r.stdout}`);
}

interface FioResult {
  mibps: number;
  iops: number;
}

interface FioSide {
  bw_bytes: number;
  iops: number;
}

/** One fio nbd-engine pass, time-based; bandwidth and IOPS of the single job. */
async function fioPass(socket: string, write: boolean, outPath: string): Promise<FioResult> {
  const args = [
    '--name=disk', '--ioengine=nbd', `--uri=${nbdUri(socket)}`, `--rw=${write ? 'randwrite' : 'randread'}`,
    `--bs=${FIO.bs}`, `--iodepth=${FIO.iodepth}`, `--runtime=${FIO_SECONDS}`, '--time_based',
    '--output-format=json', `--output=${outPath}`,
  ];
  const r = await runTool('fio', args, (FIO_SECONDS + 60) * 1000);
  if (r.status !== 0) throw new Error(`fio ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
  const job = (JSON.parse(readFileSync(outPath, 'utf8')) as { jobs?: { error?: number; read?: FioSide; write?: FioSide }[] }).jobs?.[0];
  const side = write ? job?.write : job?.read;
  if (!job || job.error !== 0 || !side || !(side.iops > 0)) throw new Error(`fio against ${socket}: no usable result (error ${job?.error})`);
  return { mibps: side.bw_bytes / MIB, iops: side.iops };
}

/** `round`-th rotation of the targets, so none always runs first or last. */
function rotated(round: number): Target[] {
  const k = round % TARGETS.length;
  return [...TARGETS.slice(k), ...TARGETS.slice(0, k)];
}

const scratch = new BenchScratch('vmseal-disk-bench-');
try {
  log(`disk: ${FILE_MIB} MiB; qemu-img bench -c ${QIB.count} -d ${QIB.depth} -s ${QIB.block} x${ROUNDS}; fio nbd ${FIO.bs} B qd${FIO.iodepth} ${FIO_SECONDS} s x${FIO_ROUNDS}`);
  const raw = scratch.path('disk.raw');
  makeImage(raw, FILE_MIB);
  // A boot sector signature: the sealed disk checks it on the first read of sector 0.
  const fd = openSync(raw, 'r+');
  try {
    writeSync(fd, Buffer.from([0x55, 0xaa]), 0, 2, 510);
  } finally {
    closeSync(fd);
  }
  const secretFile = scratch.path('luks.secret');
  writeFileSync(secretFile, randomBytes(24).toString('hex'), { mode: 0o600 });
  log('creating the LUKS1 image (QEMU luks driver) and the sealed LUKS2 image + sidecar...');
  const luks = await makeQemuLuks(raw, scratch.path('disk.luks1'), secretFile);
  const sealed = await makeSealed(raw, scratch.path('disk.sealed'));
  const xtsImage = { ...sealed, image: scratch.path('disk.xts') };
  copyFileSync(sealed.image, xtsImage.image);

  const sockets: Record<Target, string> = {
    qemu_nbd: scratch.path('qemu-nbd.sock'),
    qemu_luks: scratch.path('qemu-luks.sock'),
    vmseal_plain: scratch.path('vmseal-plain.sock'),
    vmseal_xts: scratch.path('vmseal-xts.sock'),
    vmseal_sealed: scratch.path('vmseal-sealed.sock'),
  };
  const children = {
    qemu_nbd: scratch.own(startQemuNbd(raw, sockets.qemu_nbd)),
    qemu_luks: scratch.own(startQemuNbd(luks.image, sockets.qemu_luks, luks.before)),
    vmseal_plain: scratch.own(startVmsealPlain(raw, sockets.vmseal_plain)),
    // Two images: the XTS-only export writes to its own copy, so the tree export's sidecar stays valid.
    vmseal_xts: scratch.own(startSealed(xtsImage, 'none', sockets.vmseal_xts, scratch.path('xts.json'), scratch.path('monitor-xts.db'))),
    vmseal_sealed: scratch.own(startSealed(sealed, 'tree', sockets.vmseal_sealed, scratch.path('sealed.json'), scratch.path('monitor.db'))),
  };
  sealed.volumeKey.fill(0);
  for (const t of TARGETS) await waitForExport(sockets[t], children[t], t);
  // Also the read warm-up (page cache, JIT); the raw file is not written before this.
  for (const t of TARGETS) await checkSameData(raw, sockets[t], t);
  log('all five exports serve the same bytes');

  const mibps = Object.fromEntries(TARGETS.map((t) => [t, Object.fromEntries(TESTS.map((k) => [k, [] as number[]]))])) as Record<Target, Record<Test, number[]>>;
  const iops = Object.fromEntries(TARGETS.map((t) => [t, { rand_read: [] as number[], rand_write: [] as number[] }])) as Record<Target, Record<'rand_read' | 'rand_write', number[]>>;
  for (const t of TARGETS) await qemuImgBench(sockets[t], true, QIB); // write warm-up, not counted
  for (let round = 0; round < ROUNDS; round++) {
    for (const write of [false, true]) {
      for (const t of rotated(round)) mibps[t][write ? 'seq_write' : 'seq_read'].push(await qemuImgBench(sockets[t], write, QIB));
    }
  }
  const fioOut = scratch.path('fio.json');
  for (let round = 0; round < FIO_ROUNDS; round++) {
    for (const write of [false, true]) {
      const test = write ? 'rand_write' : 'rand_read';
      for (const t of rotated(round)) {
        const r = await fioPass(sockets[t], write, fioOut);
        mibps[t][test].push(r.mibps);
        iops[t][test].push(r.iops);
      }
    }
  }

  log('');
  log('target         test          best MiB/s  median MiB/s  best IOPS  all passes (MiB/s)');
  for (const t of TARGETS) {
    for (const k of TESTS) {
      const xs = mibps[t][k];
      const io = k === 'rand_read' || k === 'rand_write' ? best(iops[t][k]).toFixed(0) : '';
      log(`${t.padEnd(14)} ${k.padEnd(12)} ${best(xs).toFixed(0).padStart(11)} ${median(xs).toFixed(0).padStart(13)} ${io.padStart(10)}  ${xs.map((x) => x.toFixed(0)).join(' ')}`);
    }
  }
  const summarize = (pick: (xs: number[]) => number): Record<Target, Record<string, number>> => {
    const out = {} as Record<Target, Record<string, number>>;
    for (const t of TARGETS) {
      out[t] = {
        seq_read_mibps: r2(pick(mibps[t].seq_read)),
        seq_write_mibps: r2(pick(mibps[t].seq_write)),
        rand_read_mibps: r2(pick(mibps[t].rand_read)),
        rand_read_iops: Math.round(pick(iops[t].rand_read)),
        rand_write_mibps: r2(pick(mibps[t].rand_write)),
        rand_write_iops: Math.round(pick(iops[t].rand_write)),
      };
    }
    return out;
  };
  const ratioOf = (num: Target, den: Target) => Object.fromEntries(TESTS.map((k) => [k, r2(best(mibps[num][k]) / best(mibps[den][k]))])) as Record<Test, number>;
  // Numerator and denominator of every ratio, so the JSON says what each one compares.
  const basis = {
    xts_vs_qemu_nbd: ['vmseal_xts', 'qemu_nbd'],
    xts_vs_qemu_luks: ['vmseal_xts', 'qemu_luks'],
    xts_integrity_vs_plain: ['vmseal_sealed', 'qemu_nbd'],
    vmseal_plain_vs_qemu_nbd: ['vmseal_plain', 'qemu_nbd'],
    qemu_luks_vs_qemu_nbd: ['qemu_luks', 'qemu_nbd'],
  } as const satisfies Record<string, readonly [Target, Target]>;
  const ratios = Object.fromEntries(Object.entries(basis).map(([name, [num, den]]) => [name, ratioOf(num, den)])) as Record<keyof typeof basis, Record<Test, number>>;
  const meets = Object.fromEntries(
    (Object.keys(GOALS) as (keyof typeof GOALS)[]).map((g) => [g, Object.fromEntries(TESTS.map((k) => [k, ratios[g][k] >= GOALS[g]]))]),
  ) as Record<keyof typeof GOALS, Record<Test, boolean>>;
  log('');
  for (const g of Object.keys(GOALS) as (keyof typeof GOALS)[]) {
    log(`${g.padEnd(24)} goal ${String(GOALS[g]).padEnd(5)} ${TESTS.map((k) => `${k} ${ratios[g][k]}${meets[g][k] ? '' : ' (missed)'}`).join(', ')}`);
  }
  const summary = {
    bench: 'disk',
    file_mib: FILE_MIB,
    qemu_img_bench: { ...QIB, rounds: ROUNDS },
    fio: { ...FIO, seconds: FIO_SECONDS, rounds: FIO_ROUNDS },
    xts_measured_on: 'vmseal_xts',
    best: summarize(best),
    median: summarize(median),
    ratios,
    ratio_basis: Object.fromEntries(Object.entries(basis).map(([name, [num, den]]) => [name, `${num}/${den}`])),
    goals: GOALS,
    meets_goal: meets,
    all_goals_met: Object.values(meets).every((m) => Object.values(m).every(Boolean)),
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
} finally {
  await scratch.cleanup();
}
