// Test harness: a real swtpm on TCP, a recording proxy between tpm2-tools and it, and a raw client
// that sends our own command bytes.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { splitMessages } from '../../../src/formats/tpm2/index.ts';

const run = promisify(execFile);

async function portPairFree(p: number): Promise<boolean> {
  const tryOne = (port: number) =>
    new Promise<Server | undefined>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(undefined));
      s.listen(port, '127.0.0.1', () => resolve(s));
    });
  const a = await tryOne(p);
  const b = a ? await tryOne(p + 1) : undefined;
  await Promise.all([a, b].map((s) => s && new Promise((r) => s.close(r))));
  return Boolean(a && b);
}

async function freePortPair(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const p = 20000 + 2 * Math.floor(Math.random() * 19000);
    if (await portPairFree(p)) return p;
  }
  throw new Error('no free port pair');
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`port ${port} never opened`);
}

export interface Swtpm {
  port: number;
  dir: string;
  stop(): Promise<void>;
}

/** A fresh swtpm (TPM 2.0, started with Startup(CLEAR)) on TCP port P (data) and P+1 (control). */
export async function startSwtpm(): Promise<Swtpm> {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-swtpm-'));
  for (let attempt = 0; ; attempt++) {
    const port = await freePortPair();
    const child: ChildProcess = spawn(
      'swtpm',
      ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`, '--flags', 'not-need-init,startup-clear'],
      { stdio: 'ignore' },
    );
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      await Promise.race([waitForPort(port), exited.then(() => Promise.reject(new Error('swtpm exited')))]);
    } catch (e) {
      child.kill();
      if (attempt < 3) continue;
      throw e;
    }
    return {
      port,
      dir,
      async stop() {
        child.kill('SIGTERM');
        await exited;
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}

export interface Exchange {
  command: Buffer;
  response: Buffer;
}

export interface Recorder {
  port: number;
  exchanges: Exchange[];
  close(): Promise<void>;
}

/** A TCP proxy on a port pair that forwards to swtpm's pair and records every command/response on the data port. */
export async function startRecorder(target: number): Promise<Recorder> {
  const exchanges: Exchange[] = [];
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const listen = (port: number, to: number, record: boolean) =>
    new Promise<Server>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(to, '127.0.0.1');
        sockets.add(client).add(upstream);
        let cmdBuf = Buffer.alloc(0);
        let rspBuf = Buffer.alloc(0);
        const pending: Buffer[] = [];
        client.on('data', (d) => {
          if (record) {
            const { messages, rest } = splitMessages(Buffer.concat([cmdBuf, d]));
            cmdBuf = Buffer.from(rest);
            for (const m of messages) pending.push(Buffer.from(m));
          }
          upstream.write(d);
        });
        upstream.on('data', (d) => {
          if (record) {
            const { messages, rest } = splitMessages(Buffer.concat([rspBuf, d]));
            rspBuf = Buffer.from(rest);
            for (const m of messages) exchanges.push({ command: pending.shift() ?? Buffer.alloc(0), response: Buffer.from(m) });
          }
          client.write(d);
        });
        const end = () => {
          client.destroy();
          upstream.destroy();
        };
        client.on('close', end).on('error', end);
        upstream.on('close', end).on('error', end);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => resolve(s));
    });
  for (let attempt = 0; ; attempt++) {
    const port = await freePortPair();
    try {
      servers.push(await listen(port, target, true));
      servers.push(await listen(port + 1, target + 1, false));
    } catch (e) {
      await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
      if (attempt < 3) continue;
      throw e;
    }
    return {
      port,
      exchanges,
      async close() {
        for (const s of sockets) s.destroy();
        await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
      },
    };
  }
}

/** Runs a tpm2-tools command against the TPM behind `port` (swtpm TCTI); returns stdout. */
export async function tool(port: number, args: string[], cwd?: string): Promise<string> {
  const [cmd, ...rest] = args;
  const { stdout } = await run(cmd!, rest, { cwd, env: { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${port}` }, maxBuffer: 16 << 20 });
  return stdout;
}

/** Sends one command on a fresh connection to swtpm's data port and returns the whole response. */
export function transact(port: number, command: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    s.on('connect', () => s.write(command));
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const { messages } = splitMessages(buf);
      if (messages[0]) {
        s.destroy();
        resolve(Buffer.from(messages[0]));
      }
    });
    s.on('error', reject);
    s.on('close', () => reject(new Error(`connection closed after ${buf.length} bytes`)));
  });
}
