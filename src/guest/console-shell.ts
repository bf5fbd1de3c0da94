/**
 * Runs shell commands in the demo guest over its serial console, for tests and the demo. The guest's
 * root shell echoes what it is sent, so results are framed by markers whose text never appears in the
 * echoed command line (the shell joins the quoted halves only when it runs the echo).
 */
import { randomBytes } from 'node:crypto';

export interface GuestConsole {
  mark(): number;
  waitFor(pattern: string | RegExp, timeoutMs: number, opts?: { since?: number }): Promise<string>;
  write(text: string): void;
}

export interface GuestCommandResult {
  output: string;
  exitCode: number;
}

export async function runInGuest(console: GuestConsole, command: string, timeoutMs = 30_000): Promise<GuestCommandResult> {
  if (command.includes('\n')) throw new Error('runInGuest: one line per command');
  const n = randomBytes(6).toString('hex');
  const since = console.mark();
  console.write(`echo "__VMSEAL_B""${n}"; ${command}; echo "__VMSEAL_E""${n} $?"\n`);
  const framed = new RegExp(`__VMSEAL_B${n}\\r?\\n([\\s\\S]*?)__VMSEAL_E${n} (\\d+)`);
  const text = await console.waitFor(framed, timeoutMs, { since });
  const m = framed.exec(text);
  if (!m) throw new Error(`runInGuest: no framed output for ${JSON.stringify(command)}`);
  return { output: (m[1] ?? '').replace(/\r/g, ''), exitCode: Number(m[2]) };
}
