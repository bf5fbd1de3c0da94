/**
 * Measured launch. The monitor measures what it boots the way a BIOS bootloader does (GRUB's choice):
 *   PCR 8  EV_IPL  "kernel_cmdline: <cmdline>"   digest = H(cmdline bytes)
 *   PCR 9  EV_IPL  "<kernel path>"                digest = H(kernel image)
 *   PCR 9  EV_IPL  "<initrd path>"                digest = H(initrd)
 * in every active bank (sha1, sha256). PCRs 0-7 are SeaBIOS's: it extends them itself (CRTM version, SMBIOS,
 * option ROMs, boot order, separators) into its own ACPI log, and never touches 8-9, so the two logs are
 * disjoint and each replays its own PCRs. Since QEMU's CMD_INIT resets the TPM and SeaBIOS sends
 * TPM2_Startup, the extends are made by the proxy right after the firmware's first successful Startup
 * following an INIT, before that Startup's response is released (docs/vtpm.md).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { encodeEventLog, EV, specIdFor, type EventLog, type LogEvent } from '../../formats/tcg-eventlog.ts';
import { HASH_ALGS, TPM_ALG, TPM_RC, pcrExtendCommand } from '../../formats/tpm2/index.ts';
import { writePrivateFileAtomic } from '../../util/durable-file.ts';
import type { TpmEndpoint } from './tpm-channel.ts';

export const MEASURED_BANKS = [TPM_ALG.SHA1, TPM_ALG.SHA256] as const;
export const PCR_CMDLINE = 8;
export const PCR_KERNEL = 9;

export interface BootMeasurements {
  kernel: Map<number, Buffer>;
  initrd: Map<number, Buffer>;
  cmdline: string;
}

async function fileDigests(path: string): Promise<Map<number, Buffer>> {
  const hashes = MEASURED_BANKS.map((alg) => [alg, createHash(HASH_ALGS.get(alg)!.name)] as const);
  for await (const chunk of createReadStream(path)) for (const [, h] of hashes) h.update(chunk as Buffer);
  return new Map(hashes.map(([alg, h]) => [alg, h.digest()]));
}

function stringDigests(s: string): Map<number, Buffer> {
  return new Map(MEASURED_BANKS.map((alg) => [alg, createHash(HASH_ALGS.get(alg)!.name).update(s).digest()]));
}

/** Digests of the boot files the monitor hands QEMU (already checked against the launch bundle). */
export async function measureBootFiles(kernel: string, initrd: string, cmdline: string): Promise<BootMeasurements> {
  return { kernel: await fileDigests(kernel), initrd: await fileDigests(initrd), cmdline };
}

/** The events of one boot, in extend order. */
export function launchEvents(m: BootMeasurements): LogEvent[] {
  return [
    { pcrIndex: PCR_CMDLINE, eventType: EV.IPL, digests: stringDigests(m.cmdline), event: Buffer.from(`kernel_cmdline: ${m.cmdline}\0`) },
    { pcrIndex: PCR_KERNEL, eventType: EV.IPL, digests: m.kernel, event: Buffer.from('/boot/vmlinuz\0') },
    { pcrIndex: PCR_KERNEL, eventType: EV.IPL, digests: m.initrd, event: Buffer.from('/boot/initrd.img\0') },
  ];
}

export function launchEventLog(m: BootMeasurements): EventLog {
  return { specId: specIdFor([...MEASURED_BANKS]), events: launchEvents(m) };
}

/**
 * Extends the launch events into `tpm` and writes the log to `logPath` (0600, replaced atomically: a log
 * always describes the current boot). The log is written first, so a log exists for every extend made.
 */
export async function extendLaunch(tpm: TpmEndpoint, m: BootMeasurements, logPath: string): Promise<void> {
  const log = launchEventLog(m);
  await writePrivateFileAtomic(logPath, encodeEventLog(log));
  for (const e of log.events) {
    const cmd = pcrExtendCommand(e.pcrIndex, MEASURED_BANKS.map((hashAlg) => ({ hashAlg, digest: e.digests.get(hashAlg)! })));
    const rsp = await tpm.transact(cmd);
    const rc = rsp.readUInt32BE(6);
    if (rc !== TPM_RC.SUCCESS) throw new Error(`PCR_Extend of PCR ${e.pcrIndex} failed: TPM_RC 0x${rc.toString(16)}`);
  }
}
