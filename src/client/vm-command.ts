/**
 * `vmseal vm pause|resume|…` and `vmseal vm tpm …`: one sealed command. The next counter is committed to
 * tenant state before the command leaves, so a crash can never make the tenant reuse one (which the
 * monitor would refuse as a replay).
 */
import { grantProof, peerProof } from '../crypto/tpm-grant-mac.ts';
import { commandResponseSchema } from '../formats/protocol/monitor-api.ts';
import type { CommandRequest, CommandResultBody, ScanPage, TpmOp, VmOp } from '../formats/protocol/command.ts';
import { MgmtClient } from './mgmt-client.ts';
import { openCommandResult, sealCommand } from './sealed-command.ts';
import { updateTenantState, type TenantState } from './tenant-state.ts';

function vmRecord(s: TenantState, name: string) {
  const vm = s.vms[name];
  if (!vm) throw new Error(`the tenant has no VM named ${name}; known: ${Object.keys(s.vms).join(', ') || 'none'}`);
  return vm;
}

/** Sends `request` (built from the state, with the counter it will carry) to VM `name`. */
async function send(tenantDir: string, name: string, build: (s: TenantState, counter: number) => CommandRequest): Promise<CommandResultBody> {
  let target: { vmId: string; counter: number; mgmtUrl: string; commandKey: Buffer; request: CommandRequest } | undefined;
  await updateTenantState(tenantDir, (s) => {
    const vm = vmRecord(s, name);
    const request = build(s, vm.commandCounter + 1);
    vm.commandCounter += 1;
    target = { vmId: vm.vmId, counter: vm.commandCounter, mgmtUrl: vm.mgmtUrl, commandKey: Buffer.from(vm.commandKey, 'base64'), request };
  });
  const t = target!;
  const sealed = sealCommand(t.commandKey, t.vmId, t.counter, t.request);
  const reply = commandResponseSchema.parse(await new MgmtClient(t.mgmtUrl).command(t.vmId, sealed.toString('base64')));
  return openCommandResult(t.commandKey, Buffer.from(reply.result, 'base64'), { vmId: t.vmId, counter: t.counter, op: t.request.op });
}

export function sendVmCommand(tenantDir: string, name: string, op: VmOp): Promise<CommandResultBody> {
  return send(tenantDir, name, () => ({ op, args: {} }));
}

/**
 * `vmseal vm tpm share|revoke|peer|unpeer|pcrs`. A share or peer carries the proof that this tenant also
 * holds the other VM's keys (crypto/tpm-grant-mac.ts); both VMs are named by the tenant's own names.
 */
export function sendTpmCommand(tenantDir: string, name: string, op: TpmOp, o: { index?: number; other?: string } = {}): Promise<CommandResultBody> {
  return send(tenantDir, name, (s, counter): CommandRequest => {
    if (op === 'tpm-pcrs') return { op, args: {} };
    if (o.other === undefined) throw new Error(`${op} needs another VM`);
    if (o.other === name) throw new Error('the other VM must not be the owner itself');
    const other = vmRecord(s, o.other);
    const owner = vmRecord(s, name);
    const otherKey = Buffer.from(other.commandKey, 'base64');
    if (op === 'tpm-unpeer') return { op, args: { with: other.vmId } };
    if (op === 'tpm-peer') return { op, args: { with: other.vmId, proof: peerProof(otherKey, { ownerVmId: owner.vmId, granteeVmId: other.vmId, counter }).toString('hex') } };
    if (o.index === undefined) throw new Error(`${op} needs an NV index`);
    if (op === 'tpm-revoke') return { op, args: { index: o.index, from: other.vmId } };
    const proof = grantProof(otherKey, { ownerVmId: owner.vmId, granteeVmId: other.vmId, nvIndex: o.index, counter });
    return { op, args: { index: o.index, with: other.vmId, proof: proof.toString('hex') } };
  });
}

/** `vmseal vm protect NAME --path P`: the monitor write-protects P's blocks from now on. */
export function sendProtectCommand(tenantDir: string, name: string, path: string): Promise<CommandResultBody> {
  return send(tenantDir, name, () => ({ op: 'protect', args: { path } }));
}

/** Every file of one scan, each page a sealed command; fails if another scan replaced it midway. */
export async function runVmScan(tenantDir: string, name: string, paths?: string[]): Promise<{ head: ScanPage; files: Array<[string, string]> }> {
  const files: Array<[string, string]> = [];
  let head: ScanPage | undefined;
  for (let page = 0; page < (head?.pages ?? 1); page++) {
    const r = await send(tenantDir, name, () => ({ op: 'scan', args: { page, ...(paths?.length ? { paths } : {}) } }));
    if (!r.ok || !r.scan) throw new Error(`scan page ${page} failed: ${r.error ?? 'no scan in the result'}`);
    if (head && r.scan.scanId !== head.scanId) throw new Error('another scan of this VM started meanwhile; run the scan again');
    head ??= r.scan;
    files.push(...r.scan.entries);
  }
  if (files.length !== head!.files) throw new Error(`scan returned ${files.length} files, its summary says ${head!.files}`);
  return { head: head!, files };
}
