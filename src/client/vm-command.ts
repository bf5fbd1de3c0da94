/**
 * `vmseal vm pause|resume|…`: one sealed command. The next counter is committed to tenant state
 * before the command leaves, so a crash can never make the tenant reuse one (which the monitor
 * would refuse as a replay).
 */
import { commandResponseSchema } from '../formats/protocol/monitor-api.ts';
import type { CommandResultBody, VmOp } from '../formats/protocol/command.ts';
import { MgmtClient } from './mgmt-client.ts';
import { openCommandResult, sealCommand } from './sealed-command.ts';
import { updateTenantState } from './tenant-state.ts';

export async function sendVmCommand(tenantDir: string, name: string, op: VmOp): Promise<CommandResultBody> {
  let target: { vmId: string; counter: number; mgmtUrl: string; commandKey: Buffer } | undefined;
  await updateTenantState(tenantDir, (s) => {
    const vm = s.vms[name];
    if (!vm) throw new Error(`the tenant has no VM named ${name}; known: ${Object.keys(s.vms).join(', ') || 'none'}`);
    vm.commandCounter += 1;
    target = { vmId: vm.vmId, counter: vm.commandCounter, mgmtUrl: vm.mgmtUrl, commandKey: Buffer.from(vm.commandKey, 'base64') };
  });
  const t = target!;
  const sealed = sealCommand(t.commandKey, t.vmId, t.counter, op);
  const reply = commandResponseSchema.parse(await new MgmtClient(t.mgmtUrl).command(t.vmId, sealed.toString('base64')));
  return openCommandResult(t.commandKey, Buffer.from(reply.result, 'base64'), { vmId: t.vmId, counter: t.counter, op });
}
