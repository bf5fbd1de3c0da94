/**
 * Sealed management commands (ARCHITECTURE.md protocol 5, seed 001): the tenant seals
 * {vmId, counter, op, args} under K_command; the monitor opens it with the key of the VM the
 * management plane targets. The result comes back sealed under the same key, bound to the same
 * vmId and counter, so the management plane can neither fake a result nor hand over an old one.
 */
import { z } from 'zod';
import { decodeJson, hexBytes, sha256Hex, vmIdHex } from './fields.ts';
import { guestPathField } from './launch-bundle.ts';

export const COMMAND_AAD = Buffer.from('vmseal/v1/command', 'ascii');
export const RESULT_AAD = Buffer.from('vmseal/v1/command-result', 'ascii');
export const COMMAND_MAX_BYTES = 4096;

export const VM_OPS = ['pause', 'resume', 'shutdown', 'poweroff', 'reboot', 'status'] as const;
export type VmOp = (typeof VM_OPS)[number];

/**
 * vTPM ops (docs/vtpm-nv.md): share one NV index read-only with another VM of the tenant (`proof` is
 * crypto/tpm-grant-mac.ts's MAC under the grantee's key), revoke it, read PCRs and the launch event log;
 * peer / unpeer another VM of the tenant (`proof`: the peer MAC under its key), which lets this VM's guest
 * share its indices with it by itself (the vendor command of formats/tpm2/vmseal-vendor.ts).
 */
export const TPM_OPS = ['tpm-share', 'tpm-revoke', 'tpm-pcrs', 'tpm-peer', 'tpm-unpeer'] as const;
export type TpmOp = (typeof TPM_OPS)[number];
/**
 * Disk integrity ops (docs/integrity.md): `scan` hashes the guest's files on the decrypted disk and
 * returns them a page at a time (page 0 starts a new scan; later pages come from it, named by
 * `scanId`); `protect` adds a path to the VM's write protection.
 */
export const MEASURE_OPS = ['scan', 'protect'] as const;
export type MeasureOp = (typeof MEASURE_OPS)[number];
export const COMMAND_OPS = [...VM_OPS, ...TPM_OPS, ...MEASURE_OPS] as const;
export type CommandOp = (typeof COMMAND_OPS)[number];
/** Results carry PCRs and an event log, so they may be larger than commands. */
export const RESULT_MAX_BYTES = 65536;

/**
 * Why a monitor refuses a command, a launch or an IDS request; shown by name. The IDS ones
 * (docs/ids.md): BAD_SIGNATURE (no valid authority signature), WRONG_VM (another VM or host),
 * POLICY (the tenant's launch policy does not allow the measurement); REPLAY and TAMPER also cover
 * IDS registrations and channel frames.
 */
export const REFUSALS = ['REDIRECT', 'REPLAY', 'TAMPER', 'BAD_KERNEL', 'BAD_SIGNATURE', 'WRONG_VM', 'POLICY'] as const;
export type Refusal = (typeof REFUSALS)[number];

const nvIndexField = z.number().int().min(0x01000000).max(0x01ffffff);
const commandHead = { vmId: vmIdHex, counter: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER) };

export const commandSchema = z.discriminatedUnion('op', [
  z.strictObject({ ...commandHead, op: z.enum([...VM_OPS, 'tpm-pcrs']), args: z.strictObject({}) }),
  z.strictObject({ ...commandHead, op: z.literal('tpm-share'), args: z.strictObject({ index: nvIndexField, with: vmIdHex, proof: hexBytes(32) }) }),
  z.strictObject({ ...commandHead, op: z.literal('tpm-revoke'), args: z.strictObject({ index: nvIndexField, from: vmIdHex }) }),
  z.strictObject({ ...commandHead, op: z.literal('tpm-peer'), args: z.strictObject({ with: vmIdHex, proof: hexBytes(32) }) }),
  z.strictObject({ ...commandHead, op: z.literal('tpm-unpeer'), args: z.strictObject({ with: vmIdHex }) }),
  z.strictObject({ ...commandHead, op: z.literal('scan'), args: z.strictObject({ page: z.number().int().min(0).max(1_000_000), paths: z.array(guestPathField).max(16).optional() }) }),
  z.strictObject({ ...commandHead, op: z.literal('protect'), args: z.strictObject({ path: guestPathField }) }),
]);
export type SealedCommandBody = z.output<typeof commandSchema>;
/** An op with its arguments, as a client asks for it. */
export type CommandRequest =
  | { op: VmOp | 'tpm-pcrs'; args: Record<string, never> }
  | { op: 'tpm-share'; args: { index: number; with: string; proof: string } }
  | { op: 'tpm-revoke'; args: { index: number; from: string } }
  | { op: 'tpm-peer'; args: { with: string; proof: string } }
  | { op: 'tpm-unpeer'; args: { with: string } }
  | { op: 'scan'; args: { page: number; paths?: string[] } }
  | { op: 'protect'; args: { path: string } };

/** tpm-pcrs: the sha256 bank of PCRs 0-23 as the monitor read them, and the monitor's launch event log. */
export const tpmPcrsResultSchema = z.strictObject({
  sha256: z.array(sha256Hex).length(24),
  eventLog: z.base64().max(32768),
});

/** Bytes of `[path, sha256]` entries per scan page, so a sealed result stays under the API's 8 KiB. */
export const SCAN_PAGE_BYTES = 5000;

/** One page of a scan: its totals, and the files' digests in walk order. */
export const scanPageSchema = z.strictObject({
  scanId: hexBytes(8),
  filesystem: z.enum(['ext4', 'ntfs']),
  files: z.number().int().min(0),
  bytesHashed: z.number().int().min(0),
  /** Files the readers cannot decode (compressed, encrypted, inline data): counted, not hashed. */
  unsupported: z.number().int().min(0),
  /** Listed paths that do not exist. */
  missing: z.array(z.string().max(4096)).max(16),
  page: z.number().int().min(0),
  pages: z.number().int().min(1),
  entries: z.array(z.tuple([z.string().min(1).max(4096), sha256Hex])),
});
export type ScanPage = z.output<typeof scanPageSchema>;

export const commandResultSchema = z.strictObject({
  vmId: vmIdHex,
  counter: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  op: z.enum(COMMAND_OPS),
  ok: z.boolean(),
  /** QEMU's run state after the op (e.g. "running", "paused", "shutdown"). */
  state: z.string().max(64),
  error: z.string().max(1024).optional(),
  tpm: tpmPcrsResultSchema.optional(),
  scan: scanPageSchema.optional(),
  /** protect: how many byte ranges the path added to the VM's write protection. */
  protectedRanges: z.number().int().min(0).optional(),
});
export type CommandResultBody = z.output<typeof commandResultSchema>;

export function encodeCommand(c: SealedCommandBody): Buffer {
  return Buffer.from(JSON.stringify(commandSchema.parse(c)), 'utf8');
}

export function decodeCommand(bytes: Uint8Array): SealedCommandBody {
  return decodeJson('command', commandSchema, bytes, COMMAND_MAX_BYTES);
}

export function encodeCommandResult(r: CommandResultBody): Buffer {
  return Buffer.from(JSON.stringify(commandResultSchema.parse(r)), 'utf8');
}

export function decodeCommandResult(bytes: Uint8Array): CommandResultBody {
  return decodeJson('command result', commandResultSchema, bytes, RESULT_MAX_BYTES);
}
