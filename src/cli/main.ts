import { Command } from 'commander';
import { registerDiskCommands } from './commands/disk.ts';
import { registerGuestCommands } from './commands/guest.ts';
import { registerAuthorityCommands } from './commands/authority.ts';
import { registerHostCommands } from './commands/host.ts';
import { registerDemoCommand } from './commands/demo.ts';
import { registerTenantCommands } from './commands/tenant.ts';
import { registerMgmtCommands } from './commands/mgmt.ts';
import { registerImageCommands } from './commands/image.ts';
import { registerVmCommands } from './commands/vm.ts';
import { registerIdsCommands } from './commands/ids.ts';
import { registerIdsEnclaveCommands } from './commands/ids-enclave.ts';
import { registerAttestCommands } from './commands/attest.ts';

const program = new Command()
  .name('vmseal')
  .description(
    'A trusted host layer for IaaS clouds: tenants boot, manage and watch their VMs\n' +
      'without having to trust the cloud administrators. See README.md and docs/.',
  )
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)');

registerHostCommands(program);
registerTenantCommands(program);
registerMgmtCommands(program);
registerAuthorityCommands(program);
registerImageCommands(program);
registerVmCommands(program);
registerAttestCommands(program);
registerIdsEnclaveCommands(registerIdsCommands(program));
registerDiskCommands(program);
registerGuestCommands(program);
registerDemoCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  // Errors reaching here are user-facing: one clear line, no stack unless asked for.
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`vmseal: ${message}\n`);
  if (process.env.VMSEAL_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  process.exitCode = 1;
}
