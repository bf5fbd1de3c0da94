/**
 * ADVERSARY: the management plane runs as its own unprivileged user. This probe runs as such a user
 * (a child process with another uid/gid; the caller must be root to switch) and tries to open files
 * (guest-memory files) and connect to unix sockets (NBD, QMP, console) that belong to the monitor.
 */
import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import path from 'node:path';

export interface ProbeUser {
  uid: number;
  gid: number;
}

export interface ProbeResult {
  target: string;
  kind: 'read' | 'connect';
  /** 'ok' when the access worked, else the error code (EACCES, ENOENT, …). */
  outcome: string;
}

const PROBE_TIMEOUT_MS = 20_000;

// Runs in the child: each access is tried independently and reported, never thrown.
const PROBE_SCRIPT = `
const fs = require('node:fs');
const net = require('node:net');
const { files, sockets } = JSON.parse(process.argv[1]);
const results = [];
for (const f of files) {
  try { const fd = fs.openSync(f, 'r'); fs.readSync(fd, Buffer.alloc(4096), 0, 4096, 0); fs.closeSync(fd); results.push({ target: f, kind: 'read', outcome: 'ok' }); }
  catch (e) { results.push({ target: f, kind: 'read', outcome: e.code || String(e) }); }
}
const connect = (s) => new Promise((resolve) => {
  const c = net.connect(s);
  c.once('connect', () => { c.destroy(); resolve('ok'); });
  c.once('error', (e) => resolve(e.code || String(e)));
});
(async () => {
  for (const s of sockets) results.push({ target: s, kind: 'connect', outcome: await connect(s) });
  process.stdout.write(JSON.stringify(results));
})();
`;

export function probeAsUser(user: ProbeUser, targets: { files: string[]; sockets: string[] }): Promise<ProbeResult[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', PROBE_SCRIPT, JSON.stringify(targets)], {
      uid: user.uid,
      gid: user.gid,
      cwd: '/',
      env: { PATH: '/usr/bin:/bin' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: PROBE_TIMEOUT_MS,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0) return reject(new Error(`probe as uid ${user.uid} exited ${code ?? signal}: ${err.trim()}`));
      try {
        resolve(JSON.parse(out) as ProbeResult[]);
      } catch {
        reject(new Error(`probe as uid ${user.uid} printed no result: ${out.slice(0, 200)}`));
      }
    });
  });
}

/** Every non-directory entry below `dir` whose name `match` accepts (the caller must be able to list `dir`). */
export async function findEntries(dir: string, match: (name: string) => boolean): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string, depth: number): Promise<void> => {
    if (depth > 4) return;
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return; // a VM dir removed while we walk
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p, depth + 1);
      else if (match(e.name)) found.push(p);
    }
  };
  await walk(dir, 0);
  return found;
}
