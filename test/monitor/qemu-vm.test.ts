import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { registerCleanup, runCleanups } from '../../src/monitor/vm/cleanup.ts';
import { probeKvm } from '../../src/monitor/vm/kvm-probe.ts';
import { QemuVm } from '../../src/monitor/vm/qemu-vm.ts';
import { SerialConsole } from '../../src/monitor/vm/serial-console.ts';
import { OneShotListener } from '../../src/monitor/vm/unix-listener.ts';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const QEMU_VM_MODULE = path.join(REPO_ROOT, 'src/monitor/vm/qemu-vm.ts');

/**
 * A 160-byte multiboot "kernel" (QEMU loads multiboot images with -kernel, and takes -initrd as
 * a module), so the runner can be tested against a real guest without a Linux kernel. In 32-bit
 * protected mode it prints "vmseal-echo ready\r\n" on COM1, then echoes every byte it receives,
 * upper-casing a-z; '!' powers off through ACPI PM1a_CNT (0x604 on q35 with SeaBIOS), '~' resets
 * through port 0xcf9. Source (GNU as, --32; objcopy -O binary):
 *   header: .long 0x1BADB002, 0x00010000, -(0x1BADB002+0x00010000)      # magic, flags: addresses given
 *           .long 0x100000, 0x100000, 0, 0, 0x100020                     # header/load addr, entry
 *   start:  mov $0x200000,%esp; mov $banner,%esi; call puts
 *   loop:   mov $0x3fd,%dx; 1: inb %dx,%al; test $1,%al; jz 1b            # wait for received data
 *           mov $0x3f8,%dx; inb %dx,%al
 *           cmp $'!',%al; je poweroff; cmp $'~',%al; je reboot
 *           cmp $'a',%al; jb 2f; cmp $'z',%al; ja 2f; sub $32,%al; 2: call putc; jmp loop
 *   putc:   mov %al,%ah; mov $0x3fd,%dx; 3: inb %dx,%al; test $0x20,%al; jz 3b
 *           mov $0x3f8,%dx; mov %ah,%al; outb %al,%dx; ret
 *   puts:   4: lodsb; test %al,%al; jz 5f; call putc; jmp 4b; 5: ret
 *   poweroff: mov $0x604,%dx; mov $0x2000,%ax; outw %ax,%dx; 6: hlt; jmp 6b   # SLP_EN, SLP_TYP=S5
 *   reboot:   mov $0xcf9,%dx; mov $6,%al; outb %al,%dx; jmp 6b
 *   banner:   .asciz "vmseal-echo ready\r\n"
 */
const ECHO_KERNEL = Buffer.from(
  [
    '02b0ad1b00000100fe4f51e400001000',
    '00001000000000000000000020001000',
    'bc00002000be8c001000e83a00000066',
    'bafd03eca80174fb66baf803ec3c2174',
    '353c7e743e3c6172063c7a77022c20e8',
    '02000000ebd988c466bafd03eca82074',
    'fb66baf80388e0eec3ac84c07407e8e3',
    'ffffffebf4c366ba040666b8002066ef',
    'f4ebfd66baf90cb006eeebf4766d7365',
    '616c2d6563686f2072656164790d0a00',
  ].join(''),
  'hex',
);
// The whole line, so a mark taken after it excludes the banner's line end too.
const BANNER = 'vmseal-echo ready\r\n';

type After = { after: (fn: () => Promise<void> | void) => void };

interface Fixture {
  dir: string;
  kernel: string;
  initrd: string;
  /** Run dir base for the test; must be empty again when the test is done. */
  base: string;
}

async function fixture(t: After): Promise<Fixture> {
  // tmpfs when available: guest RAM is a shared file and should not be written back to disk.
  const root = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = await mkdtemp(path.join(root, 'vmseal-vm-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const kernel = path.join(dir, 'echo.bin');
  const initrd = path.join(dir, 'initrd.img');
  await writeFile(kernel, ECHO_KERNEL);
  await writeFile(initrd, 'not really an initrd');
  // A comma in the base exercises the option escaping of every path QEMU parses.
  const base = path.join(dir, 'runs,with,commas');
  return { dir, kernel, initrd, base };
}

async function startVm(t: After, f: Fixture, extra: Partial<Parameters<typeof QemuVm.start>[0]> = {}): Promise<QemuVm> {
  const vm = await QemuVm.start({ kernel: f.kernel, initrd: f.initrd, cmdline: 'console=ttyS0', memoryMiB: 64, runDirBase: f.base, ...extra });
  t.after(() => vm.stop({ graceMs: 1000 }));
  return vm;
}

/** Dead means no such pid, or a zombie waiting to be reaped by whoever inherited it. */
function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return true;
    throw err;
  }
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!isGone(pid)) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

async function entries(dir: string): Promise<string[]> {
  return existsSync(dir) ? readdir(dir) : [];
}

test('lifecycle: private run dir, guest RAM file, console, QMP control, reset, stop removes everything', { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const vm = await startVm(t, f, { name: 'lifecycle-test' });
  assert.equal(vm.accel, 'tcg');

  assert.equal(path.dirname(vm.runDir), f.base);
  assert.equal((await stat(vm.runDir)).mode & 0o777, 0o700);
  assert.equal((await stat(f.base)).mode & 0o777, 0o700);
  const ram = await stat(vm.memoryFile);
  assert.equal(ram.mode & 0o777, 0o600);
  assert.equal(ram.size, 64 * 1024 * 1024);
  // The sockets are unlinked once QEMU has connected: nothing else can reach them.
  assert.deepEqual(await readdir(vm.runDir), ['guest.ram']);
  assert.equal(readFileSync(`/proc/${vm.pid}/cmdline`, 'utf8').split('\0')[0], 'qemu-system-x86_64');

  await vm.console.waitFor(BANNER, 20_000);
  const mark = vm.console.mark();
  vm.console.write('ping one\n');
  assert.equal(await vm.console.waitFor(/ONE\r?\n/, 20_000, { since: mark }), 'PING ONE\n');
  // Output before the mark no longer matches.
  await assert.rejects(vm.console.waitFor(BANNER, 300, { since: mark }), /waited 300 ms for "vmseal-echo ready\\r\\n".*\n[^]*PING ONE/);

  assert.deepEqual(await vm.status(), { running: true, status: 'running' });
  const stopped = vm.qmp.waitForEvent('STOP', 10_000);
  await vm.pause();
  await stopped;
  assert.deepEqual(await vm.status(), { running: false, status: 'paused' });
  await vm.resume();
  assert.deepEqual(await vm.status(), { running: true, status: 'running' });

  // A host reset reboots the guest (QEMU runs without -no-reboot) ...
  let since = vm.console.mark();
  const hostReset = vm.qmp.waitForEvent('RESET', 10_000, (e) => e.data.guest === false);
  await vm.reset();
  await hostReset;
  await vm.console.waitFor(BANNER, 20_000, { since });
  // ... and so does a guest-initiated one.
  since = vm.console.mark();
  const guestReset = vm.qmp.waitForEvent('RESET', 10_000, (e) => e.data.guest === true);
  vm.console.write('~');
  await guestReset;
  await vm.console.waitFor(BANNER, 20_000, { since });
  assert.equal(isGone(vm.pid), false);

  // ACPI power button: this guest ignores it, so stop() has to quit QEMU itself.
  await vm.powerdown();
  const pid = vm.pid;
  await vm.stop({ graceMs: 2000 });
  assert.equal(await waitGone(pid, 5000), true);
  assert.equal(existsSync(vm.runDir), false);
  assert.deepEqual(await entries(f.base), []);
  await vm.stop(); // idempotent
  assert.equal(vm.qmp.closed, true);
  assert.throws(() => vm.console.write('x'), /closed/);
  assert.deepEqual(await vm.waitForExit(1000), { code: 0, signal: null });
});

test('a guest poweroff ends QEMU with status 0 and removes the run dir by itself', { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const vm = await startVm(t, f);
  await vm.console.waitFor(BANNER, 20_000);
  const shutdown = vm.qmp.waitForEvent('SHUTDOWN', 20_000);
  vm.console.write('!');
  assert.equal((await shutdown).data.reason, 'guest-shutdown');
  assert.deepEqual(await vm.waitForExit(20_000), { code: 0, signal: null });
  assert.equal(existsSync(vm.runDir), false);
  assert.deepEqual(await entries(f.base), []);
  await assert.rejects(vm.status(), /closed/);
});

test('the NBD disk is attached as a virtio-blk device on the given unix socket and export', { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const image = path.join(f.dir, 'disk.raw');
  await writeFile(image, Buffer.alloc(3 * 1024 * 1024));
  const socketPath = path.join(f.dir, 'nbd.sock');
  const exportName = 'export,with,commas';
  const nbd: ChildProcess = spawn('qemu-nbd', ['--socket', socketPath, '--export-name', exportName, '--format', 'raw', '--persistent', image], {
    stdio: 'ignore',
  });
  const nbdExited = new Promise((resolve) => nbd.once('close', resolve));
  t.after(async () => {
    nbd.kill('SIGKILL');
    await nbdExited;
  });
  for (let i = 0; !existsSync(socketPath); i++) {
    assert.ok(i < 200, 'qemu-nbd did not create its socket within 10 s');
    await new Promise((r) => setTimeout(r, 50));
  }

  const vm = await startVm(t, f, { disk: { socketPath, exportName } });
  const nodes = await vm.qmp.execute('query-named-block-nodes', undefined, {
    schema: z.array(z.object({ 'node-name': z.string(), drv: z.string(), image: z.object({ 'virtual-size': z.number() }) })),
  });
  const disk = nodes.find((n) => n['node-name'] === 'disk0');
  assert.ok(disk, JSON.stringify(nodes));
  assert.equal(disk.drv, 'nbd');
  assert.equal(disk.image['virtual-size'], 3 * 1024 * 1024);
  const devices = await vm.qmp.execute('query-block', undefined, {
    schema: z.array(z.object({ qdev: z.string().optional(), inserted: z.object({ 'node-name': z.string() }).optional() })),
  });
  assert.ok(devices.some((d) => d.inserted?.['node-name'] === 'disk0' && d.qdev?.includes('virtio')), JSON.stringify(devices));
  await vm.stop();
});

test('startup failures reject with QEMU stderr and leave nothing behind', { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const empty = path.join(f.dir, 'empty-kernel');
  await writeFile(empty, '');
  await assert.rejects(
    QemuVm.start({ kernel: empty, initrd: f.initrd, cmdline: '', memoryMiB: 32, runDirBase: f.base }),
    /QEMU exited with status 1 while waiting for .*\n[^]*could not load kernel/,
  );
  assert.deepEqual(await entries(f.base), []);

  await assert.rejects(
    QemuVm.start({
      kernel: f.kernel,
      initrd: f.initrd,
      cmdline: '',
      memoryMiB: 32,
      runDirBase: f.base,
      disk: { socketPath: path.join(f.dir, 'no-such-nbd.sock'), exportName: 'x' },
    }),
    /QEMU exited with status 1[^]*no-such-nbd\.sock/,
  );
  assert.deepEqual(await entries(f.base), []);

  await assert.rejects(
    QemuVm.start({ kernel: path.join(f.dir, 'missing'), initrd: f.initrd, cmdline: '', runDirBase: f.base }),
    /kernel .*missing cannot be read/,
  );
  await assert.rejects(QemuVm.start({ kernel: f.dir, initrd: f.initrd, cmdline: '', runDirBase: f.base }), /is not a regular file/);
  assert.deepEqual(await entries(f.base), []);
});

test('hostile options are refused before anything starts', { timeout: 20_000 }, async (t) => {
  const f = await fixture(t);
  const base = { kernel: f.kernel, initrd: f.initrd, cmdline: '', runDirBase: f.base };
  await assert.rejects(QemuVm.start({ ...base, memoryMiB: 1.5 }), /invalid QemuVm options: memoryMiB/);
  await assert.rejects(QemuVm.start({ ...base, cpus: 0 }), /cpus/);
  await assert.rejects(QemuVm.start({ ...base, name: 'a b,c' }), /name/);
  await assert.rejects(QemuVm.start({ ...base, cmdline: 'quiet\ninit=/bin/sh' }), /cmdline: must not contain control characters/);
  await assert.rejects(QemuVm.start({ ...base, disk: { socketPath: '/x', exportName: 'a\0b' } }), /disk\.exportName/);
  await assert.rejects(QemuVm.start({ ...base, accel: 'xen' as 'tcg' }), /accel/);
  assert.equal(existsSync(f.base), false);

  // A run dir base owned by someone else is refused.
  const foreign = path.join(f.dir, 'foreign');
  await mkdir(foreign);
  const { chown } = await import('node:fs/promises');
  await chown(foreign, 65534, 65534);
  await assert.rejects(QemuVm.start({ ...base, runDirBase: foreign }), /owned by uid 65534/);
});

test("accel 'kvm' runs under KVM when the probe passes and fails clearly when it does not", { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const probe = await probeKvm();
  if (probe.usable) {
    const vm = await startVm(t, f, { accel: 'kvm' });
    assert.equal(vm.accel, 'kvm');
    assert.ok(readFileSync(`/proc/${vm.pid}/cmdline`, 'utf8').split('\0').includes('kvm'));
    // Not waiting for the banner: the probe already proved KVM runs code, and how fast this
    // host's KVM gets through SeaBIOS is the machine's business (5-10 s here, TCG: ~0.1 s).
    assert.equal((await vm.status()).running, true);
    await vm.stop();
  } else {
    await assert.rejects(startVm(t, f, { accel: 'kvm' }), /KVM was requested but is not usable on this host/);
  }
  assert.deepEqual(await entries(f.base), []);
});

test('serial console: split UTF-8, marks, bounded transcript, close rejects waiters', { timeout: 20_000 }, async (t) => {
  const f = await fixture(t);
  const listener = await OneShotListener.listen(path.join(f.dir, 'console.sock'));
  t.after(() => listener.close());
  const guest = net.connect(listener.path);
  t.after(() => guest.destroy());
  const console = new SerialConsole(await listener.accept(), { transcriptChars: 1000, diagnostics: () => 'QEMU stderr: test' });
  t.after(() => console.close());
  const received: string[] = [];
  console.on('data', (s: string) => received.push(s));

  // "ü" split across two writes still decodes as one character; the match spans both chunks.
  const euro = Buffer.from('grüße €\n');
  const first = console.waitFor('grüße €', 5000);
  guest.write(euro.subarray(0, 3));
  await new Promise((r) => setTimeout(r, 20));
  guest.write(euro.subarray(3));
  assert.equal(await first, 'grüße €');
  assert.equal(received.join(''), 'grüße €\n');

  // Input written by the runner reaches the peer.
  const input = new Promise<string>((resolve) => guest.once('data', (d) => resolve(d.toString())));
  console.write('ls /\n');
  assert.equal(await input, 'ls /\n');

  // A mark excludes earlier output; a regex with /g behaves the same on every scan.
  const mark = console.mark();
  const later = console.waitFor(/\$ $/g, 5000, { since: mark });
  guest.write('bin etc\n$ ');
  assert.equal(await later, 'bin etc\n$ ');
  assert.equal(console.text(mark), 'bin etc\n$ ');

  // Hostile volume: 5000 chars through a 1000-char transcript keeps only the tail, with absolute positions.
  const before = console.mark();
  const flood = console.waitFor('END', 5000, { since: before });
  guest.write(`${'x'.repeat(5000)}END`);
  const got = await flood;
  assert.ok(got.endsWith('xEND') && got.length <= 1250, `kept ${got.length} chars`);
  assert.equal(console.mark(), before + 5003);
  assert.ok(console.text().length <= 1250);

  // Timeouts say what was awaited and show recent output (terminal escapes defused) and the diagnostics.
  const escaped = console.mark();
  const sent = console.waitFor('[2J', 5000, { since: escaped });
  guest.write('\x1b[2J');
  await sent;
  await assert.rejects(console.waitFor('never', 50, { since: escaped }), (err: Error) => {
    assert.match(err.message, /^waited 50 ms for "never"[^]*\\x1b\[2J\nQEMU stderr: test$/);
    assert.equal(err.message.includes('\x1b'), false);
    return true;
  });
  // The peer going away rejects pending waits; writing afterwards throws.
  const pending = console.waitFor('never', 5000);
  guest.end('last words');
  await assert.rejects(pending, /serial console closed[^]*last words/);
  assert.equal(console.closed, true);
  assert.throws(() => console.write('x'), /closed/);
});

test('runCleanups runs newest first, reports errors, and gives up on a hung cleanup', { timeout: 20_000 }, async () => {
  const order: string[] = [];
  registerCleanup(() => {
    order.push('first');
  });
  const unregister = registerCleanup(() => {
    order.push('unregistered');
  });
  registerCleanup(() => new Promise<void>(() => order.push('hangs')));
  registerCleanup(() => {
    order.push('throws');
    throw new Error('expected test failure');
  });
  unregister();
  await runCleanups(500);
  assert.deepEqual(order, ['throws', 'hangs']);
  await runCleanups(500); // the registry is empty now
  assert.deepEqual(order, ['throws', 'hangs']);
});

/**
 * Runs a monitor-like child that starts a VM and reports {pid, runDir}. In 'exit' mode it calls
 * process.exit(0) when it reads a line on stdin; in 'wait' mode it runs until signalled.
 */
async function childWithVm(t: After, f: Fixture, mode: 'wait' | 'exit'): Promise<{ child: ChildProcess; pid: number; runDir: string; done: Promise<[number | null, string | null]> }> {
  const script = path.join(f.dir, 'monitor-child.mts');
  await writeFile(
    script,
    `import { QemuVm } from ${JSON.stringify(QEMU_VM_MODULE)};
const [kernel, initrd, runDirBase, mode] = process.argv.slice(2);
const vm = await QemuVm.start({ kernel, initrd, cmdline: '', memoryMiB: 32, runDirBase });
await vm.console.waitFor('ready', 20000);
process.stdout.write(JSON.stringify({ pid: vm.pid, runDir: vm.runDir }) + '\\n');
if (mode === 'exit') process.stdin.once('data', () => process.exit(0));
else setInterval(() => undefined, 1000);
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script, f.kernel, f.initrd, f.base, mode], {
    cwd: REPO_ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const done = new Promise<[number | null, string | null]>((resolve) => child.once('close', (code, signal) => resolve([code, signal])));
  t.after(async () => {
    child.kill('SIGKILL');
    await done;
  });
  let stdout = '';
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child did not report its VM within 30 s; stderr: ${stderr}`)), 30_000);
    child.stdout?.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      const nl = stdout.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(stdout.slice(0, nl));
      }
    });
    void done.then(() => {
      clearTimeout(timer);
      reject(new Error(`child exited early; stderr: ${stderr}`));
    });
  });
  const { pid, runDir } = z.object({ pid: z.number(), runDir: z.string() }).parse(JSON.parse(line));
  assert.equal(isGone(pid), false);
  assert.equal(existsSync(path.join(runDir, 'guest.ram')), true);
  return { child, pid, runDir, done };
}

for (const [signal, code] of [
  ['SIGTERM', 143],
  ['SIGINT', 130],
] as const) {
  test(`${signal} to the monitor stops QEMU and removes its run dir, exit status ${code}`, { timeout: 60_000 }, async (t) => {
    const f = await fixture(t);
    const { child, pid, runDir, done } = await childWithVm(t, f, 'wait');
    child.kill(signal);
    assert.deepEqual(await done, [code, null]);
    assert.equal(await waitGone(pid, 5000), true);
    assert.equal(existsSync(runDir), false);
    assert.deepEqual(await entries(f.base), []);
  });
}

test('a plain process.exit still kills QEMU and removes the run dir', { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const { child, pid, runDir, done } = await childWithVm(t, f, 'exit');
  child.stdin?.write('exit now\n');
  assert.deepEqual(await done, [0, null]);
  assert.equal(await waitGone(pid, 5000), true);
  assert.equal(existsSync(runDir), false);
});

test('a SIGKILLed monitor still takes QEMU down (parent-death signal)', { timeout: 60_000 }, async (t) => {
  const f = await fixture(t);
  const { child, pid, done } = await childWithVm(t, f, 'wait');
  child.kill('SIGKILL');
  assert.deepEqual(await done, [null, 'SIGKILL']);
  assert.equal(await waitGone(pid, 5000), true);
  // No code runs in a SIGKILLed process, so its run dir stays; the fixture removes it.
});
