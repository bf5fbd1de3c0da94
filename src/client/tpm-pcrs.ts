/**
 * `vmseal vm tpm pcrs`: the VM's sha256 PCRs as its monitor read them, side by side with the replay of the
 * monitor's launch event log. The log covers only the PCRs the monitor extends (8 and 9); the firmware's
 * own PCRs (0-7) have no entry in it and are shown as not logged rather than compared.
 */
import { TPM_ALG } from '../formats/tpm2/index.ts';
import { parseEventLog, replay } from '../formats/tcg-eventlog.ts';
import type { CommandResultBody } from '../formats/protocol/command.ts';

export interface PcrRow {
  pcr: number;
  tpm: string;
  /** Replayed value, or undefined when the log has no event for this PCR. */
  replay: string | undefined;
}

export function pcrRows(tpm: NonNullable<CommandResultBody['tpm']>): PcrRow[] {
  const log = Buffer.from(tpm.eventLog, 'base64');
  const replayed = log.length > 0 ? replay(parseEventLog(log)) : new Map<number, Map<number, Buffer>>();
  return tpm.sha256.map((value, pcr) => ({ pcr, tpm: value, replay: replayed.get(pcr)?.get(TPM_ALG.SHA256)?.toString('hex') }));
}

/** One line per PCR: index, TPM value, replay value and whether they agree; PCRs still zero and unlogged are left out. */
export function formatPcrRows(rows: PcrRow[]): string {
  const zero = '0'.repeat(64);
  const lines = ['PCR  sha256 (vTPM)                                                     event-log replay'];
  for (const r of rows) {
    if (r.replay === undefined && r.tpm === zero) continue;
    const verdict = r.replay === undefined ? 'not logged (firmware)' : r.replay === r.tpm ? 'match' : `MISMATCH ${r.replay}`;
    lines.push(`${String(r.pcr).padStart(3)}  ${r.tpm}  ${verdict}`);
  }
  return `${lines.join('\n')}\n`;
}
