/**
 * One guest build per cache directory at a time: a lock file created exclusively, holding the
 * builder's pid. A lock whose process is gone (a killed build) is taken over.
 */
import { link, readFile, rm, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

const POLL_MS = 500;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Resolves to a release function once `path` is ours; waits at most `timeoutMs` for another builder. */
export async function acquireBuildLock(path: string, timeoutMs: number, onWait: (holder: number) => void): Promise<() => Promise<void>> {
  const deadline = Date.now() + timeoutMs;
  let reported = false;
  // The pid is written first and the lock created by link(), so a lock never exists half-written.
  const mine = `${path}.${process.pid}`;
  await writeFile(mine, `${process.pid}\n`);
  try {
    for (;;) {
      try {
        await link(mine, path);
        return () => rm(path, { force: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      await waitTurn();
    }
  } finally {
    await rm(mine, { force: true });
  }

  async function waitTurn(): Promise<void> {
    const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (!Number.isSafeInteger(holder) || holder <= 0 || holder === process.pid || !alive(holder)) {
      // Left by a dead build (our own pid there means a dead build's pid was reused). Two waiters may both remove it; then both build, which costs time
      // but not correctness, since every artifact is renamed into place whole.
      await rm(path, { force: true });
      return;
    }
    if (Date.now() > deadline) throw new Error(`another guest build (pid ${holder}) still holds ${path} after ${timeoutMs / 1000} s`);
    if (!reported) onWait(holder);
    reported = true;
    await sleep(POLL_MS);
  }
}
