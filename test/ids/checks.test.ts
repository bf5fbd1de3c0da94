/**
 * The IDS checks against the real Debian guest, one boot for the whole file. The IDS reads through
 * the monitor's direct MemorySource; attacks are simulated the way a rootkit would do them, by
 * writing guest memory (through guest-physical writes after translating), while the guest runs.
 * Every attack is undone afterwards and the guest must still answer commands.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { readFile } from 'node:fs/promises';
import { buildProfile } from '../../src/ids/profile/build-profile.ts';
import { allowlistCheck } from '../../src/ids/checks/allowlist.ts';
import { hiddenProcessCheck } from '../../src/ids/checks/hidden-process.ts';
import { CHECK_NAMES, createCheck } from '../../src/ids/checks/index.ts';
import { modulesCheck } from '../../src/ids/checks/modules.ts';
import { privescCheck } from '../../src/ids/checks/privesc.ts';
import { listProcesses, TASK_FIELDS } from '../../src/ids/checks/processes.ts';
import { pslistCheck, type PsRow } from '../../src/ids/checks/pslist.ts';
import { readSyscallTable, syscallHooksCheck } from '../../src/ids/checks/syscall-hooks.ts';
import { KernelView } from '../../src/ids/kernel/kernel-view.ts';
import type { Module } from '../../src/ids/kernel/linux-types.ts';
import { PlainLaunch } from '../../src/monitor/launch/disk-launch.ts';
import { WritableGuestMemoryForTests } from '../../src/monitor/introspect/guest-memory.ts';
import { openGuestIntrospection } from '../../src/monitor/introspect/guest-introspection.ts';
import { DirectMemorySource } from '../../src/monitor/introspect/read-executor.ts';
import { assertAgreesWithPs } from './ps-compare.ts';

const PAGE = 4096n;

test('IDS checks on the real guest', { timeout: 900_000 }, async (t) => {
  const guest = await buildGuest();
  const profile = buildProfile(await readFile(guest.kernel));
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const launch = await PlainLaunch.start({ kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline, diskPath: disk.path, name: 'idschecks' });
  t.after(() => launch.stop());
  const { vm } = launch;
  await vm.console.waitFor(GUEST_READY_MARKER, 240_000);
  const sh = async (cmd: string) => {
    const r = await runInGuest(vm.console, cmd, 60_000);
    assert.equal(r.exitCode, 0, `${cmd}: ${r.output}`);
    return r.output;
  };

  const intro = await openGuestIntrospection(vm);
  t.after(() => intro.close());
  const source = new DirectMemorySource(intro.reader);
  const k = await KernelView.open(source, profile);
  assert.match(k.banner ?? '', /^Linux version 6\.1\.0-56-cloud-amd64 /);
  assert.equal(k.slide % 0x200000n, 0n);

  const ram = WritableGuestMemoryForTests.openWritable(vm.memoryFile, vm.memoryBytes);
  t.after(() => ram.close());
  /** Writes kernel-virtual memory the way a rootkit would, page by page through the guest's tables. */
  const poke = (va: bigint, data: Buffer) => {
    for (let done = 0; done < data.length; ) {
      const at = va + BigInt(done);
      const n = Math.min(data.length - done, Number(PAGE - (at % PAGE)));
      ram.writePhys(intro.reader.kernelToPhys(at), data.subarray(done, done + n));
      done += n;
    }
  };
  const u64 = (v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    return b;
  };
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  };
  /** The guest must not change a list while we relink it: pause, write, resume. */
  const whilePaused = async (fn: () => void) => {
    await vm.pause();
    try {
      await intro.refresh();
      fn();
    } finally {
      await vm.resume();
    }
  };

  await t.test('every check in the registry runs clean on the untouched guest', async () => {
    await intro.refresh();
    for (const name of CHECK_NAMES) {
      if (name === 'allowlist') continue;
      const r = await createCheck(name).scan(k);
      assert.deepEqual(r.alerts, [], `${name} is quiet`);
    }
  });

  await t.test('pslist agrees with ps inside the guest', async () => {
    const passwd = await sh('cat /etc/passwd');
    const psOut = await sh('ps -o pid,ppid,user,comm | cat');
    await intro.refresh();
    const before = { ...k.stats };
    const rows = (await pslistCheck().scan(k)).data as PsRow[];
    const requests = k.stats.requests - before.requests;
    assert.ok(requests <= 4, `pslist took ${requests} requests`);
    const ours = assertAgreesWithPs(passwd, psOut, rows);
    const init = ours.get(1);
    assert.equal(init?.ppid, 0);
    assert.equal(init?.state, 'S');
    assert.ok(rows.filter((r) => r.kthread).length > 10, 'kernel threads are listed and marked');
  });

  await t.test('an unauthorized program is reported on the next scan', async () => {
    await intro.refresh();
    const baseline = (await listProcesses(k)).filter((p) => !p.kthread);
    // `date` and `sh` are the guest's minutely cron job, which a scan can catch mid-run.
    const check = allowlistCheck({ comms: [...new Set([...baseline.map((p) => p.comm), 'ps', 'cat', 'sleep', 'sh', 'date'])], exes: ['/bin/busybox', '/usr/sbin/vmseal-sensord'] });
    assert.deepEqual((await check.scan(k)).alerts, [], 'the guest as booted is allowed');
    // busybox runs an applet named by its argument only when its own name starts with "busybox".
    await sh('cp /bin/busybox /tmp/busybox-evil && (/tmp/busybox-evil sleep 1000 &) && sleep 0.2');
    await intro.refresh();
    const alerts = (await check.scan(k)).alerts;
    assert.equal(alerts.length, 1, JSON.stringify(alerts));
    const evil = alerts[0];
    assert.ok(evil);
    assert.equal(evil.kind, 'unauthorized-program');
    assert.equal(evil.evidence.comm, 'busybox-evil');
    assert.equal(evil.evidence.exe, '/tmp/busybox-evil');
    assert.match(String(evil.evidence.task), /^0xffff/);
    await sh('killall busybox-evil');
  });

  await t.test('an exited process whose name is allowed is not reported for its missing executable', async () => {
    const check = allowlistCheck({ comms: ['init', 'sh', 'sleep'], exes: ['/bin/busybox'] });
    // The outer sh execs into a sleep that never reaps its child: "sleep 0.1" stays a zombie, without an mm.
    await sh("(sh -c 'sleep 0.1 & exec sleep 1000' &) ; sleep 0.5");
    await intro.refresh();
    const zombie = (await listProcesses(k)).find((p) => p.comm === 'sleep' && p.state === 'Z');
    assert.ok(zombie, 'the zombie is listed');
    assert.ok(zombie.task.mm.isNull, 'a zombie has no mm');
    const alerts = (await check.scan(k)).alerts;
    assert.equal(alerts.find((a) => a.evidence.pid === zombie.pid), undefined, JSON.stringify(alerts));
    await sh(`kill ${zombie.ppid}`);
  });

  await t.test('a task unlinked from the task list (DKOM) is found through the pid IDR', async () => {
    await sh('(sleep 1000 &) ; sleep 0.2');
    await intro.refresh();
    const victim = (await listProcesses(k)).find((p) => p.comm === 'sleep' && p.uid === 0);
    assert.ok(victim, 'the sleeping victim is visible');
    const task = victim.task;
    const prev = task.tasks.prev.addr;
    const next = task.tasks.next.addr;
    const link = task.tasks.$addr;
    const nextOff = BigInt(k.model.offsetOf('list_head', 'next').offset);
    const prevOff = BigInt(k.model.offsetOf('list_head', 'prev').offset);
    await whilePaused(() => {
      poke(prev + nextOff, u64(next));
      poke(next + prevOff, u64(prev));
    });
    try {
      const listed = await listProcesses(k);
      assert.equal(listed.find((p) => p.pid === victim.pid), undefined, 'the victim is gone from the task list');
      const alerts = (await hiddenProcessCheck().scan(k)).alerts;
      assert.equal(alerts.length, 1, JSON.stringify(alerts));
      assert.equal(alerts[0]?.kind, 'hidden-process');
      assert.equal(alerts[0]?.evidence.pid, victim.pid);
      assert.equal(alerts[0]?.evidence.comm, 'sleep');
      assert.equal(alerts[0]?.evidence.task, `0x${task.$addr.toString(16)}`);
      assert.match(await sh('echo alive'), /alive/, 'the guest keeps running');
    } finally {
      await whilePaused(() => {
        poke(prev + nextOff, u64(link));
        poke(next + prevOff, u64(link));
      });
    }
    assert.deepEqual((await hiddenProcessCheck().scan(k)).alerts, []);
    await sh(`kill ${victim.pid}`);
  });

  await t.test('a module unlinked from the modules list is reported by name', async () => {
    await intro.refresh();
    const lsmod = await sh('cat /proc/modules');
    const scan0 = await modulesCheck().scan(k);
    const names = (scan0.data as { name: string }[]).map((m) => m.name).sort();
    assert.deepEqual(names, lsmod.split('\n').filter(Boolean).map((l) => l.split(' ')[0]).sort(), 'module list = /proc/modules');
    const victimName = names.includes('evdev') ? 'evdev' : (names[0] as string);
    const mods = await k.list<Module>(k.sym('modules'), 'module', 'list');
    const victim = mods.find((m) => m.name === victimName);
    assert.ok(victim);
    const prev = victim.list.prev.addr;
    const next = victim.list.next.addr;
    const nextOff = BigInt(k.model.offsetOf('list_head', 'next').offset);
    const prevOff = BigInt(k.model.offsetOf('list_head', 'prev').offset);
    await whilePaused(() => {
      poke(prev + nextOff, u64(next));
      poke(next + prevOff, u64(prev));
    });
    try {
      assert.doesNotMatch(await sh('cat /proc/modules'), new RegExp(`^${victimName} `, 'm'), 'hidden from the guest');
      const alerts = (await modulesCheck().scan(k)).alerts;
      assert.equal(alerts.length, 1, JSON.stringify(alerts));
      assert.equal(alerts[0]?.kind, 'hidden-module');
      assert.equal(alerts[0]?.evidence.name, victimName);
      assert.equal(alerts[0]?.evidence.module, `0x${victim.$addr.toString(16)}`);
    } finally {
      await whilePaused(() => {
        poke(prev + nextOff, u64(victim.list.$addr));
        poke(next + prevOff, u64(victim.list.$addr));
      });
    }
    assert.match(await sh('cat /proc/modules'), new RegExp(`^${victimName} `, 'm'));
  });

  await t.test('a sys_call_table entry pointing outside kernel text is reported with slot and value', async () => {
    await intro.refresh();
    const { table, entries, stext, etext } = await readSyscallTable(k);
    assert.ok(entries.every((e) => e >= stext && e < etext));
    // The most common entry is sys_ni_syscall: hook an unimplemented slot, so the guest cannot notice.
    const counts = new Map<bigint, number>();
    for (const e of entries) counts.set(e, (counts.get(e) ?? 0) + 1);
    const ni = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] as bigint;
    const slot = entries.findIndex((e, i) => i > 300 && e === ni);
    assert.ok(slot > 0);
    const hook = 0xffffffffc0badd00n;
    poke(table + BigInt(slot) * 8n, u64(hook));
    try {
      const alerts = (await syscallHooksCheck().scan(k)).alerts;
      assert.equal(alerts.length, 1, JSON.stringify(alerts));
      assert.equal(alerts[0]?.evidence.nr, slot);
      assert.equal(alerts[0]?.evidence.value, `0x${hook.toString(16)}`);
    } finally {
      poke(table + BigInt(slot) * 8n, u64(ni));
    }
    assert.deepEqual((await syscallHooksCheck().scan(k)).alerts, []);
  });

  await t.test('a non-root task whose credentials turn to root without exec is reported', async () => {
    await sh('su -s /bin/sh nobody -c "exec sleep 1000" </dev/null >/dev/null 2>&1 & sleep 0.5');
    await intro.refresh();
    const check = privescCheck();
    await check.scan(k);
    const victim = (await listProcesses(k)).find((p) => p.uid === 65534 && p.comm === 'sleep');
    assert.ok(victim?.cred, 'the unprivileged sleeper is visible');
    assert.deepEqual((await check.scan(k)).alerts, [], 'nothing changed yet');
    const cred = victim.cred.$addr;
    const idFields = ['uid', 'euid', 'suid', 'fsuid'].map((f) => k.model.offsetOf('cred', f).offset);
    for (const off of idFields) poke(cred + BigInt(off), u32(0));
    try {
      const alerts = (await check.scan(k)).alerts;
      assert.equal(alerts.length, 1, JSON.stringify(alerts));
      assert.equal(alerts[0]?.kind, 'privilege-escalation');
      assert.equal(alerts[0]?.evidence.pid, victim.pid);
      assert.equal(alerts[0]?.evidence.task, `0x${victim.task.$addr.toString(16)}`);
      assert.deepEqual(alerts[0]?.evidence.before, { uid: 65534, euid: 65534, suid: 65534, cred: `0x${cred.toString(16)}` });
    } finally {
      for (const off of idFields) poke(cred + BigInt(off), u32(65534));
    }
    // The same change with an exec in between (self_exec_id bumped) is how a setuid binary gets root.
    const legit = privescCheck();
    await legit.scan(k);
    const execId = victim.task.$addrOf('self_exec_id');
    poke(execId, u64(victim.execId + 1n));
    for (const off of idFields) poke(cred + BigInt(off), u32(0));
    try {
      assert.deepEqual((await legit.scan(k)).alerts, []);
    } finally {
      for (const off of idFields) poke(cred + BigInt(off), u32(65534));
      poke(execId, u64(victim.execId));
    }
    await sh(`kill ${victim.pid}`);
  });

  await t.test('pslist of 300+ processes takes a handful of requests', async () => {
    await sh('for i in $(seq 300); do sleep 1000 & done');
    await intro.refresh();
    const before = k.stats.requests;
    const started = process.hrtime.bigint();
    const rows = (await pslistCheck().scan(k)).data as PsRow[];
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const requests = k.stats.requests - before;
    const bytes = k.fieldWindows('task_struct', [...TASK_FIELDS]).reduce((n, [from, to]) => n + to - from, 0);
    t.diagnostic(`pslist: ${rows.length} processes, ${requests} requests, ${ms.toFixed(1)} ms (direct source), ${bytes} of ${k.model.sizeOf('task_struct')} task_struct bytes per entry`);
    assert.ok(rows.length >= 300, `${rows.length} processes`);
    assert.ok(requests <= 4, `${requests} requests`);
    await sh('killall sleep; true');
  });

  assert.match(await sh('echo still-alive'), /still-alive/);
});
