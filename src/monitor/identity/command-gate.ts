/**
 * The monitor's gate for sealed commands (seed 001). The management plane names a target VM and
 * hands over an opaque blob; the gate opens it with THAT VM's command key. A blob that does not open,
 * or that names another vmId, was meant for another VM: REDIRECT. A counter not above the last one
 * accepted for this VM: REPLAY. The counter is committed before the caller acts, so a crash cannot
 * make an executed command replayable.
 */
import { AeadError, open, seal } from '../../crypto/aead.ts';
import { COMMAND_AAD, decodeCommand, encodeCommandResult, RESULT_AAD, type CommandResultBody, type SealedCommandBody } from '../../formats/protocol/command.ts';
import { ProtocolError } from '../../formats/protocol/fields.ts';
import { RefusalError } from './refusal.ts';

/** Durable per-VM command counters. `advance` commits `counter` iff it is above the stored one. */
export interface CounterStore {
  advance(vmId: string, counter: number): boolean;
}

export interface CommandTarget {
  vmId: string;
  commandKey: Buffer;
}

export function openCommand(store: CounterStore, target: CommandTarget, sealed: Uint8Array): SealedCommandBody {
  let plaintext: Buffer;
  try {
    plaintext = open(target.commandKey, sealed, COMMAND_AAD);
  } catch (err) {
    if (err instanceof AeadError) throw new RefusalError('REDIRECT', `command does not open with the key of VM ${target.vmId} (${err.code})`);
    throw err;
  }
  let body: SealedCommandBody;
  try {
    body = decodeCommand(plaintext);
  } catch (err) {
    // Only a holder of the key can produce this: a broken client, not the management plane.
    if (err instanceof ProtocolError) throw new RefusalError('TAMPER', err.message);
    throw err;
  }
  if (body.vmId !== target.vmId) throw new RefusalError('REDIRECT', `command names VM ${body.vmId} but was delivered to VM ${target.vmId}`);
  if (!store.advance(target.vmId, body.counter)) throw new RefusalError('REPLAY', `counter ${body.counter} of VM ${target.vmId} was already used`);
  return body;
}

export function sealCommandResult(commandKey: Buffer, result: CommandResultBody): Buffer {
  return seal(commandKey, encodeCommandResult(result), RESULT_AAD);
}
