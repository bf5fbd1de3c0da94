/**
 * Measured-launch check: the event log the monitor wrote must replay to the quoted PCRs, and its
 * kernel, initrd and cmdline events must carry the tenant's reference digests (the launch bundle's
 * kernelSha256, initrdSha256 and the SHA-256 of the exact cmdline string, which is what the monitor
 * extends into PCR 8; see formats/tcg-eventlog.ts). Only the sha256 bank is judged: it is the bank
 * the references are in.
 */
import { createHash } from 'node:crypto';
import { TPM_ALG } from '../../formats/tpm2/constants.ts';
import type { PcrValues } from '../../formats/tpm2/pcr.ts';
import { EV, LAUNCH_PCRS, parseEventLog, replay, type EventLog, type LogEvent } from '../../formats/tcg-eventlog.ts';
import type { LaunchReferences } from '../../formats/protocol/attestation.ts';

export type LaunchFailureCode = 'EVENT_LOG_INVALID' | 'EVENT_LOG_REPLAY_MISMATCH' | 'KERNEL_MISMATCH' | 'INITRD_MISMATCH' | 'CMDLINE_MISMATCH' | 'UNEXPECTED_BOOT_EVENT';

export type LaunchVerdict =
  | { ok: true; log: EventLog }
  | { ok: false; code: LaunchFailureCode; reason: string; path: string | null; digest: string | null };

const BANK = TPM_ALG.SHA256;
const CMDLINE_PREFIX = 'kernel_cmdline: ';

const fail = (code: LaunchFailureCode, reason: string, path: string | null = null, digest: string | null = null): LaunchVerdict => ({ ok: false, code, reason, path, digest });

function eventText(e: LogEvent): string {
  const nul = e.event.indexOf(0);
  return e.event.subarray(0, nul < 0 ? e.event.length : nul).toString('utf8');
}

/**
 * `quoted` must be the verified values of a good quote. PCRs 8 and 9 must be among them; any other
 * PCR the log extends is compared too when it was quoted.
 */
export function checkLaunch(eventLog: Buffer, quoted: PcrValues, refs: LaunchReferences): LaunchVerdict {
  let log: EventLog;
  try {
    log = parseEventLog(eventLog);
  } catch (e) {
    return fail('EVENT_LOG_INVALID', (e as Error).message);
  }
  for (const pcr of [LAUNCH_PCRS.cmdline, LAUNCH_PCRS.kernel]) {
    if (!quoted.get(pcr)?.get(BANK)) return fail('EVENT_LOG_REPLAY_MISMATCH', `PCR ${pcr} (sha256) was not quoted`);
  }
  // Only the PCRs the log extends are judged: PCRs 0-7 are the firmware's (SeaBIOS keeps its own log).
  const replayed = replay(log);
  for (const [pcr, banks] of replayed) {
    const r = banks.get(BANK);
    if (!r) return fail('EVENT_LOG_INVALID', `the event log extends PCR ${pcr} without a sha256 digest`);
    const q = quoted.get(pcr)?.get(BANK);
    if (q && !r.equals(q)) return fail('EVENT_LOG_REPLAY_MISMATCH', `the event log does not replay to quoted PCR ${pcr} (sha256)`);
  }

  const boot = log.events.filter((e) => e.pcrIndex === LAUNCH_PCRS.cmdline || e.pcrIndex === LAUNCH_PCRS.kernel);
  const cmdlineEvents = boot.filter((e) => e.pcrIndex === LAUNCH_PCRS.cmdline);
  const fileEvents = boot.filter((e) => e.pcrIndex === LAUNCH_PCRS.kernel);
  const hex = (e: LogEvent | undefined) => e?.digests.get(BANK)?.toString('hex') ?? null;
  for (const e of boot) {
    if (e.eventType !== EV.IPL) return fail('UNEXPECTED_BOOT_EVENT', `PCR ${e.pcrIndex} has an event of type 0x${e.eventType.toString(16)}, not EV_IPL`, eventText(e), hex(e));
  }
  if (cmdlineEvents.length !== 1) return fail('UNEXPECTED_BOOT_EVENT', `PCR 8 has ${cmdlineEvents.length} events, expected the kernel cmdline only`);
  if (fileEvents.length !== 2) return fail('UNEXPECTED_BOOT_EVENT', `PCR 9 has ${fileEvents.length} events, expected kernel and initrd`);
  const [cmd] = cmdlineEvents as [LogEvent];
  const [kernel, initrd] = fileEvents as [LogEvent, LogEvent];
  const wantCmdline = createHash('sha256').update(refs.cmdline).digest('hex');
  const text = eventText(cmd);
  if (hex(cmd) !== wantCmdline) {
    const shown = text.startsWith(CMDLINE_PREFIX) ? text.slice(CMDLINE_PREFIX.length) : text;
    return fail('CMDLINE_MISMATCH', `the measured cmdline ${JSON.stringify(shown.slice(0, 200))} is not the reference ${JSON.stringify(refs.cmdline.slice(0, 200))}`, null, hex(cmd));
  }
  if (hex(kernel) !== refs.kernelSha256) return fail('KERNEL_MISMATCH', `the measured kernel has sha256 ${hex(kernel)}, the reference is ${refs.kernelSha256}`, eventText(kernel), hex(kernel));
  if (hex(initrd) !== refs.initrdSha256) return fail('INITRD_MISMATCH', `the measured initrd has sha256 ${hex(initrd)}, the reference is ${refs.initrdSha256}`, eventText(initrd), hex(initrd));
  return { ok: true, log };
}
