/**
 * A background job in the demo guest that prints a numbered tick on the console and writes and
 * syncs a file every second: visible proof, on the console and on the NBD export, that the guest
 * runs. Used to check that a paused guest really stops.
 */
import { runInGuest, type GuestConsole } from './console-shell.ts';

export const TICK_PATTERN = /VMSEAL-TICK-(\d+)/;

export interface GuestTicker {
  pid: number;
  stop(): Promise<void>;
}

export async function startTicker(console: GuestConsole): Promise<GuestTicker> {
  const since = console.mark();
  const r = await runInGuest(
    console,
    `sh -c 'i=0; while :; do i=$((i+1)); echo VMSEAL-TICK-$i; echo $i > /root/tick; sync; sleep 1; done' & echo "PID=$!"`,
  );
  const m = /PID=(\d+)/.exec(r.output);
  if (!m) throw new Error(`ticker did not start: ${JSON.stringify(r.output)}`);
  await console.waitFor(TICK_PATTERN, 30_000, { since });
  const pid = Number(m[1]);
  return {
    pid,
    stop: async () => {
      await runInGuest(console, `kill ${pid}`);
    },
  };
}
