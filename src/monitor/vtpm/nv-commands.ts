/**
 * The monitor's side of the sealed vTPM commands (formats/protocol/command.ts TPM_OPS), run after the
 * command gate has opened the command with the OWNER VM's key and committed its counter:
 *
 *   tpm-share  {index, with, proof}  the sender owns `index` (its VM's token says so) and `proof` is a MAC
 *                                    under the grantee's key (crypto/tpm-grant-mac.ts): same tenant
 *   tpm-revoke {index, from}         the sender owns `index`; the grant goes before the result is sealed,
 *                                    so the grantee's next command already fails
 *   tpm-pcrs   {}                    sha256 PCRs 0-23 read from the VM's swtpm, and its launch event log
 *   tpm-peer   {with, proof}         `with` runs here and `proof` is the peer MAC under its key: the sender's
 *                                    guest may from now on share its indices with it itself (nv-guest-grant.ts)
 *   tpm-unpeer {with}                withdraws that; grants the guest already made stay until revoked
 *
 * A failure throws VtpmCommandError; the monitor seals its message as the command's error.
 */
import { readFile } from 'node:fs/promises';
import { grantProofValid, peerProofValid } from '../../crypto/tpm-grant-mac.ts';
import { TPM_OPS, type SealedCommandBody, type TpmOp } from '../../formats/protocol/command.ts';
import { TPM_ALG, TPM_CC, parsePcrReadResponse, parseResponse, pcrReadCommand } from '../../formats/tpm2/index.ts';
import { isManagedIndex, type NvAccessControl } from './nv-policy.ts';
import type { OwnerClaim } from './nv-token.ts';
import type { TpmEndpoint } from './tpm-channel.ts';

/** The monitor's launch event logs hold a handful of events; a larger file is not ours. */
const MAX_EVENT_LOG = 24 * 1024;

export class VtpmCommandError extends Error {
  override readonly name = 'VtpmCommandError';
}

/** What the service needs to know of a running VM. */
export interface NvVm {
  vmId: string;
  /** Its stable vTPM instance id (swtpm-instance.ts vtpmStateId). */
  instance: string;
  commandKey: Buffer;
  /** Its swtpm and the launch event log, when it has a vTPM. */
  tpm?: TpmEndpoint;
  eventLogPath?: string;
}

export interface TpmPcrsResult {
  sha256: string[];
  eventLog: string;
}

type TpmBody = SealedCommandBody & { op: TpmOp };

export function isTpmCommand(body: SealedCommandBody): body is TpmBody {
  return (TPM_OPS as readonly string[]).includes(body.op);
}

const hex = (n: number) => `0x${n.toString(16)}`;

function ownedBy(control: NvAccessControl, vm: NvVm, index: number): OwnerClaim {
  if (!isManagedIndex(index)) throw new VtpmCommandError(`NV index ${hex(index)} is outside the shareable range`);
  const s = control.ownership.ownerState(index);
  if (s.kind === 'tampered') throw new VtpmCommandError(`NV index ${hex(index)}: ownership record does not verify`);
  if (s.kind === 'none' || s.claim.owner !== vm.instance) throw new VtpmCommandError(`VM ${vm.vmId} does not own NV index ${hex(index)}`);
  return s.claim;
}

/**
 * Runs one tpm-* command for `vm` (the sender); `lookup` finds another running VM of this host by VM id.
 * Returns the tpm-pcrs payload, nothing for the others.
 */
export async function runTpmCommand(control: NvAccessControl, vm: NvVm, body: TpmBody, lookup: (vmId: string) => NvVm | undefined): Promise<TpmPcrsResult | undefined> {
  switch (body.op) {
    case 'tpm-share': {
      const claim = ownedBy(control, vm, body.args.index);
      const grantee = lookup(body.args.with);
      if (!grantee) throw new VtpmCommandError(`VM ${body.args.with} is not running on this host`);
      if (grantee.instance === vm.instance) throw new VtpmCommandError('an index cannot be shared with its owner');
      const statement = { ownerVmId: vm.vmId, granteeVmId: grantee.vmId, nvIndex: body.args.index, counter: body.counter };
      if (!grantProofValid(grantee.commandKey, statement, Buffer.from(body.args.proof, 'hex'))) {
        throw new VtpmCommandError(`the share is not proven with VM ${grantee.vmId}'s key: only a tenant holding both VMs' keys may share`);
      }
      control.ownership.grant(claim, grantee.instance, grantee.vmId);
      return undefined;
    }
    case 'tpm-revoke': {
      ownedBy(control, vm, body.args.index);
      const grantee = lookup(body.args.from);
      const n = control.ownership.revoke(body.args.index, { vmId: body.args.from, ...(grantee ? { instance: grantee.instance } : {}) });
      if (n === 0) throw new VtpmCommandError(`NV index ${hex(body.args.index)} is not shared with VM ${body.args.from}`);
      return undefined;
    }
    case 'tpm-pcrs':
      return readPcrs(vm);
    case 'tpm-peer': {
      const peer = lookup(body.args.with);
      if (!peer) throw new VtpmCommandError(`VM ${body.args.with} is not running on this host`);
      if (peer.instance === vm.instance) throw new VtpmCommandError('a VM cannot be its own peer');
      if (!peerProofValid(peer.commandKey, { ownerVmId: vm.vmId, granteeVmId: peer.vmId, counter: body.counter }, Buffer.from(body.args.proof, 'hex'))) {
        throw new VtpmCommandError(`the peering is not proven with VM ${peer.vmId}'s key: only a tenant holding both VMs' keys may peer them`);
      }
      control.ownership.peers.add(vm.instance, peer.instance, peer.vmId);
      return undefined;
    }
    case 'tpm-unpeer': {
      const peer = lookup(body.args.with);
      const n = control.ownership.peers.remove(vm.instance, { vmId: body.args.with, ...(peer ? { instance: peer.instance } : {}) });
      if (n === 0) throw new VtpmCommandError(`VM ${body.args.with} is not a peer of VM ${vm.vmId}`);
      return undefined;
    }
  }
}

async function readPcrs(vm: NvVm): Promise<TpmPcrsResult> {
  if (!vm.tpm || !vm.eventLogPath) throw new VtpmCommandError(`VM ${vm.vmId} has no vTPM`);
  const sha256: string[] = [];
  // TPML_DIGEST holds at most 8 digests: three reads of eight PCRs.
  for (let first = 0; first < 24; first += 8) {
    const pcrs = Array.from({ length: 8 }, (_, i) => first + i);
    const r = parsePcrReadResponse(parseResponse(await vm.tpm.transact(pcrReadCommand([{ hashAlg: TPM_ALG.SHA256, pcrs }])), TPM_CC.PCR_Read));
    for (const p of pcrs) {
      const d = r.values.get(p)?.get(TPM_ALG.SHA256);
      if (!d) throw new VtpmCommandError(`the vTPM did not return sha256 PCR ${p}`);
      sha256.push(d.toString('hex'));
    }
  }
  const log = await readFile(vm.eventLogPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return Buffer.alloc(0); // not booted far enough for the measured launch yet
    throw err;
  });
  if (log.length > MAX_EVENT_LOG) throw new VtpmCommandError(`event log of ${log.length} bytes`);
  return { sha256, eventLog: log.toString('base64') };
}
