/**
 * The README's "whole cloud on one machine, by hand", as users type it: every party a separate
 * `vmseal` process, the tenant launching, commanding and using the sealed console, and refusals
 * showing their code.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { buildGuest } from '../../src/guest/build.ts';

const BIN = resolve('bin/vmseal.js');

function vmseal(args: string[], input?: string, timeoutMs = 120_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', fail);
    child.on('close', (status) => {
      clearTimeout(timer);
      done({ status, stdout, stderr });
    });
    if (input !== undefined) child.stdin.end(input);
    else child.stdin.end();
  });
}

/** Starts a long-running `vmseal` service and resolves with the first stdout line matching `ready`. */
function service(t: TestContext, args: string[], ready: RegExp): Promise<string> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise((r) => child.on('exit', r));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
      child.kill('SIGKILL');
    }
  });
  let out = '';
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`${args.join(' ')} did not start; stderr: ${err}`)), 60_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        done(m[1] ?? m[0]);
      }
    });
    child.on('exit', (code) => fail(new Error(`${args.join(' ')} exited ${code}; stderr: ${err}`)));
  });
}

test('every party as its own vmseal process: launch, sealed commands, sealed console, refusals by name', { timeout: 600_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-cli-cloud-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const at = (p: string) => join(dir, p);
  const guest = await buildGuest();

  assert.equal((await vmseal(['authority', 'init', '--dir', at('ca')])).status, 0);
  const enrolled = await vmseal(['authority', 'enroll-host', '--dir', at('ca'), '--host-id', 'host-1']);
  const token = enrolled.stdout.trim().split('\n').pop()!;
  const authority = await service(t, ['authority', 'run', '--dir', at('ca'), '--port', '0'], /listening on (http:\S+)/);
  const init = await vmseal(['host', 'init', '--dir', at('host'), '--authority', authority, '--host-id', 'host-1', '--token', token]);
  assert.equal(init.status, 0, init.stderr);
  await service(t, ['host', 'run', '--dir', at('host'), '--storage', at('storage'), '--memory', '256'], /listening on (\S+)/);
  const mgmt = await service(t, ['mgmt', 'run', '--dir', at('storage'), '--monitor', at('host/monitor.sock'), '--port', '0'], /listening on (http:\S+)/);
  assert.equal((await vmseal(['tenant', 'init', '--dir', at('tenant'), '--authority', authority])).status, 0);

  writeFileSync(at('pass.txt'), 'cli passphrase');
  const sealed = await vmseal(['image', 'seal', '--in', guest.disk, '--out', at('web.img'), '--passphrase-file', at('pass.txt'), '--pbkdf', 'pbkdf2']);
  assert.equal(sealed.status, 0, sealed.stderr);
  assert.match(sealed.stdout, /integrity sidecar .*web\.img\.integrity, root [0-9a-f]{64}/);

  const wrongPass = at('wrong.txt');
  writeFileSync(wrongPass, 'not it');
  const refusedLaunch = await vmseal(['vm', 'launch', 'web', '--dir', at('tenant'), '--mgmt', mgmt, '--image', at('web.img'), '--passphrase-file', wrongPass]);
  assert.notEqual(refusedLaunch.status, 0);
  assert.match(refusedLaunch.stderr, /passphrase/i);

  const launched = await vmseal(['vm', 'launch', 'web', '--dir', at('tenant'), '--mgmt', mgmt, '--image', at('web.img'), '--passphrase-file', at('pass.txt')]);
  assert.equal(launched.status, 0, launched.stderr);
  assert.match(launched.stdout, /launched web: VM [0-9a-f]{32} on host host-1 \(identity proof verified\)/);

  // `vm launch` returns once QEMU runs, not once the guest's shell does: input typed before the shell
  // reads ttyS0 is lost, so type again until the answer comes back (the guest boots slower under load).
  let consoleRun = await vmseal(['vm', 'console', 'web', '--dir', at('tenant')], 'echo cli-console-$((20+22))\n', 300_000);
  for (let attempt = 1; attempt < 10 && !/cli-console-42/.test(consoleRun.stdout); attempt++) {
    assert.equal(consoleRun.status, 0, consoleRun.stderr);
    consoleRun = await vmseal(['vm', 'console', 'web', '--dir', at('tenant')], 'echo cli-console-$((20+22))\n', 300_000);
  }
  assert.equal(consoleRun.status, 0, consoleRun.stderr);
  assert.match(consoleRun.stdout, /cli-console-42/);

  for (const [op, state] of [['pause', 'paused'], ['resume', 'running'], ['status', 'running']] as const) {
    const r = await vmseal(['vm', op, 'web', '--dir', at('tenant')]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`web: ${op} done; state ${state} \\(sealed result #\\d+ verified\\)`));
  }
  const unknown = await vmseal(['vm', 'status', 'nope', '--dir', at('tenant')]);
  assert.notEqual(unknown.status, 0);
  assert.match(unknown.stderr, /no VM named nope/);

  const off = await vmseal(['vm', 'poweroff', 'web', '--dir', at('tenant')]);
  assert.equal(off.status, 0, off.stderr);
  assert.match(off.stdout, /state shutdown/);
});
