import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { spawnQemu } from '../../src/monitor/vm/qemu-process.ts';
import { QmpClient, QmpClosedError, QmpError, QmpProtocolError, QmpTimeoutError } from '../../src/monitor/vm/qmp-client.ts';
import { OneShotListener } from '../../src/monitor/vm/unix-listener.ts';

const GREETING = JSON.stringify({
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: ['oob'] },
});

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmseal-qmp-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A real QEMU, paused before the guest runs (-S), whose QMP connects to a socket we listen on. */
async function startRealQemu(t: { after: (fn: () => Promise<void>) => void }): Promise<{ qmp: QmpClient; exited: Promise<unknown> }> {
  const dir = await tempDir(t);
  const listener = await OneShotListener.listen(path.join(dir, 'qmp.sock'));
  t.after(async () => listener.close());
  const child = spawnQemu([
    '-M', 'q35', '-nodefaults', '-no-user-config', '-display', 'none', '-S', '-accel', 'tcg',
    '-chardev', `socket,id=qmp,path=${listener.path},server=off`, '-mon', 'chardev=qmp,mode=control',
  ]);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise((resolve) => child.once('close', resolve));
  t.after(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  const socket = await Promise.race([
    listener.accept(),
    exited.then(() => {
      throw new Error(`QEMU exited before connecting: ${stderr}`);
    }),
  ]);
  const qmp = await QmpClient.open(socket, { timeoutMs: 10_000 });
  t.after(async () => qmp.close());
  return { qmp, exited };
}

type FakeHandler = (sock: net.Socket, msg: { execute: string; id?: string; arguments?: unknown }) => void;

/**
 * A fake QMP server: sends `greeting` (raw text) on connect, answers qmp_capabilities, and hands
 * every later command to `onCommand`.
 */
async function fakeServer(
  t: { after: (fn: () => Promise<void>) => void },
  onCommand: FakeHandler,
  greeting: string = `${GREETING}\r\n`,
): Promise<string> {
  const dir = await tempDir(t);
  const sockPath = path.join(dir, 'fake.sock');
  const conns = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    conns.add(sock);
    sock.on('error', () => undefined);
    sock.write(greeting);
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id?: string };
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') sock.write(`${JSON.stringify({ return: {}, id: msg.id })}\r\n`);
        else onCommand(sock, msg);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(sockPath, resolve));
  t.after(async () => {
    for (const c of conns) c.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return sockPath;
}

async function connect(sockPath: string): Promise<net.Socket> {
  const sock = net.connect(sockPath);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  return sock;
}

async function openFake(t: { after: (fn: () => Promise<void>) => void }, onCommand: FakeHandler): Promise<QmpClient> {
  const qmp = await QmpClient.open(await connect(await fakeServer(t, onCommand)), { timeoutMs: 5000 });
  t.after(async () => qmp.close());
  return qmp;
}

test('real QEMU: negotiation, query-status, stop/cont with STOP/RESUME events', { timeout: 30_000 }, async (t) => {
  const { qmp } = await startRealQemu(t);
  assert.equal(qmp.greeting.version.qemu.major >= 7, true);

  const status = z.object({ running: z.boolean(), status: z.string() });
  assert.deepEqual(await qmp.execute('query-status', undefined, { schema: status }), { running: false, status: 'prelaunch' });

  const events: string[] = [];
  qmp.on('event', (e: { event: string }) => events.push(e.event));
  const resumed = qmp.waitForEvent('RESUME', 10_000);
  await qmp.execute('cont');
  const resume = await resumed;
  assert.equal(typeof resume.timestamp.seconds, 'number');
  assert.equal((await qmp.execute('query-status', undefined, { schema: status })).status, 'running');

  const stopped = qmp.waitForEvent('STOP', 10_000);
  await qmp.execute('stop');
  await stopped;
  assert.deepEqual(await qmp.execute('query-status', undefined, { schema: status }), { running: false, status: 'paused' });
  assert.deepEqual(events, ['RESUME', 'STOP']);

  // Pipelined commands are matched to their replies by id, not by order of awaiting.
  const [a, b] = await Promise.all([qmp.execute('query-status'), qmp.execute('query-name')]);
  assert.equal((a as { status: string }).status, 'paused');
  assert.deepEqual(b, {});
});

test('real QEMU: QEMU errors become typed QmpError; a wrong schema is a QmpProtocolError', { timeout: 30_000 }, async (t) => {
  const { qmp } = await startRealQemu(t);
  await assert.rejects(qmp.execute('no-such-command'), (err: unknown) => {
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'CommandNotFound');
    assert.equal(err.command, 'no-such-command');
    assert.match(err.desc, /no-such-command/);
    return true;
  });
  await assert.rejects(qmp.execute('stop', { bogus: 1 }), (err: unknown) => {
    assert.ok(err instanceof QmpError);
    assert.equal(err.errorClass, 'GenericError');
    assert.match(err.desc, /bogus/);
    return true;
  });
  await assert.rejects(qmp.execute('query-status', undefined, { schema: z.object({ running: z.string() }) }), QmpProtocolError);
  await assert.rejects(qmp.execute('bad name!'), TypeError);
  // None of that broke the connection.
  assert.equal(qmp.closed, false);
  assert.equal(((await qmp.execute('query-status')) as { status: string }).status, 'prelaunch');
});

test('real QEMU: quit closes the client and later calls reject with QmpClosedError', { timeout: 30_000 }, async (t) => {
  const { qmp, exited } = await startRealQemu(t);
  const closed = new Promise<Error>((resolve) => qmp.once('close', resolve));
  const event = qmp.waitForEvent('NEVER_SENT', 10_000);
  await qmp.execute('quit').catch((err: unknown) => assert.ok(err instanceof QmpClosedError));
  assert.ok((await closed) instanceof QmpClosedError);
  await assert.rejects(event, QmpClosedError);
  await assert.rejects(qmp.execute('query-status'), QmpClosedError);
  await exited;
});

test('timeout: an unanswered command rejects, its late reply is dropped, the client keeps working', { timeout: 20_000 }, async (t) => {
  let held: { sock: net.Socket; id: string | undefined } | null = null;
  const qmp = await openFake(t, (sock, msg) => {
    if (msg.execute === 'slow') held = { sock, id: msg.id };
    else sock.write(`${JSON.stringify({ return: { echo: msg.execute }, id: msg.id })}\r\n`);
  });
  await assert.rejects(qmp.execute('slow', undefined, { timeoutMs: 200 }), (err: unknown) => {
    assert.ok(err instanceof QmpTimeoutError);
    assert.match(err.message, /'slow'.*200 ms/);
    return true;
  });
  assert.ok(held);
  const late = held as { sock: net.Socket; id: string | undefined };
  late.sock.write(`${JSON.stringify({ return: {}, id: late.id })}\r\n`);
  assert.deepEqual(await qmp.execute('fast'), { echo: 'fast' });
  assert.equal(qmp.closed, false);
  await assert.rejects(qmp.waitForEvent('STOP', 100), QmpTimeoutError);
});

test('partial lines and several messages per chunk are reassembled; events are emitted by name', { timeout: 20_000 }, async (t) => {
  const qmp = await openFake(t, (sock, msg) => {
    const event = (name: string, data: object) =>
      JSON.stringify({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } });
    const all = `${event('RESET', { guest: false })}\r\n${event('STOP', {})}\r\n${JSON.stringify({ return: 42, id: msg.id })}\r\n`;
    // One byte at a time for the first part, then the rest in one chunk.
    for (const ch of all.slice(0, 30)) sock.write(ch);
    sock.write(all.slice(30));
  });
  const seen: string[] = [];
  qmp.on('event', (e: { event: string }) => seen.push(e.event));
  const reset = qmp.waitForEvent('RESET', 5000, (e) => e.data.guest === false);
  assert.equal(await qmp.execute('go'), 42);
  assert.deepEqual((await reset).data, { guest: false });
  assert.deepEqual(seen, ['RESET', 'STOP']);
});

test('garbage from the peer rejects pending calls with QmpProtocolError and closes the client', { timeout: 20_000 }, async (t) => {
  for (const garbage of ['this is not json', '[1,2,3]', '{"return": {}}', '{"return": {}, "id": "vmseal-999"}', '{"event": "lower", "timestamp": {"seconds": 1, "microseconds": 1}}', '{"something": 1}']) {
    const qmp = await openFake(t, (sock) => sock.write(`${garbage}\r\n`));
    const closed = new Promise<Error>((resolve) => qmp.once('close', resolve));
    await assert.rejects(qmp.execute('anything'), QmpProtocolError, garbage);
    assert.ok((await closed) instanceof QmpProtocolError);
    assert.equal(qmp.closed, true);
    await assert.rejects(qmp.execute('again'), QmpProtocolError);
  }
});

test('an endless line is refused instead of buffered without bound', { timeout: 20_000 }, async (t) => {
  const qmp = await openFake(t, (sock) => {
    const chunk = Buffer.alloc(1024 * 1024, 0x20);
    for (let i = 0; i < 17; i++) sock.write(chunk);
  });
  await assert.rejects(qmp.execute('anything'), /longer than/);
});

test('a bad or missing greeting fails open()', { timeout: 20_000 }, async (t) => {
  const garbage = await fakeServer(t, () => undefined, 'hello\r\n');
  await assert.rejects(QmpClient.open(await connect(garbage), { timeoutMs: 5000 }), QmpProtocolError);
  const silent = await fakeServer(t, () => undefined, '');
  await assert.rejects(QmpClient.open(await connect(silent), { timeoutMs: 200 }), /no QMP greeting within 200 ms/);
});

test('a closed socket rejects pending calls and event waits with QmpClosedError', { timeout: 20_000 }, async (t) => {
  const qmp = await openFake(t, (sock) => sock.destroy());
  const waiting = qmp.waitForEvent('SHUTDOWN', 5000);
  await assert.rejects(qmp.execute('anything'), QmpClosedError);
  await assert.rejects(waiting, QmpClosedError);

  const other = await openFake(t, () => undefined);
  const pending = other.execute('never-answered', undefined, { timeoutMs: 5000 });
  other.close();
  await assert.rejects(pending, QmpClosedError);
});
