import { Option, type Command } from 'commander';
import { MgmtClient, MgmtError } from '../../client/mgmt-client.ts';
import { sendVmCommand } from '../../client/vm-command.ts';
import { launchVm } from '../../client/vm-launch.ts';
import { VM_OPS, type VmOp } from '../../formats/protocol/command.ts';
import { buildGuest } from '../../guest/build.ts';
import { readPassphraseFile } from './image.ts';
import { loadTenantState } from '../../client/tenant-state.ts';
import { SealedConsole } from '../../client/sealed-console.ts';

const DETACH_KEY = 0x1d; // Ctrl-]
/** Without a terminal, how long the console keeps reading after stdin ends. */
const DRAIN_MS = 3000;

async function attachSealedConsole(tenantDir: string, name: string): Promise<void> {
  const rec = (await loadTenantState(tenantDir)).vms[name];
  if (!rec) throw new Error(`the tenant has no VM named ${name}`);
  const sc = await SealedConsole.open(new MgmtClient(rec.mgmtUrl), rec.vmId, Buffer.from(rec.consoleKey, 'base64'));
  const stdin = process.stdin;
  let stop = false;
  let stdinEnded = false;
  let pending: Promise<void> = Promise.resolve();
  const onInput = (buf: Buffer) => {
    const cut = buf.indexOf(DETACH_KEY);
    const data = cut >= 0 ? buf.subarray(0, cut) : buf;
    if (data.length > 0) pending = pending.then(() => sc.write(data));
    if (cut >= 0) stop = true;
  };
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.on('data', onInput);
  stdin.once('end', () => (stdinEnded = true));
  process.stderr.write(`vmseal: sealed console of ${name} (session ${sc.sessionId.slice(0, 8)}…); Ctrl-] leaves\r\n`);
  try {
    let quietSince = Date.now();
    while (!stop) {
      const out = await sc.read(stdinEnded ? 500 : 1000, (n) => process.stderr.write(`\r\n[vmseal: ${n} console frame(s) withheld in transit]\r\n`));
      if (out.length > 0) {
        process.stdout.write(out);
        quietSince = Date.now();
      }
      if (stdinEnded && !stdin.isTTY && Date.now() - quietSince > DRAIN_MS) break;
    }
    await pending;
  } finally {
    stdin.off('data', onInput);
    if (stdin.isTTY) stdin.setRawMode(false);
    stdin.pause();
    sc.close();
  }
}

const OP_HELP: Record<VmOp, string> = {
  pause: 'pause the vCPUs',
  resume: 'resume the vCPUs',
  status: "report QEMU's run state",
  shutdown: 'press the ACPI power button (the guest shuts down cleanly)',
  poweroff: 'cut the power (QEMU stops at once)',
  reboot: 'hard reset (the same kernel, initrd and cmdline boot again)',
};

const tenantDirOption = () =>
  new Option('--dir <dir>', 'tenant state directory (from vmseal tenant init)').env('VMSEAL_TENANT_DIR').makeOptionMandatory();

/** A monitor refusal becomes an error whose first word is its code, so scripts and people see REDIRECT etc. */
function explain(err: unknown): never {
  if (err instanceof MgmtError && err.refusal) throw new Error(`${err.refusal}: refused by the monitor: ${err.message}`);
  throw err;
}

/** `vmseal vm …`: the tenant's VMs, launched and managed through the untrusted management plane. */
export function registerVmCommands(program: Command): void {
  const vm = program.command('vm').description("the tenant's protected VMs: sealed launch, identity check, sealed commands");

  vm.command('launch')
    .description('launch a VM from a sealed image through the management plane, and check the identity proof the monitor returns')
    .argument('<name>', 'the VM name (a-z 0-9 -)')
    .addOption(tenantDirOption())
    .requiredOption('--mgmt <url>', 'the management plane, e.g. http://127.0.0.1:8480')
    .requiredOption('--image <img>', 'sealed image (vmseal image seal, or imported)')
    .requiredOption('--passphrase-file <file>', 'its passphrase file')
    .option('--kernel <file>', "kernel (default: the demo guest's)")
    .option('--initrd <file>', "initramfs (default: the demo guest's)")
    .option('--cmdline <text>', "kernel command line (default: the demo guest's)")
    .option('--relaunch', 'start again a VM launched before from this image; its stored disk (with the changes of its last run) is used')
    .action(async (name: string, opts: { dir: string; mgmt: string; image: string; passphraseFile: string; kernel?: string; initrd?: string; cmdline?: string; relaunch?: boolean }) => {
      const demo = opts.kernel && opts.initrd && opts.cmdline !== undefined ? undefined : await buildGuest({ onProgress: (m) => process.stderr.write(`guest: ${m}\n`) });
      const launched = await launchVm({
        tenantDir: opts.dir,
        mgmtUrl: opts.mgmt,
        name,
        imagePath: opts.image,
        passphrase: await readPassphraseFile(opts.passphraseFile),
        kernel: opts.kernel ?? demo!.kernel,
        initrd: opts.initrd ?? demo!.initrd,
        cmdline: opts.cmdline ?? demo!.cmdline,
        relaunch: opts.relaunch ?? false,
        onProgress: (m) => process.stderr.write(`vm: ${m}\n`),
      }).catch(explain);
      process.stdout.write(`launched ${launched.name}: VM ${launched.vmId} on host ${launched.hostId} (identity proof verified)\n`);
    });

  vm.command('console')
    .description('the VM\'s serial console, sealed end to end through the management plane (Ctrl-] leaves)')
    .argument('<name>', 'the VM name')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string }) => {
      await attachSealedConsole(opts.dir, name);
    });

  for (const op of VM_OPS) {
    vm.command(op)
      .description(`${OP_HELP[op]}, by a sealed command`)
      .argument('<name>', 'the VM name')
      .addOption(tenantDirOption())
      .action(async (name: string, opts: { dir: string }) => {
        const r = await sendVmCommand(opts.dir, name, op).catch(explain);
        process.stdout.write(`${name}: ${op} ${r.ok ? 'done' : `failed: ${r.error}`}; state ${r.state} (sealed result #${r.counter} verified)\n`);
        if (!r.ok) process.exitCode = 1;
      });
  }
}
