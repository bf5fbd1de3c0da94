import { Option, type Command } from 'commander';
import { MgmtClient, MgmtError } from '../../client/mgmt-client.ts';
import { runVmScan, sendProtectCommand, sendTpmCommand, sendVmCommand } from '../../client/vm-command.ts';
import { scanBaseline, scanMeasurementList, scanReport } from '../../client/vm-scan-report.ts';
import { parseBaseline } from '../../formats/file-baseline.ts';
import { readFile, writeFile } from 'node:fs/promises';
import { formatPcrRows, pcrRows } from '../../client/tpm-pcrs.ts';
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
    .option('--no-integrity', 'XTS only: faster, but storage could flip, move or roll back sectors undetected')
    .option('--protect <path>', 'write-protect this guest file or directory (ext4; repeatable; docs/integrity.md)', (v: string, all: string[]) => [...all, v], [] as string[])
    .action(async (name: string, opts: { dir: string; mgmt: string; image: string; passphraseFile: string; kernel?: string; initrd?: string; cmdline?: string; relaunch?: boolean; integrity: boolean; protect: string[] }) => {
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
        integrity: opts.integrity ? 'tree' : 'none',
        protectedPaths: opts.protect,
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

  registerTpmCommands(vm);
  registerMeasureCommands(vm);
}

/** `vmseal vm scan|protect`: agentless file integrity and write protection (docs/integrity.md). */
function registerMeasureCommands(vm: Command): void {
  vm.command('scan')
    .description("hash the guest's files on its disk, from outside the guest, and compare them with a baseline")
    .argument('<name>', 'the VM name')
    .addOption(tenantDirOption())
    .option('--baseline <file>', 'baseline JSON to compare with (from --save-baseline)')
    .option('--paths <path...>', 'only these files and directories')
    .option('--save-baseline <file>', 'write this scan as a baseline')
    .option('--list <file>', 'write the IMA-style measurement list')
    .option('--json', 'print the summary and diff as JSON')
    .action(async (name: string, opts: { dir: string; baseline?: string; paths?: string[]; saveBaseline?: string; list?: string; json?: boolean }) => {
      const baseline = opts.baseline ? parseBaseline(await readFile(opts.baseline)) : undefined;
      const { head, files } = await runVmScan(opts.dir, name, opts.paths).catch(explain);
      const report = scanReport(head, files, baseline, opts.paths);
      if (opts.saveBaseline) await writeFile(opts.saveBaseline, `${JSON.stringify(scanBaseline(head, files), null, 1)}\n`);
      if (opts.list) await writeFile(opts.list, scanMeasurementList(files));
      const d = report.diff;
      if (opts.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else {
        process.stdout.write(`${name}: ${report.filesystem}, ${report.files} files hashed (${report.bytesHashed} bytes), ${report.unsupported} unsupported, ${report.missing.length} missing\n`);
        for (const m of report.missing) process.stdout.write(`missing  ${m}\n`);
        if (d) for (const [k, list] of [['added', d.added], ['modified', d.modified], ['removed', d.removed]] as const) for (const p of list) process.stdout.write(`${k.padEnd(8)} ${p}\n`);
      }
      if (d && d.added.length + d.modified.length + d.removed.length > 0) process.exitCode = 1;
    });
  vm.command('protect')
    .description('write-protect a guest file or directory from now on (ext4): the monitor refuses guest writes to its blocks')
    .argument('<name>', 'the VM name')
    .requiredOption('--path <path>', 'absolute guest path')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string; path: string }) => {
      const r = await sendProtectCommand(opts.dir, name, opts.path).catch(explain);
      process.stdout.write(`${name}: protect ${opts.path} ${r.ok ? `done (${r.protectedRanges ?? 0} ranges)` : `failed: ${r.error}`} (sealed result #${r.counter} verified)\n`);
      if (!r.ok) process.exitCode = 1;
    });
}

function nvIndexArg(text: string): number {
  const n = Number(text);
  if (!/^(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})$/.test(text) || !Number.isInteger(n) || n < 0x01000000 || n > 0x01ffffff) {
    throw new Error(`--index ${JSON.stringify(text)} is not an NV index handle (0x01000000-0x01ffffff)`);
  }
  return n;
}

/** `vmseal vm tpm …`: read-only NV sharing between the tenant's VMs, and the vTPM's PCRs. */
function registerTpmCommands(vm: Command): void {
  const tpm = vm.command('tpm').description("the VM's vTPM: share NV indices read-only with the tenant's other VMs (or let its guest do so with peers), show PCRs");
  const report = (name: string, what: string, r: { ok: boolean; error?: string | undefined; counter: number }) => {
    process.stdout.write(`${name}: ${what} ${r.ok ? 'done' : `failed: ${r.error}`} (sealed result #${r.counter} verified)\n`);
    if (!r.ok) process.exitCode = 1;
  };
  tpm.command('share')
    .description('let OTHER read NV index I of NAME (read-only; NAME can no longer write it while shared)')
    .argument('<name>', 'the VM that owns the index')
    .requiredOption('--index <I>', 'the NV index, e.g. 0x01800010 (owner range 0x01800000-0x0180ffff)')
    .requiredOption('--with <other>', 'the VM that may read it')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string; index: string; with: string }) => {
      const index = nvIndexArg(opts.index);
      report(name, `share 0x${index.toString(16)} with ${opts.with}`, await sendTpmCommand(opts.dir, name, 'tpm-share', { index, other: opts.with }).catch(explain));
    });
  tpm.command('revoke')
    .description("withdraw OTHER's read access to NV index I of NAME (effective from OTHER's next TPM command)")
    .argument('<name>', 'the VM that owns the index')
    .requiredOption('--index <I>', 'the NV index')
    .requiredOption('--from <other>', 'the VM to revoke')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string; index: string; from: string }) => {
      const index = nvIndexArg(opts.index);
      report(name, `revoke 0x${index.toString(16)} from ${opts.from}`, await sendTpmCommand(opts.dir, name, 'tpm-revoke', { index, other: opts.from }).catch(explain));
    });
  tpm.command('peer')
    .description("let NAME's guest share its NV indices with OTHER by itself (the vmseal-tpm-grant tool in the guest)")
    .argument('<name>', 'the VM whose guest may share')
    .requiredOption('--with <other>', 'the VM it may share with')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string; with: string }) => {
      report(name, `peer with ${opts.with}`, await sendTpmCommand(opts.dir, name, 'tpm-peer', { other: opts.with }).catch(explain));
    });
  tpm.command('unpeer')
    .description("withdraw that; grants NAME's guest already made to OTHER stay until revoked (vm tpm revoke, or the guest tool)")
    .argument('<name>', 'the VM whose guest may share')
    .requiredOption('--with <other>', 'the peer to remove')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string; with: string }) => {
      report(name, `unpeer ${opts.with}`, await sendTpmCommand(opts.dir, name, 'tpm-unpeer', { other: opts.with }).catch(explain));
    });
  tpm.command('pcrs')
    .description("the vTPM's sha256 PCRs next to the replay of the monitor's launch event log")
    .argument('<name>', 'the VM name')
    .addOption(tenantDirOption())
    .action(async (name: string, opts: { dir: string }) => {
      const r = await sendTpmCommand(opts.dir, name, 'tpm-pcrs').catch(explain);
      if (!r.ok || !r.tpm) return report(name, 'pcrs', r);
      const rows = pcrRows(r.tpm);
      process.stdout.write(formatPcrRows(rows));
      if (rows.some((row) => row.replay !== undefined && row.replay !== row.tpm)) process.exitCode = 1;
    });
}
