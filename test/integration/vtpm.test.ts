/**
 * The vTPM in a real guest: QEMU's tpm-emulator backend talks to the monitor's proxy, which relays to a
 * per-VM swtpm provisioned with an EK certificate and state encrypted under K_vtpm. Three boots: the first,
 * a reboot (system_reset) and a relaunch of the same VM. Oracles: tpm2-tools inside the guest (pcrread,
 * nvdefine/nvwrite/nvread, quote + checkquote), tpm2_eventlog on the monitor's event log, IMA's
 * boot_aggregate, and raw bytes written to /dev/tpm0 with busybox.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseEventLog, replay } from '../../src/formats/tcg-eventlog.ts';
import { TPM_ALG } from '../../src/formats/tpm2/index.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { PlainLaunch } from '../../src/monitor/launch/disk-launch.ts';
import type { DiskLaunch } from '../../src/monitor/launch/disk-launch.ts';
import { ensureVtpmCa } from '../../src/monitor/vtpm/vtpm-ca.ts';
import { Vtpm } from '../../src/monitor/vtpm/vtpm.ts';

const TIMEOUT = 20 * 60_000;

/** Octal escapes for busybox printf. */
function octal(hex: string): string {
  return Buffer.from(hex, 'hex').reduce((s, b) => s + `\\${b.toString(8).padStart(3, '0')}`, '');
}

test('guest tpm2-tools through the proxy; measured launch replays; hostile raw commands get TPM errors; state survives reboot and relaunch', { timeout: TIMEOUT }, async (t) => {
  const guest = await buildGuest();
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-vtpm-int-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'host'));
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const ca = await ensureVtpmCa(join(dir, 'host'), 'host-int');
  const volumeKey = randomBytes(64);
  const boot = { kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline };

  let vtpm: Vtpm | undefined;
  let launch: DiskLaunch | undefined;
  const start = async () => {
    vtpm = await Vtpm.start({ stateBase: join(dir, 'vtpm'), volumeKey, ca, name: 'vm-int', boot, log: (m) => t.diagnostic(m) });
    launch = await PlainLaunch.start({ ...boot, diskPath: disk.path, name: 'vtpm-int', extraArgs: vtpm.qemuArgs() });
    await launch.vm.console.waitFor(GUEST_READY_MARKER, 300_000);
    await quiet();
  };
  // Kernel messages on the console would interleave with command output.
  const quiet = () => sh('dmesg -n 1');
  const stop = async () => {
    await launch?.stop(2000);
    await vtpm?.stop();
  };
  t.after(stop);
  const sh = async (cmd: string, timeoutMs = 120_000) => {
    const r = await runInGuest(launch!.vm.console, cmd, timeoutMs);
    assert.equal(r.exitCode, 0, `${cmd}:\n${r.output}`);
    return r.output;
  };
  const guestPcrs = async () => {
    const out = await sh('tpm2_pcrread sha256:8,9');
    return [8, 9].map((n) => new RegExp(`^\\s*${n}\\s*:\\s*0x([0-9A-F]{64})$`, 'm').exec(out)?.[1]?.toLowerCase());
  };
  const bootAggregate = async () => {
    const first = (await sh('head -n 1 /sys/kernel/security/ima/ascii_runtime_measurements')).trim();
    assert.match(first, /boot_aggregate$/);
    return /sha256:([0-9a-f]{64})/.exec(first)?.[1] ?? /^10 [0-9a-f]{40} ima-ng ([0-9a-f:]+)/.exec(first)?.[1];
  };

  // Boot 1.
  await start();
  const log = parseEventLog(readFileSync(vtpm!.eventLogPath));
  const replayed = replay(log);
  const expected = [8, 9].map((p) => replayed.get(p)!.get(TPM_ALG.SHA256)!.toString('hex'));
  assert.deepEqual(await guestPcrs(), expected, 'tpm2_pcrread in the guest equals the replay of the monitor log');
  const ev = spawnSync('tpm2_eventlog', [vtpm!.eventLogPath], { encoding: 'utf8' });
  assert.equal(ev.status, 0, ev.stderr);
  for (const [i, p] of [8, 9].entries()) assert.match(ev.stdout, new RegExp(`\\b${p}\\s*:\\s*0x${expected[i]}`, 'i'), `tpm2_eventlog replays PCR ${p}`);
  const aggregate = await bootAggregate();
  assert.ok(aggregate && !/^0+$/.test(aggregate), `boot_aggregate is non-zero: ${aggregate}`);

  const index = '0x1500030';
  const value = `vmseal-${randomBytes(10).toString('hex')}`;
  const readNv = async () => (await sh(`tpm2_nvread ${index} -C o -s ${value.length} -o /tmp/nv.out && cat /tmp/nv.out`)).trim().split('\n').pop();
  await sh(`tpm2_nvdefine ${index} -C o -s ${value.length} -a "ownerread|ownerwrite|authread|authwrite"`);
  await sh(`printf %s ${value} > /tmp/nv.in && tpm2_nvwrite ${index} -C o -i /tmp/nv.in`);
  assert.equal(await readNv(), value);
  // The management plane's view: swtpm's files hold only ciphertext.
  for (const f of readdirSync(vtpm!.stateDir)) assert.ok(!readFileSync(join(vtpm!.stateDir, f)).includes(value), `${f} holds the NV value in clear`);

  // A quote over the measured PCRs, checked in the guest by tpm2_checkquote against the AK's public key.
  await sh(
    'cd /tmp && tpm2_createprimary -Q -C o -c prim.ctx && ' +
      'tpm2_create -Q -C prim.ctx -G ecc256:ecdsa-sha256:null -u ak.pub -r ak.priv -a "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign" && ' +
      'tpm2_load -Q -C prim.ctx -u ak.pub -r ak.priv -c ak.ctx && tpm2_readpublic -Q -c ak.ctx -f pem -o ak.pem && ' +
      'tpm2_quote -Q -c ak.ctx -l sha256:8,9 -q 0badc0de -m q.msg -s q.sig -o q.pcrs -g sha256 && ' +
      'tpm2_checkquote -u ak.pem -m q.msg -s q.sig -f q.pcrs -g sha256 -q 0badc0de',
  );

  // Raw hostile commands on /dev/tpm0: each gets a TPM error response; the TPM and the VM keep working.
  const raw = async (hex: string) => {
    const out = await sh(`printf '${octal(hex)}' > /tmp/cmd && exec 3<>/dev/tpm0 && cat /tmp/cmd >&3 && dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1; exec 3<&-`);
    return out.replace(/\s+/g, '');
  };
  assert.equal(await raw('80010000000c20000fff00000000'), '80010000000a00000143', 'unknown command code → TPM_RC_COMMAND_CODE');
  assert.equal(await raw('12340000000c0000017b00000008'), '80010000000a00000084', 'bad tag → TPM_RC_VALUE');
  assert.match(await raw('80020000000e0000014e40000001'), /^80010000000a0000(?!0000)[0-9a-f]{4}$/, 'NV_Read missing a handle → an error');
  await sh('tpm2_getrandom 8 --hex');
  const rejected = vtpm!.proxy.stats.rejected;
  assert.ok(rejected >= 3, `the proxy rejected ${rejected} commands`);

  // Boot 2: reboot. QEMU resets the TPM; the monitor measures again; NV persists.
  const mark = launch!.vm.console.mark();
  await launch!.vm.reset();
  await launch!.vm.console.waitFor(GUEST_READY_MARKER, 300_000, { since: mark });
  await quiet();
  assert.deepEqual(await guestPcrs(), expected);
  assert.equal(await bootAggregate(), aggregate, 'boot_aggregate is reproducible across a reboot');
  assert.equal(await readNv(), value);
  assert.equal(vtpm!.proxy.stats.measuredBoots, 2);

  // Boot 3: relaunch (new QEMU, new swtpm process, same encrypted state).
  const stateDir = vtpm!.stateDir;
  await stop();
  await start();
  assert.equal(vtpm!.stateDir, stateDir);
  assert.deepEqual(await guestPcrs(), expected);
  assert.equal(await bootAggregate(), aggregate, 'boot_aggregate is reproducible across a relaunch');
  assert.equal(await readNv(), value);
});
