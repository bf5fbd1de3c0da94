import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bundleProgram } from '../../src/ids/enclave/bundle.ts';
import { spawnSandboxed } from '../../src/ids/enclave/sandbox.ts';

const PROBE = fileURLToPath(new URL('./fixtures/sandbox-probe.ts', import.meta.url));
const cacheDir = process.env.VMSEAL_CACHE ?? join(tmpdir(), 'vmseal-test-cache');

test('inside the enclave sandbox: no file read outside the bundle, no write, no child process, no TCP', async () => {
  let accepted = 0;
  const server = createServer((s) => {
    accepted += 1;
    s.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const writePath = join(tmpdir(), `vmseal-probe-${process.pid}`);
  try {
    const bundle = await bundleProgram({ entry: PROBE, cacheDir });
    const { child, netns } = spawnSandboxed(bundle.path);
    assert.equal(netns, true, 'this machine can make a network namespace (root or user namespaces)');
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    child.stdin.write(`${JSON.stringify({ port, readPath: '/etc/hostname', writePath })}\n`);
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0);
    const r = JSON.parse(out) as Record<string, string>;
    assert.equal(r.ownBundle, 'allowed', 'the program can read its own bundle');
    assert.equal(r.read, 'denied: ERR_ACCESS_DENIED');
    assert.equal(r.write, 'denied: ERR_ACCESS_DENIED');
    assert.equal(r.child, 'denied: ERR_ACCESS_DENIED');
    assert.match(r.net ?? '', /^denied: (ENETUNREACH|ECONNREFUSED|EACCES)/);
    assert.equal(accepted, 0, 'the listening port saw no connection');
    assert.equal(existsSync(writePath), false);
    // The same probe outside the sandbox does reach the port: the test can tell the difference.
    const { connect } = await import('node:net');
    await new Promise<void>((resolve, reject) => connect({ host: '127.0.0.1', port }).once('connect', resolve).once('error', reject));
  } finally {
    server.close();
  }
});
