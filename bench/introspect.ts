/**
 * Time to list every process of a guest running at least 300, three ways (issue 4, seed 000 §5):
 *   direct  the monitor's own read path (DirectMemorySource on the guest RAM file) in-process, the
 *           seed's conventional offload;
 *   plain   the IDS enclave through the host library and the monitor's channel, unencrypted (a
 *           monitor built with benchPlainIdsChannel and an enclave configured for it);
 *   sealed  the same with the sealed channel: what `vmseal ids pslist` does.
 * The plain mode is all-or-nothing per monitor, so the benchmark boots the demo guest twice: once
 * with a sealed monitor (direct and sealed rounds alternate) and once with a plain one (direct and
 * plain alternate). Each figure is the time from the call to the process list in hand; the best
 * round is reported (other load can only slow a round down), the median beside it, and the machine's
 * load average around the run. The last line is the JSON summary.
 */
import { loadavg } from 'node:os';
import { startIdsWorld } from '../src/cli/demo/ids.ts';
import { parseIsfText } from '../src/formats/isf.ts';
import type { MemorySource, ReadOp } from '../src/formats/protocol/ids-read.ts';
import { buildGuest } from '../src/guest/build.ts';
import { runInGuest } from '../src/guest/console-shell.ts';
import { pslistCheck } from '../src/ids/checks/pslist.ts';
import { KernelView } from '../src/ids/kernel/kernel-view.ts';

const ROUNDS = positiveInt('INTROSPECT_BENCH_ROUNDS', 15);
const EXTRA_PROCESSES = 300;
const GOAL = { ratio: 1.25, sealed_ms: 30 } as const;
// TCG by default, as the demo: the guest's speed does not enter the figures, only its memory.
const ACCEL = process.env.INTROSPECT_BENCH_ACCEL === 'kvm' || process.env.INTROSPECT_BENCH_ACCEL === 'auto' ? process.env.INTROSPECT_BENCH_ACCEL : 'tcg';

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new Error(`${name} must be an integer in 1..1000, got ${JSON.stringify(raw)}`);
  return n;
}

const log = (line: string): void => void process.stderr.write(`${line}\n`);
const r2 = (x: number): number => Math.round(x * 100) / 100;
const best = (xs: number[]): number => Math.min(...xs);
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, value };
}

interface Boot {
  processes: number;
  direct: number[];
  channel: number[];
  load: number[];
}

/** One boot: `ROUNDS` alternating rounds of the direct path and the enclave's channel. */
async function measure(guest: Awaited<ReturnType<typeof buildGuest>>, plain: boolean): Promise<Boot> {
  const mode = plain ? 'plain' : 'sealed';
  log(`introspect: booting the demo guest behind a ${mode} monitor`);
  const world = await startIdsWorld({ guest, accel: ACCEL, log: (m) => log(`  ${m}`), checks: { pslist: {} }, ...(plain ? { benchPlainIdsChannel: true } : {}) });
  try {
    log(`introspect: guest up; starting ${EXTRA_PROCESSES} sleeping processes in it`);
    const started = await runInGuest(world.guestConsole, `for i in $(seq ${EXTRA_PROCESSES}); do sleep 100000 & done; sleep 1`, 180_000);
    if (started.exitCode !== 0) throw new Error(`could not start ${EXTRA_PROCESSES} processes in the guest: ${started.output}`);
    const session = await world.startSession();
    try {
      // The monitor's in-process source, asked for per batch exactly as the channel's reads are.
      const direct: MemorySource = { read: async (ops: readonly ReadOp[]) => (await world.cloud.monitor.guestMemory(world.vmId)).read(ops) };
      const kernel = await KernelView.open(direct, parseIsfText(world.profileText));
      const check = pslistCheck();
      const listDirect = async () => (await check.scan(kernel)).data ?? [];
      const listChannel = () => session.enclave.pslist();
      // Warm-up: the enclave finds the KASLR slide on its first list; both paths fault in the RAM file.
      const first = await listChannel();
      const firstDirect = await listDirect();
      if (first.length < EXTRA_PROCESSES || Math.abs(first.length - firstDirect.length) > 5) {
        throw new Error(`the enclave lists ${first.length} tasks and the direct path ${firstDirect.length}; expected >= ${EXTRA_PROCESSES} from both`);
      }
      const boot: Boot = { processes: first.length, direct: [], channel: [], load: [loadavg()[0] ?? 0] };
      for (let i = 0; i < ROUNDS; i++) {
        // Alternate which goes first, so a burst of other load does not always hit the same one.
        const order = i % 2 === 0 ? ([listDirect, listChannel] as const) : ([listChannel, listDirect] as const);
        for (const fn of order) {
          const { ms, value } = await timed(fn);
          if (value.length < EXTRA_PROCESSES) throw new Error(`a round listed only ${value.length} tasks`);
          (fn === listDirect ? boot.direct : boot.channel).push(ms);
        }
      }
      boot.load.push(loadavg()[0] ?? 0);
      log(`introspect: ${mode}: ${boot.processes} tasks; direct best ${r2(best(boot.direct))} ms median ${r2(median(boot.direct))} ms; ${mode} best ${r2(best(boot.channel))} ms median ${r2(median(boot.channel))} ms`);
      return boot;
    } finally {
      await session.close();
    }
  } finally {
    await world.close();
  }
}

const guest = await buildGuest({ onProgress: (m) => log(`guest: ${m}`) });
const sealed = await measure(guest, false);
const plain = await measure(guest, true);
const direct = best(sealed.direct);
const sealedMs = best(sealed.channel);
const plainMs = best(plain.channel);
const summary = {
  bench: 'introspect',
  processes: Math.min(sealed.processes, plain.processes),
  rounds: ROUNDS,
  direct_ms: r2(direct),
  plain_ms: r2(plainMs),
  sealed_ms: r2(sealedMs),
  median_ms: { direct: r2(median(sealed.direct)), plain: r2(median(plain.channel)), sealed: r2(median(sealed.channel)) },
  // (b) is compared with the direct rounds of its own boot.
  direct_ms_plain_boot: r2(best(plain.direct)),
  ratio_plain_vs_direct: r2(plainMs / best(plain.direct)),
  ratio_sealed_vs_direct: r2(sealedMs / direct),
  goal: GOAL,
  meets_goal: { ratio: sealedMs / direct <= GOAL.ratio, sealed_ms: sealedMs < GOAL.sealed_ms },
  load_avg_1m: { sealed_boot: sealed.load.map(r2), plain_boot: plain.load.map(r2) },
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
