/**
 * Introspection of the real Debian guest from outside: CR3 from the vCPU over QMP, the KASLR slide
 * from linux_banner's System.map address, and kernel objects read from the RAM file. The oracles are
 * the guest itself (/proc/version, /proc/kallsyms, /proc/iomem, ps) and the kernel's real System.map.
 * A second boot with 3 GiB of RAM checks reads that land above the 4 GiB PCI hole.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { GUEST_SERVICES } from '../../src/guest/rootfs.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { readCpuState } from '../../src/monitor/introspect/cpu-state.ts';
import { openGuestIntrospection, type GuestIntrospection } from '../../src/monitor/introspect/guest-introspection.ts';
import type { GuestReader } from '../../src/monitor/introspect/guest-reader.ts';
import { KASLR_ALIGN, locateKernel } from '../../src/monitor/introspect/kaslr.ts';
import { executeReads } from '../../src/monitor/introspect/read-executor.ts';
import { DiskLaunch, PlainLaunch } from '../../src/monitor/launch/disk-launch.ts';
import { kernelOracle, readSystemMap } from '../fixtures/kernel-oracle.ts';

/** Bytes of task_struct snapshotted per task (the 6.1 cloud kernel's is about 9.5 KiB). */
const TASK_BYTES = 9728;

async function symbols(): Promise<Map<string, bigint>> {
  const map = await readSystemMap((await kernelOracle()).systemMapPath);
  return new Map(map.map((e) => [e.name, e.address]));
}

function sym(map: Map<string, bigint>, name: string): bigint {
  const v = map.get(name);
  assert.ok(v !== undefined, `${name} is in System.map`);
  return v;
}

async function bootGuest(memoryMiB: number, t: { after(fn: () => Promise<void> | void): void }): Promise<{ launch: DiskLaunch; gi: GuestIntrospection }> {
  const guest = await buildGuest();
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const launch = await PlainLaunch.start({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, diskPath: disk.path, name: 'introspect', memoryMiB });
  t.after(() => launch.stop());
  await launch.vm.console.waitFor(GUEST_READY_MARKER, 240_000);
  const gi = await openGuestIntrospection(launch.vm);
  t.after(() => gi.close());
  return { launch, gi };
}

/** The guest's own view of a kallsyms symbol (root sees real addresses). */
async function guestSymbol(launch: DiskLaunch, name: string): Promise<bigint> {
  const out = await runInGuest(launch.vm.console, `grep ' ${name}$' /proc/kallsyms`);
  const m = /^([0-9a-f]{16}) \w /m.exec(out.output);
  assert.ok(m, `guest kallsyms has ${name}: ${out.output}`);
  return BigInt(`0x${m[1]!}`);
}

/**
 * Offsets of comm and tasks in task_struct, found in init_task itself: comm is where "swapper/0"
 * is, tasks is the list_head whose next entry, taken as a task, has its prev pointing back and a
 * printable comm at the same offset.
 */
function taskLayout(reader: GuestReader, initTask: bigint): { comm: number; tasks: number } {
  const snap = reader.readKernel(initTask, TASK_BYTES);
  const comm = snap.indexOf(Buffer.from('swapper/0\0'));
  assert.ok(comm > 0, 'init_task holds "swapper/0"');
  for (let off = 0; off + 16 <= comm; off += 8) {
    const next = snap.readBigUInt64LE(off);
    if (next < 0xffff_8000_0000_0000n || next === initTask + BigInt(off)) continue;
    try {
      const prev = reader.readKernel(next + 8n, 8).readBigUInt64LE(0);
      if (prev !== initTask + BigInt(off)) continue;
      const name = reader.readKernel(next - BigInt(off) + BigInt(comm), 16);
      const text = name.subarray(0, name.indexOf(0)).toString('latin1');
      if (/^[\x20-\x7e]{2,15}$/.test(text)) return { comm, tasks: off };
    } catch {
      // Not a pointer into mapped memory: not this offset.
    }
  }
  assert.fail('no tasks list_head found in init_task');
}

function taskNames(reader: GuestReader, initTask: bigint, layout: { comm: number; tasks: number }) {
  const head = initTask + BigInt(layout.tasks);
  const started = process.hrtime.bigint();
  const [r] = executeReads(reader, [{ kind: 'list', head, linkOffset: layout.tasks, len: TASK_BYTES, max: 2048 }]);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  assert.ok(r?.ok && r.bases, 'the task list is readable');
  const names = r.bases.map((_, i) => {
    const c = r.data.subarray(i * TASK_BYTES + layout.comm, i * TASK_BYTES + layout.comm + 16);
    return c.subarray(0, c.indexOf(0)).toString('latin1');
  });
  return { names, bases: r.bases, ms };
}

test('introspection of the real guest: CR3 over QMP, KASLR slide, banner, init_task and the task list', { timeout: 420_000 }, async (t) => {
  const map = await symbols();
  const { launch, gi } = await bootGuest(512, t);
  const { reader } = gi;
  assert.equal(gi.la57, false, 'qemu64 has no LA57');
  const cpu = await readCpuState(launch.vm.qmp);
  assert.equal(cpu.cpuIndex, 0);
  assert.ok(cpu.cr3 > 0n && cpu.cr3 < BigInt(launch.vm.memoryBytes), 'CR3 points into RAM');

  const bannerVa = sym(map, 'linux_banner');
  const kernel = locateKernel(reader, {
    cr3: gi.cr3,
    bannerVa,
    check: { va: sym(map, 'linux_proc_banner'), bytes: Buffer.from('%s version %s (') },
  });
  const runtimeText = await guestSymbol(launch, '_text');
  assert.equal(kernel.slide, runtimeText - sym(map, '_text'), 'the slide matches the guest kallsyms');
  assert.equal(kernel.slide % KASLR_ALIGN, 0n);
  assert.equal(await guestSymbol(launch, 'linux_banner'), bannerVa + kernel.slide);

  // Where the kernel text landed physically, as the guest reports it.
  const iomem = await runInGuest(launch.vm.console, "grep 'Kernel code' /proc/iomem");
  const code = /([0-9a-f]+)-[0-9a-f]+ : Kernel code/.exec(iomem.output);
  assert.ok(code, iomem.output);
  assert.equal(kernel.textPa, BigInt(`0x${code[1]!}`));

  const banner = reader.readKernel(bannerVa + kernel.slide, 512);
  const version = await runInGuest(launch.vm.console, 'cat /proc/version');
  assert.equal(banner.subarray(0, banner.indexOf(0)).toString('latin1'), version.output);

  // A refreshed CR3 (whatever process runs now) maps the same kernel half.
  await gi.refresh();
  const initTask = sym(map, 'init_task') + kernel.slide;
  const layout = taskLayout(reader, initTask);
  assert.equal(reader.readKernel(initTask + BigInt(layout.comm), 10).toString('latin1'), 'swapper/0\0');

  const ps = await runInGuest(launch.vm.console, 'ps -o pid,ppid,comm');
  await launch.vm.pause();
  const { names, ms } = taskNames(reader, initTask, layout);
  await launch.vm.resume();
  t.diagnostic(`task list: ${names.length} tasks of ${TASK_BYTES} bytes in ${ms.toFixed(2)} ms; slide 0x${kernel.slide.toString(16)}, text at PA 0x${kernel.textPa.toString(16)}`);
  assert.equal(names[0], 'init', 'pid 1 follows init_task');
  assert.equal(names[1], 'kthreadd');
  for (const s of GUEST_SERVICES) assert.ok(names.includes(s.name), `${s.name} is on the task list`);
  // Every user process the guest lists (not kthreadd's children, whose names /proc decorates) is on
  // the task list read from outside, except ps itself, gone by then, and the crontab's minutely `date`,
  // which may be too.
  const userProcs = ps.output
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(\S.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null && m[1] !== '2' && m[2] !== '2' && !/^(ps|date)$/.test(m[3]!));
  assert.ok(userProcs.length >= GUEST_SERVICES.length, ps.output);
  for (const m of userProcs) assert.ok(names.includes(m[3]!.slice(0, 15)), `${m[3]} is on the task list`);
});

test('with 3 GiB of RAM, kernel objects above the 4 GiB hole read correctly', { timeout: 420_000 }, async (t) => {
  const map = await symbols();
  const { launch, gi } = await bootGuest(3072, t);
  const { reader } = gi;
  const iomem = await runInGuest(launch.vm.console, "grep 'System RAM' /proc/iomem");
  assert.match(iomem.output, /^100000000-13fffffff : System RAM$/m, 'q35 puts the last GiB above 4 GiB');

  const kernel = locateKernel(reader, { cr3: gi.cr3, bannerVa: sym(map, 'linux_banner') });
  assert.equal(kernel.slide, (await guestSymbol(launch, '_text')) - sym(map, '_text'));
  const initTask = sym(map, 'init_task') + kernel.slide;
  const layout = taskLayout(reader, initTask);
  await launch.vm.pause();
  const { names, bases } = taskNames(reader, initTask, layout);
  // The task_structs that sit in high RAM, read through their physical addresses directly.
  const high = bases.flatMap((b, i) => {
    const pa = reader.kernelToPhys(b + BigInt(layout.comm));
    return pa >= 1n << 32n ? [{ pa, name: names[i]! }] : [];
  });
  for (const { pa, name } of high) {
    const c = reader.readPhys(pa, 16);
    assert.equal(c.subarray(0, c.indexOf(0)).toString('latin1'), name);
  }
  await launch.vm.resume();
  t.diagnostic(`${high.length} of ${bases.length} task_structs are above 4 GiB; kernel text at PA 0x${kernel.textPa.toString(16)}`);
  assert.ok(high.length > 0, 'some task_structs live above 4 GiB');
  for (const s of GUEST_SERVICES) assert.ok(names.includes(s.name), `${s.name} is on the task list`);
});
