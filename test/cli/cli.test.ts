/** The `vmseal` command as users run it: help, party groups, and booting a VM from a plain disk. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { buildGuest } from '../../src/guest/build.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { readGuestFile } from '../../src/guest/disk-inspect.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';

const BIN = path.resolve('bin/vmseal.js');

function vmseal(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
}

test('vmseal --help lists a command group for every party and the demo', () => {
  const r = vmseal(['--help']);
  assert.equal(r.status, 0, r.stderr);
  for (const cmd of ['host', 'mgmt', 'tenant', 'ids', 'authority', 'demo', 'disk', 'guest']) {
    assert.match(r.stdout, new RegExp(`^\\s+${cmd}\\b`, 'm'), `${cmd} is listed`);
  }
});

test('every party group lists its subcommands', () => {
  const expected: Record<string, string[]> = { ids: ['profile', 'config', 'measure', 'run', 'pslist'], attest: ['quote', 'watch', 'verify', 'policy'] };
  for (const [group, subs] of Object.entries(expected)) {
    const r = vmseal([group, '--help']);
    assert.equal(r.status, 0, r.stderr);
    for (const sub of subs) assert.match(r.stdout, new RegExp(`^\\s+${sub}\\b`, 'm'), `${group} ${sub} is listed`);
  }
});

test('bad options give one clear error line and a non-zero exit', () => {
  const r = vmseal(['host', 'boot', '--disk', '/nonexistent/disk.raw', '--kernel', 'k', '--initrd', 'i', '--cmdline', '', '--accel', 'warp']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--accel must be tcg, kvm or auto/);
  const missing = vmseal(['host', 'boot', '--disk', '/nonexistent/disk.raw', '--kernel', 'k', '--initrd', 'i', '--cmdline', '']);
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /^vmseal: .*nonexistent/m);
});

test('vmseal host boot runs the guest with its console on stdio until the guest powers off', { timeout: 240_000 }, async (t) => {
  const guest = await buildGuest();
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const child = spawn(process.execPath, [BIN, 'host', 'boot', '--disk', disk.path], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));

  const deadline = Date.now() + 180_000;
  while (!out.includes(GUEST_READY_MARKER)) {
    if (Date.now() > deadline || child.exitCode !== null) assert.fail(`no ready marker; stderr: ${err.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  child.stdin.write('echo cli-was-here > /root/cli.txt; sync; poweroff\n');
  assert.equal(await exited, 0, `exit status; stderr: ${err.slice(-2000)}`);
  assert.match(err, /QEMU exited \(code 0\)/);
  assert.equal((await readGuestFile(disk.path, '/root/cli.txt')).toString(), 'cli-was-here\n');
});
