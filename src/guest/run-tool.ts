/**
 * Runs the Debian tools the guest build relies on (apt, dpkg-deb, xz, cpio, mke2fs, e2fsck,
 * debugfs) with a deadline, bounded output capture and errors that name the tool, its exit
 * status and the tail of what it printed.
 */
import { spawn } from 'node:child_process';

/** Which Debian package provides each tool, for "not found" errors. */
const PACKAGE_OF: Record<string, string> = {
  'apt-cache': 'apt',
  'apt-get': 'apt',
  'dpkg-deb': 'dpkg',
  'dpkg-query': 'dpkg',
  dpkg: 'dpkg',
  xz: 'xz-utils',
  cpio: 'cpio',
  mke2fs: 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  debugfs: 'e2fsprogs',
};

export class ToolError extends Error {
  override name = 'ToolError';
  constructor(
    message: string,
    readonly tool: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(message);
  }
}

export interface RunOptions {
  timeoutMs: number;
  cwd?: string;
  /** Bytes written to stdin (stdin is closed empty otherwise). */
  input?: Uint8Array;
  /** stdout is captured up to this many bytes (default 16 MiB); more is an error. */
  maxStdout?: number;
}

export interface RunResult {
  stdout: Buffer;
  stderr: string;
}

const STDERR_KEEP = 16 * 1024;

export function runTool(tool: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const maxStdout = opts.maxStdout ?? 16 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, {
      cwd: opts.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const chunks: Buffer[] = [];
    let stdoutBytes = 0;
    let stderr = '';
    let failure: Error | undefined;
    const fail = (err: Error) => {
      failure ??= err;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => fail(new ToolError(`${tool} timed out after ${opts.timeoutMs / 1000} s`, tool, null, stderr)), opts.timeoutMs);

    child.stdout.on('data', (b: Buffer) => {
      stdoutBytes += b.length;
      if (stdoutBytes > maxStdout) fail(new ToolError(`${tool} printed more than ${maxStdout} bytes`, tool, null, stderr));
      else chunks.push(b);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      stderr = (stderr + s).slice(-STDERR_KEEP);
    });
    // EPIPE when the tool exits without reading all input is reported through its exit status.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? Buffer.alloc(0));

    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        const pkg = PACKAGE_OF[tool];
        fail(new ToolError(`${tool} not found on PATH${pkg ? ` (install the Debian package ${pkg}, or run scripts/setup.sh)` : ''}`, tool, null, ''));
      } else {
        fail(err);
      }
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (failure) return reject(failure);
      if (code !== 0) {
        const tail = stderr.trim().split('\n').slice(-6).join('\n');
        const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
        return reject(new ToolError(`${tool} ${args.join(' ')} ${how}${tail ? `:\n${tail}` : ''}`, tool, code, stderr));
      }
      resolve({ stdout: Buffer.concat(chunks), stderr });
    });
  });
}
