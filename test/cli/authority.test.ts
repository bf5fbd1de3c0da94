/**
 * Host keys and the CA end to end, as users run them: `vmseal authority init`, `enroll-host` and `run`
 * (a real loopback listener), `vmseal host init` and `vmseal tenant init`, each a separate process.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createCa, issueHostCertificate } from '../../src/authority/ca.ts';
import { HostCertificateError, verifyHostCertificate } from '../../src/client/host-cert.ts';
import { loadTenantState, verifyHostForTenant } from '../../src/client/tenant-state.ts';
import { loadHostKeys } from '../../src/monitor/state/host-keys.ts';

const BIN = resolve('bin/vmseal.js');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `vmseal args…` to completion (killed after 60 s so a hang fails the test). */
function vmseal(args: string[]): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', fail);
    child.on('close', (status) => {
      clearTimeout(timer);
      done({ status, stdout, stderr });
    });
  });
}

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

/** Starts `vmseal authority run --port 0` and returns its URL, parsed from what it prints. */
async function startAuthority(t: TestContext, dir: string): Promise<{ url: string; child: ChildProcess; exited: Promise<number | null>; stderr: () => string }> {
  const child = spawn(process.execPath, [BIN, 'authority', 'run', '--dir', dir, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  let out = '';
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const url = await new Promise<string>((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`authority did not start; stderr: ${err}`)), 30_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /authority listening on (http:\/\/127\.0\.0\.1:\d+)\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        done(m[1]!);
      }
    });
    child.on('exit', (code) => fail(new Error(`authority exited ${code}; stderr: ${err}`)));
  });
  return { url, child, exited, stderr: () => err };
}

test('authority init → enroll-host → run → host init → tenant init, with fingerprints and permissions checked', { timeout: 180_000 }, async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'vmseal-cli-authority-'));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const authorityDir = join(base, 'authority');
  const hostDir = join(base, 'host');
  const tenantDir = join(base, 'tenant');

  const init = await vmseal(['authority', 'init', '--dir', authorityDir]);
  assert.equal(init.status, 0, init.stderr);
  const fingerprint = /CA fingerprint \(SHA-256\): ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})/.exec(init.stdout)?.[1];
  assert.ok(fingerprint, init.stdout);
  assert.equal(mode(authorityDir), 0o700);
  assert.equal(mode(join(authorityDir, 'ca')), 0o700);
  assert.equal(mode(join(authorityDir, 'ca', 'key.pem')), 0o600);
  const again = await vmseal(['authority', 'init', '--dir', authorityDir]);
  assert.notEqual(again.status, 0);
  assert.match(again.stderr, /not empty/);

  const enroll = await vmseal(['authority', 'enroll-host', '--dir', authorityDir, '--host-id', 'host-a']);
  assert.equal(enroll.status, 0, enroll.stderr);
  const token = enroll.stdout.trim();
  assert.match(token, /^[A-Za-z0-9_-]{43}$/);
  const badHost = await vmseal(['authority', 'enroll-host', '--dir', authorityDir, '--host-id', 'no/slash']);
  assert.notEqual(badHost.status, 0);

  const authority = await startAuthority(t, authorityDir);
  const caPem = readFileSync(join(authorityDir, 'ca', 'cert.pem'), 'utf8');

  // A host that insists on another CA fingerprint enrolls nothing and writes no keys.
  const wrongFp = fingerprint.replace(/^../, fingerprint.startsWith('00') ? '11' : '00');
  const refused = await vmseal(['host', 'init', '--dir', hostDir, '--authority', authority.url, '--host-id', 'host-a', '--token', token, '--ca-fingerprint', wrongFp]);
  assert.notEqual(refused.status, 0);
  assert.match(refused.stderr, /fingerprint/);
  assert.equal(existsSync(hostDir), false);

  const host = await vmseal(['host', 'init', '--dir', hostDir, '--authority', authority.url, '--host-id', 'host-a', '--token', token, '--ca-fingerprint', fingerprint.toLowerCase()]);
  assert.equal(host.status, 0, host.stderr);
  assert.match(host.stdout, /host host-a enrolled/);
  assert.equal(mode(hostDir), 0o700);
  assert.equal(mode(join(hostDir, 'hpke-private.pem')), 0o600);
  const keys = await loadHostKeys(hostDir);
  assert.ok(keys.certificatePem);
  assert.deepEqual(verifyHostCertificate(keys.certificatePem, caPem, { expectedHostId: 'host-a' }).hpkePublicKey, keys.publicKey);

  // The authority publishes exactly that certificate.
  const published = await fetch(`${authority.url}/v1/hosts/host-a/certificate`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(published.status, 200);
  assert.equal((await published.json()).certificate, keys.certificatePem);

  // Existing certified keys are not overwritten, and the used token cannot enroll another key.
  const rerun = await vmseal(['host', 'init', '--dir', hostDir, '--authority', authority.url, '--host-id', 'host-a', '--token', token]);
  assert.notEqual(rerun.status, 0);
  assert.match(rerun.stderr, /already holds certified keys/);
  assert.deepEqual((await loadHostKeys(hostDir)).privateKey, keys.privateKey);
  const reuse = await vmseal(['host', 'init', '--dir', join(base, 'host2'), '--authority', authority.url, '--host-id', 'host-a', '--token', token]);
  assert.notEqual(reuse.status, 0);
  assert.match(reuse.stderr, /TOKEN_USED/);

  // A tenant pinning the wrong fingerprint saves nothing; the right one pins the CA.
  const wrongTenant = await vmseal(['tenant', 'init', '--dir', tenantDir, '--authority', authority.url, '--ca-fingerprint', wrongFp]);
  assert.notEqual(wrongTenant.status, 0);
  assert.match(wrongTenant.stderr, /CA fingerprint mismatch.*nothing was saved/);
  assert.equal(existsSync(join(tenantDir, 'tenant.json')), false);

  const tenant = await vmseal(['tenant', 'init', '--dir', tenantDir, '--authority', authority.url, '--ca-fingerprint', fingerprint]);
  assert.equal(tenant.status, 0, tenant.stderr);
  assert.match(tenant.stdout, new RegExp(fingerprint));
  assert.equal(mode(tenantDir), 0o700);
  assert.equal(mode(join(tenantDir, 'tenant.json')), 0o600);
  assert.equal((await loadTenantState(tenantDir)).authority.caCertificatePem, caPem);

  // Trust on first use says so.
  const tofu = await vmseal(['tenant', 'init', '--dir', join(base, 'tofu'), '--authority', authority.url]);
  assert.equal(tofu.status, 0, tofu.stderr);
  assert.match(tofu.stderr, /trusted on first use.*out of band/);
  const twice = await vmseal(['tenant', 'init', '--dir', join(base, 'tofu'), '--authority', authority.url]);
  assert.notEqual(twice.status, 0);
  assert.match(twice.stderr, /already holds tenant state/);

  // The tenant accepts the host's certificate, whichever way it arrives, and not one from another authority.
  assert.deepEqual((await verifyHostForTenant(tenantDir, keys.certificatePem, 'host-a')).hpkePublicKey, keys.publicKey);
  const rogue = await createCa({ commonName: 'vmseal provider CA' });
  const forged = await issueHostCertificate(rogue, { hostId: 'host-a', hpkePublicKey: keys.publicKey, validityDays: 30 });
  await assert.rejects(verifyHostForTenant(tenantDir, forged, 'host-a'), (err: unknown) => err instanceof HostCertificateError && err.code === 'BAD_SIGNATURE');

  // Unreachable authority: a clear error.
  const down = await vmseal(['tenant', 'init', '--dir', join(base, 'down'), '--authority', 'http://127.0.0.1:1']);
  assert.notEqual(down.status, 0);
  assert.match(down.stderr, /cannot reach the authority/);

  authority.child.kill('SIGTERM');
  assert.equal(await authority.exited, 0);
  assert.match(authority.stderr(), /authority stopped/);
});

test('authority run and enroll-host refuse a directory without a CA; bad options are one clear error', { timeout: 60_000 }, async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'vmseal-cli-authority-'));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const run = await vmseal(['authority', 'run', '--dir', base, '--port', '0']);
  assert.notEqual(run.status, 0);
  assert.match(run.stderr, /holds no authority/);
  const enroll = await vmseal(['authority', 'enroll-host', '--dir', base, '--host-id', 'h']);
  assert.notEqual(enroll.status, 0);
  assert.match(enroll.stderr, /holds no authority/);
  const port = await vmseal(['authority', 'run', '--dir', base, '--port', '70000']);
  assert.match(port.stderr, /--port must be a whole number/);
  const url = await vmseal(['tenant', 'init', '--dir', join(base, 't'), '--authority', 'file:///etc/passwd']);
  assert.notEqual(url.status, 0);
  assert.match(url.stderr, /must be http or https/);
  assert.equal(existsSync(join(base, 't')), false);
});
