/**
 * Process-wide cleanup registry. Whatever owns an external resource (a QEMU process, a run dir
 * holding guest memory) registers how to release it, so that SIGINT/SIGTERM of the monitor or
 * a normal `runCleanups()` releases everything, and a plain `process.exit` still kills and
 * deletes what it can synchronously.
 */

type Cleanup = () => Promise<void> | void;

const DEFAULT_BUDGET_MS = 10_000;
const SIGNAL_EXIT_CODES = { SIGINT: 130, SIGTERM: 143 } as const;

/** Registration order; run in reverse (LIFO) so later resources, which may use earlier ones, go first. */
const cleanups: { fn: Cleanup }[] = [];
const exitHooks = new Set<{ fn: () => void }>();
let signalHandlersInstalled = false;
let exitHandlerInstalled = false;
let exiting = false;

function report(what: string, err: unknown): void {
  // Runs while the process is going down: write synchronously-ish to stderr, never throw.
  const msg = err instanceof Error ? err.message : String(err);
  try {
    process.stderr.write(`vmseal: ${what}: ${msg}\n`);
  } catch {
    // stderr itself is gone; nothing more we can do.
  }
}

function onSignal(signal: keyof typeof SIGNAL_EXIT_CODES): void {
  const code = SIGNAL_EXIT_CODES[signal];
  if (exiting) {
    // A second signal while cleaning up means "now": the exit hooks still kill and delete synchronously.
    process.exit(code);
  }
  exiting = true;
  void runCleanups().finally(() => process.exit(code));
}

function installSignalHandlers(): void {
  if (signalHandlersInstalled) return;
  signalHandlersInstalled = true;
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
}

/** Registers `fn` to run on SIGINT/SIGTERM or `runCleanups()`. Returns a function that unregisters it. */
export function registerCleanup(fn: Cleanup): () => void {
  installSignalHandlers();
  const entry = { fn };
  cleanups.push(entry);
  return () => {
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
  };
}

/**
 * Registers a synchronous last-resort hook for process 'exit' (only synchronous work can run
 * there), e.g. SIGKILL a child and delete its files. Returns a function that unregisters it.
 */
export function registerExitHook(fn: () => void): () => void {
  if (!exitHandlerInstalled) {
    exitHandlerInstalled = true;
    process.on('exit', () => {
      for (const hook of [...exitHooks]) {
        try {
          hook.fn();
        } catch (err) {
          report('exit hook failed', err);
        }
      }
    });
  }
  const entry = { fn };
  exitHooks.add(entry);
  return () => {
    exitHooks.delete(entry);
  };
}

/**
 * Runs (and removes) every registered cleanup, newest first, within `budgetMs` in total.
 * Errors are reported on stderr, never thrown; cleanups still running at the deadline are abandoned.
 */
export async function runCleanups(budgetMs: number = DEFAULT_BUDGET_MS): Promise<void> {
  const pending = cleanups.splice(0).reverse();
  const deadline = Date.now() + budgetMs;
  for (const [i, { fn }] of pending.entries()) {
    const left = deadline - Date.now();
    if (left <= 0) {
      report('cleanup', new Error(`budget of ${budgetMs} ms exhausted; ${pending.length - i} cleanup(s) not run`));
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((resolve) => {
      timer = setTimeout(() => resolve('expired'), left);
    });
    try {
      const outcome = await Promise.race([Promise.resolve().then(fn), expired]);
      if (outcome === 'expired') report('cleanup', new Error(`still running after ${budgetMs} ms budget; abandoned`));
    } catch (err) {
      report('cleanup failed', err);
    } finally {
      clearTimeout(timer);
    }
  }
}
