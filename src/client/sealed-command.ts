/** The tenant's side of sealed commands: seal {vmId, counter, op} and open the sealed result. */
import { AeadError, open, seal } from '../crypto/aead.ts';
import { COMMAND_AAD, decodeCommandResult, encodeCommand, RESULT_AAD, type CommandOp, type CommandRequest, type CommandResultBody, type SealedCommandBody, type VmOp } from '../formats/protocol/command.ts';

/** `commandKey` is the VM key schedule's `command` key (the tenant keeps it, not the volume key). */
export function sealCommand(commandKey: Buffer, vmId: string, counter: number, op: VmOp | CommandRequest): Buffer {
  const request: CommandRequest = typeof op === 'string' ? { op, args: {} } : op;
  return seal(commandKey, encodeCommand({ vmId, counter, ...request } as SealedCommandBody), COMMAND_AAD);
}

export class CommandResultError extends Error {
  override name = 'CommandResultError';
}

/** Opens a sealed result and checks it answers exactly this command (so an old result cannot stand in). */
export function openCommandResult(commandKey: Buffer, sealed: Uint8Array, expected: { vmId: string; counter: number; op: CommandOp }): CommandResultBody {
  let plaintext: Buffer;
  try {
    plaintext = open(commandKey, sealed, RESULT_AAD);
  } catch (err) {
    if (err instanceof AeadError) throw new CommandResultError(`result is not sealed by this VM's monitor (${err.code})`);
    throw err;
  }
  const r = decodeCommandResult(plaintext);
  if (r.vmId !== expected.vmId || r.counter !== expected.counter || r.op !== expected.op) {
    throw new CommandResultError(`result answers ${r.op} #${r.counter} of VM ${r.vmId}, not ${expected.op} #${expected.counter} of VM ${expected.vmId}`);
  }
  return r;
}
