/**
 * The demo guest's TPM and IMA tooling, on the real guest: tpm2-tools (from Debian packages, with
 * the libraries our ELF reader found) talks to a real swtpm through the kernel's /dev/tpmrm0; IMA
 * measures into PCR 10; System.map from the build cache matches the running kernel's kallsyms.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseElf, readDynamic } from '../../src/formats/elf.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER, GUEST_USER } from '../../src/guest/contract.ts';
import { readManifest } from '../../src/guest/manifest.ts';
import { gatherTpmTools } from '../../src/guest/tpm-tools.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { PlainLaunch } from '../../src/monitor/launch/disk-launch.ts';

const BUILD_TIMEOUT = 20 * 60_000;

/** A real swtpm whose control channel is a unix socket QEMU's tpm emulator backend connects to. */
async function startSwtpm(dir: string): Promise<{ ctrl: string; stop(): Promise<void> }> {
  const ctrl = join(dir, 'swtpm.ctrl');
  const state = join(dir, 'state');
  mkdirSync(state);
  const child = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${state}`, '--ctrl', `type=unixio,path=${ctrl}`, '--flags', 'startup-clear'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (let i = 0; !existsSync(ctrl); i++) {
    if (child.exitCode !== null || i > 200) throw new Error(`swtpm did not create its control socket: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    ctrl,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** name -> address of the symbols asked for, from nm-style lines (System.map, /proc/kallsyms). */
function symbolAddresses(text: string, names: readonly string[]): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const line of text.split('\n')) {
    const [addr, , name] = line.trim().split(/\s+/);
    if (addr && name && names.includes(name) && !out.has(name)) out.set(name, BigInt(`0x${addr}`));
  }
  return out;
}

test('System.map is in the guest cache, recorded with its sha256, from the same Debian build as the kernel', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await buildGuest();
  const manifest = await readManifest(dirname(g.systemMap));
  const record = manifest?.artifacts.systemMap;
  assert.ok(record, 'the manifest records System.map');
  const map = readFileSync(g.systemMap);
  assert.equal(record.sha256, sha256(map));
  assert.equal(record.bytes, map.length);
  assert.equal(record.recipe, `${manifest!.kernelPackage.name}-dbg=${manifest!.kernelPackage.version}`);
  const syms = symbolAddresses(map.toString('latin1'), ['_text', 'linux_banner', 'init_task', 'sys_call_table']);
  assert.equal(syms.get('_text'), 0xffffffff81000000n, 'x86-64 kernel text starts at the default link address');
  assert.equal(syms.size, 4);
  // The bzImage names its build (boot protocol: kernel_version at 0x20e, offset from 0x200).
  const kernel = readFileSync(g.kernel);
  const at = kernel.readUInt16LE(0x20e) + 0x200;
  const banner = kernel.subarray(at, kernel.indexOf(0, at)).toString('latin1');
  assert.ok(banner.startsWith(`${g.kernelVersion} `), banner);
  assert.ok(banner.includes(` ${manifest!.kernelPackage.version} `), `${banner} is Debian ${manifest!.kernelPackage.version}`);
});

test('the rootfs libraries are the DT_NEEDED closure of tpm2, as readelf reads the same files', { timeout: BUILD_TIMEOUT }, async () => {
  const work = mkdtempSync(join(tmpdir(), 'vmseal-tpmtools-'));
  try {
    const got = await gatherTpmTools(work, () => {});
    const paths = new Set(got.entries.map((e) => e.path));
    for (const n of ['tpm2_pcrread', 'tpm2_nvdefine', 'tpm2_nvwrite', 'tpm2_nvread', 'tpm2_quote', 'tpm2_eventlog', 'tpm2_startup']) assert.ok(paths.has(`usr/bin/${n}`), n);
    assert.ok(paths.has('usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0'), 'the dlopened TCTI is there');
    assert.ok(paths.has('lib64/ld-linux-x86-64.so.2'));
    assert.ok(got.packages.some((p) => p.name === 'libc6') && got.packages.some((p) => p.name === 'tpm2-tools'));
    const sonames = new Set(got.entries.map((e) => e.path.split('/').pop()!));
    // Oracle: binutils' readelf on the unpacked files, against our readDynamic.
    const roots = readdirSync(join(work, 'unpacked')).map((p) => join(work, 'unpacked', p));
    let checked = 0;
    for (const e of got.entries) {
      if (e.kind !== 'file' || !(e.content instanceof Uint8Array)) continue;
      const file = roots.map((r) => join(r, e.path)).find((f) => existsSync(f))!;
      const r = spawnSync('readelf', ['-dlW', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const needed = [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
      const dyn = readDynamic(parseElf(e.content));
      assert.deepEqual(dyn.needed, needed, e.path);
      assert.equal(dyn.interpreter, /Requesting program interpreter: ([^\]]+)\]/.exec(r.stdout)?.[1], e.path);
      for (const n of needed) assert.ok(sonames.has(n!), `${n} needed by ${e.path} is in the rootfs`);
      checked++;
    }
    assert.ok(checked > 20, `${checked} objects checked`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test('in the guest, with a real swtpm: tpm2-tools reads PCRs and round-trips NV, IMA measures, kallsyms matches System.map', { timeout: BUILD_TIMEOUT }, async (t) => {
  const guest = await buildGuest();
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-tpmguest-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const swtpm = await startSwtpm(dir);
  t.after(() => swtpm.stop());
  const started = Date.now();
  const launch = await PlainLaunch.start({
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guest.cmdline,
    diskPath: disk.path,
    name: 'tpmtools',
    extraArgs: ['-chardev', `socket,id=chrtpm,path=${swtpm.ctrl}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-crb,tpmdev=tpm0'],
  });
  t.after(() => launch.stop());
  const { vm } = launch;
  await vm.console.waitFor(GUEST_READY_MARKER, 300_000);
  t.diagnostic(`boot to ${GUEST_READY_MARKER} with a TPM: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const sh = async (cmd: string, timeoutMs = 60_000) => {
    const r = await runInGuest(vm.console, cmd, timeoutMs);
    assert.equal(r.exitCode, 0, `${cmd}:\n${r.output}`);
    return r.output;
  };

  assert.match(await sh('echo $TPM2TOOLS_TCTI; ls /dev/tpmrm0'), /^device:\/dev\/tpmrm0\n\/dev\/tpmrm0$/m);
  const pcrs = await sh('tpm2_pcrread sha256:0,10');
  const pcr = (n: number) => new RegExp(`^\\s*${n}\\s*:\\s*0x([0-9A-F]{64})$`, 'm').exec(pcrs)?.[1];
  assert.ok(pcr(0), `PCR 0 is read:\n${pcrs}`);
  assert.ok(pcr(10) && pcr(10) !== '0'.repeat(64), `IMA extended PCR 10:\n${pcrs}`);

  // IMA's list replays to PCR 10 of the sha1 bank (the list shows sha1 template digests).
  // Every file the commands below run or read is measured by now, so the list stays put.
  await sh('tpm2_pcrread sha1:10 >/dev/null; cat /sys/kernel/security/ima/ascii_runtime_measurements >/dev/null');
  const list = await sh('cat /sys/kernel/security/ima/ascii_runtime_measurements');
  const sha1 = /^\s*10\s*:\s*0x([0-9A-F]{40})$/m.exec(await sh('tpm2_pcrread sha1:10'))?.[1];
  const lines = list.trim().split('\n');
  assert.match(lines[0]!, /^10 [0-9a-f]{40} ima-sig sha256:[0-9a-f]{64} boot_aggregate\s*$/);
  assert.notEqual(/sha256:([0-9a-f]{64})/.exec(lines[0]!)?.[1], '0'.repeat(64), 'boot_aggregate covers a real TPM');
  let replay = Buffer.alloc(20);
  for (const l of lines) replay = createHash('sha1').update(replay).update(Buffer.from(l.split(' ')[1]!, 'hex')).digest();
  assert.equal(replay.toString('hex').toUpperCase(), sha1, 'the IMA list replays to PCR 10');

  const index = '0x1500016';
  const value = randomBytes(12).toString('hex');
  await sh(`tpm2_nvdefine ${index} -C o -s ${value.length} -a "ownerread|ownerwrite|authread|authwrite"`);
  await sh(`printf %s ${value} > /tmp/nv.in && tpm2_nvwrite ${index} -C o -i /tmp/nv.in`);
  assert.equal(await sh(`tpm2_nvread ${index} -C o -s ${value.length} -o /tmp/nv.out && cat /tmp/nv.out`), value);
  assert.match(await sh(`tpm2_nvreadpublic ${index}`), new RegExp(`^${index}:`, 'm'));
  await sh(`tpm2_nvundefine ${index} -C o`);
  assert.notEqual((await runInGuest(vm.console, `tpm2_nvreadpublic ${index}`)).exitCode, 0, 'the index is gone');

  // Symbols move together by the KASLR slide, so the map is the running kernel's.
  const names = ['_text', 'linux_banner', 'init_task', 'sys_call_table'];
  const live = symbolAddresses(await sh(`grep -E ' (${names.join('|')})$' /proc/kallsyms`), names);
  const map = symbolAddresses(readFileSync(guest.systemMap, 'latin1'), names);
  const slides = new Set(names.map((n) => live.get(n)! - map.get(n)!));
  assert.equal(slides.size, 1, `one slide for all: ${[...slides].map((s) => s.toString(16))}`);

  assert.equal((await sh(`su -s /bin/sh ${GUEST_USER.name} -c 'id -u; id -g; echo $HOME'`)).trim(), `${GUEST_USER.uid}\n${GUEST_USER.uid}\n${GUEST_USER.home}`);
  await sh('for a in ps sleep cp su insmod rmmod; do command -v $a; done');
});
