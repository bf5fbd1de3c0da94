/**
 * Sealed management commands (ARCHITECTURE.md protocol 5, seed 001): the tenant seals
 * {vmId, counter, op, args} under K_command; the monitor opens it with the key of the VM the
 * management plane targets. The result comes back sealed under the same key, bound to the same
 * vmId and counter, so the management plane can neither fake a result nor hand over an old one.
 */
import { z } from 'zod';
import { decodeJson, vmIdHex } from './fields.ts';

export const COMMAND_AAD = Buffer.from('vmseal/v1/command', 'ascii');
export const RESULT_AAD = Buffer.from('vmseal/v1/command-result', 'ascii');
export const COMMAND_MAX_BYTES = 4096;

export const VM_OPS = ['pause', 'resume', 'shutdown', 'poweroff', 'reboot', 'status'] as const;
export type VmOp = (typeof VM_OPS)[number];

/**
 * Why a monitor refuses a command, a launch or an IDS request; shown by name. The IDS ones
 * (docs/ids.md): BAD_SIGNATURE (no valid authority signature), WRONG_VM (another VM or host),
 * POLICY (the tenant's launch policy does not allow the measurement); REPLAY and TAMPER also cover
 * IDS registrations and channel frames.
 */
export const REFUSALS = ['REDIRECT', 'REPLAY', 'TAMPER', 'BAD_KERNEL', 'BAD_SIGNATURE', 'WRONG_VM', 'POLICY'] as const;
export type Refusal = (typeof REFUSALS)[number];

export const commandSchema = z.strictObject({
  vmId: vmIdHex,
  counter: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  op: z.enum(VM_OPS),
  args: z.strictObject({}),
});
export type SealedCommandBody = z.output<typeof commandSchema>;

export const commandResultSchema = z.strictObject({
  vmId: vmIdHex,
  counter: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  op: z.enum(VM_OPS),
  ok: z.boolean(),
  /** QEMU's run state after the op (e.g. "running", "paused", "shutdown"). */
  state: z.string().max(64),
  error: z.string().max(1024).optional(),
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
  return decodeJson('command result', commandResultSchema, bytes, COMMAND_MAX_BYTES);
}
