// NbdServer and FileBackend against independent clients (nbdinfo, qemu-io, nbdcopy, nbdsh from
// libnbd) and against a raw socket speaking the wire format by hand. Every check that a request
// was refused also checks the file's bytes and that the server still serves.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  NBD_SIMPLE_REPLY_MAGIC,
  NbdClientFlag,
  NbdCmd,
  NbdCmdFlag,
  NbdErrno,
  NbdFlag,
  NbdInfo,
  NbdOpt,
  NbdRep,
  NbdReplyFlag,
  NbdReplyType,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeInfo,
  decodeOptionReplyHeader,
  decodeServerEntry,
  decodeServerGreeting,
  decodeSimpleReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOptionRequest,
  encodeRequestHeader,
  type InfoReply,
  type RequestHeader,
} from '../../src/formats/nbd/index.ts';
import type { BlockBackend, BlockSizes } from '../../src/monitor/disk/backend.ts';
import { FileBackend } from '../../src/monitor/disk/file-backend.ts';
import { NbdServer } from '../../src/monitor/disk/nbd-server.ts';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const T = { timeout: 60_000 };

// ---------------------------------------------------------------- fixtures

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool without blocking the event loop (the server under test lives in this process). */
function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((done) => {
    execFile(cmd, args, { timeout: 45_000, maxBuffer: 64 * MiB, encoding: 'utf8', env: env ?? process.env }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Fixture {
  dir: string;
  file: string;
  content: Buffer;
  server: NbdServer;
  socketPath: string;
  uri(name?: string): string;
  bytes(): Promise<Buffer>;
}

interface FixtureOptions {
  readOnly?: boolean;
  /** Wraps the file backend, e.g. to impose block sizes or inject failures. */
  wrap?: (b: FileBackend) => BlockBackend;
  extraExports?: Array<[string, BlockBackend]>;
}

async function fixture(t: TestContext, opts: FixtureOptions = {}): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-nbd-test-'));
  const file = join(dir, 'disk.img');
  const content = randomBytes(SIZE);
  await writeFile(file, content);
  const backend = await FileBackend.open(file, { readOnly: opts.readOnly ?? false });
  const socketPath = join(dir, 'nbd.sock');
  const exportsMap = new Map<string, BlockBackend>([['disk', opts.wrap ? opts.wrap(backend) : backend], ...(opts.extraExports ?? [])]);
  const server = new NbdServer({ socketPath, exports: exportsMap });
  t.after(async () => {
    await server.close();
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  });
  await server.listen();
  return {
    dir,
    file,
    content,
    server,
    socketPath,
    uri: (name = 'disk') => `nbd+unix:///${name}?socket=${socketPath}`,
    bytes: () => readFile(file),
  };
}

/** The file backend with other block-size constraints, as the sealed disk will have. */
function constrained(inner: BlockBackend, blockSizes: BlockSizes): BlockBackend {
  return {
    size: inner.size,
    blockSizes,
    readOnly: inner.readOnly,
    canTrim: inner.canTrim,
    canWriteZeroes: inner.canWriteZeroes,
    read: (o, l, into) => inner.read(o, l, into),
    write: (o, d, f) => inner.write(o, d, f),
    flush: () => inner.flush(),
    trim: (o, l, f) => inner.trim(o, l, f),
    writeZeroes: (o, l, f) => inner.writeZeroes(o, l, f),
    close: () => inner.close(),
  };
}

const SMALL_BLOCKS: BlockSizes = { min: 4096, preferred: 4096, max: MiB };

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (cond()) return;
    await sleep(20);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** The server is healthy: a new client reads the first 4 KiB and gets the file's bytes. */
async function assertServes(f: Fixture): Promise<void> {
  const c = await RawClient.connect(f.socketPath);
  try {
    await c.go('disk', true);
    c.send(req(NbdCmd.READ, 4242n, 0, 4096));
    const r = await c.chunk();
    assert.equal(r.type, NbdReplyType.OFFSET_DATA);
    assert.deepEqual(r.payload.subarray(8), (await f.bytes()).subarray(0, 4096));
  } finally {
    c.close();
  }
}

// ---------------------------------------------------------------- a raw wire client

const req = (type: number, cookie: bigint, offset: number, length: number, flags = 0): Buffer =>
  encodeRequestHeader({ type, cookie, offset, length, flags } satisfies RequestHeader);

class RawClient {
  #buf = Buffer.alloc(0);
  #want: (() => void) | undefined;
  closed = false;
  readonly #closedP: Promise<void>;

  private constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#want?.();
    });
    this.#closedP = new Promise((res) =>
      sock.on('close', () => {
        this.closed = true;
        this.#want?.();
        res();
      }),
    );
    sock.on('error', () => undefined);
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((res, rej) => {
      const s = connect(path, () => res(new RawClient(s)));
      s.once('error', rej);
    });
  }

  send(b: Buffer): void {
    this.sock.write(b);
  }

  async read(n: number, ms = 10_000): Promise<Buffer> {
    const end = Date.now() + ms;
    while (this.#buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.#buf.length}/${n} bytes`);
      if (Date.now() > end) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((res) => {
        this.#want = res;
        setTimeout(res, 50);
      });
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** The next `n` bytes, left in place for the next read. */
  async peek(n: number): Promise<Buffer> {
    const b = await this.read(n);
    this.#buf = Buffer.concat([b, this.#buf]);
    return b;
  }

  /** Resolves true if the server closes the connection within `ms`. */
  async closesWithin(ms = 5000): Promise<boolean> {
    return Promise.race([this.#closedP.then(() => true), sleep(ms).then(() => false)]);
  }

  close(): void {
    this.sock.destroy();
  }

  async greet(flags: number = NbdClientFlag.FIXED_NEWSTYLE | NbdClientFlag.NO_ZEROES): Promise<void> {
    decodeServerGreeting(await this.read(18));
    this.send(encodeClientFlags(flags));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = decodeOptionReplyHeader(await this.read(20));
    return { option: h.option, type: h.type, data: await this.read(h.length) };
  }

  /** Option replies up to and including the final (ACK or error) one. */
  async optionReplies(): Promise<Array<{ type: number; data: Buffer }>> {
    const all = [];
    for (;;) {
      const r = await this.optionReply();
      all.push(r);
      if (r.type !== NbdRep.INFO && r.type !== NbdRep.SERVER) return all;
    }
  }

  /** Full handshake with NBD_OPT_GO; returns the info replies. */
  async go(name: string, structured: boolean, requests: number[] = [NbdInfo.BLOCK_SIZE]): Promise<InfoReply[]> {
    await this.greet();
    if (structured) {
      this.send(encodeOptionRequest(NbdOpt.STRUCTURED_REPLY));
      assert.equal((await this.optionReply()).type, NbdRep.ACK);
    }
    this.send(encodeOptionRequest(NbdOpt.GO, encodeInfoRequest({ name, requests })));
    const replies = await this.optionReplies();
    assert.equal(replies.at(-1)!.type, NbdRep.ACK, `GO failed: ${replies.at(-1)!.data.toString()}`);
    return replies.filter((r) => r.type === NbdRep.INFO).map((r) => decodeInfo(r.data));
  }

  async chunk(): Promise<{ flags: number; type: number; cookie: bigint; payload: Buffer }> {
    const h = decodeChunkHeader(await this.read(20));
    return { ...h, payload: await this.read(h.length) };
  }

  /**
   * Any reply of a structured session: simple replies (no payload) are allowed there for
   * everything but reads, so the magic tells which kind comes.
   */
  async reply(): Promise<{ simple: boolean; cookie: bigint; error: number; type: number; payload: Buffer }> {
    if ((await this.peek(4)).readUInt32BE(0) === NBD_SIMPLE_REPLY_MAGIC) {
      const r = await this.simple();
      return { simple: true, cookie: r.cookie, error: r.error, type: -1, payload: Buffer.alloc(0) };
    }
    const c = await this.chunk();
    const error = c.type === NbdReplyType.ERROR || c.type === NbdReplyType.ERROR_OFFSET ? decodeErrorChunk(c.type, c.payload).error : 0;
    return { simple: false, cookie: c.cookie, error, type: c.type, payload: c.payload };
  }

  async simple(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = decodeSimpleReplyHeader(await this.read(16));
    return { ...h, data: h.error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0) };
  }
}

const errnoOfChunk = (c: { type: number; payload: Buffer }): number => decodeErrorChunk(c.type, c.payload).error;

// ---------------------------------------------------------------- the file backend

test('FileBackend: opens only regular files, zeroes exactly, refuses writes read-only, closes after running I/O', T, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-file-backend-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await assert.rejects(FileBackend.open(join(dir, 'missing')), { code: 'ENOENT' });
  await assert.rejects(FileBackend.open(dir, { readOnly: true }), /not a regular file/);
  await assert.rejects(FileBackend.open('/dev/null'), /not a regular file/);

  const file = join(dir, 'disk.img');
  const content = randomBytes(4 * MiB);
  await writeFile(file, content);
  const b = await FileBackend.open(file);
  assert.deepEqual([b.size, b.readOnly, b.canTrim, b.canWriteZeroes], [4 * MiB, false, true, true]);
  await b.writeZeroes(MiB - 100, 2 * MiB + 300, true);
  await b.write(10, Buffer.from('hello'), true);
  const expected = Buffer.from(content);
  expected.fill(0, MiB - 100, 3 * MiB + 200);
  expected.write('hello', 10);
  assert.equal(sha(await readFile(file)), sha(expected));
  const into = Buffer.alloc(5);
  await b.read(10, 5, into);
  assert.equal(into.toString(), 'hello');

  // close() waits for reads already running; later calls fail instead of touching a stale fd.
  const pending = Array.from({ length: 8 }, (_, i) => b.read(i * 65536, 65536, Buffer.alloc(65536)));
  await b.close();
  await Promise.all(pending);
  await assert.rejects(b.read(0, 1, Buffer.alloc(1)), { code: 'EBADF' });

  const ro = await FileBackend.open(file, { readOnly: true });
  t.after(() => ro.close());
  assert.deepEqual([ro.readOnly, ro.canWriteZeroes], [true, false]);
  await assert.rejects(ro.write(0, Buffer.alloc(1), false), { code: 'EPERM' });
  await assert.rejects(ro.writeZeroes(0, 1, false), { code: 'EPERM' });
  assert.equal(sha(await readFile(file)), sha(expected));
});

// ---------------------------------------------------------------- independent clients

test('nbdinfo sees the size, name, block sizes and truthful flags', T, async (t) => {
  const rw = await fixture(t, { extraExports: [] });
  const info = JSON.parse(await ok('nbdinfo', ['--json', rw.uri()]));
  assert.equal(info.protocol, 'newstyle-fixed');
  assert.equal(info.structured, true);
  const e = info.exports[0];
  assert.equal(e['export-name'], 'disk');
  assert.equal(e['export-size'], SIZE);
  assert.deepEqual([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum], [1, 4096, 32 * MiB]);
  assert.deepEqual(
    [e.is_read_only, e.can_flush, e.can_fua, e.can_trim, e.can_zero, e.can_multi_conn, e.can_cache, e.can_df, e.can_fast_zero],
    [false, true, true, true, true, true, false, false, false],
  );
  // The default export "" reaches the first export.
  assert.equal(JSON.parse(await ok('nbdinfo', ['--json', `nbd+unix:///?socket=${rw.socketPath}`])).exports[0]['export-size'], SIZE);

  const ro = await fixture(t, { readOnly: true });
  const r = JSON.parse(await ok('nbdinfo', ['--json', ro.uri()])).exports[0];
  assert.deepEqual([r.is_read_only, r.can_trim, r.can_zero, r.can_flush], [true, false, false, true]);

  const small = await fixture(t, { wrap: (b) => constrained(b, SMALL_BLOCKS) });
  const s = JSON.parse(await ok('nbdinfo', ['--json', small.uri()])).exports[0];
  assert.deepEqual([s.block_size_minimum, s.block_size_preferred, s.block_size_maximum], [4096, 4096, MiB]);

  const missing = await run('nbdinfo', [rw.uri('nope')]);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /nope/);
});

test('nbdinfo --list shows every export', T, async (t) => {
  const other = await FileBackend.open(process.execPath, { readOnly: true });
  t.after(() => other.close());
  const f = await fixture(t, { extraExports: [['node-binary', other]] });
  const list = JSON.parse(await ok('nbdinfo', ['--json', '--list', `nbd+unix://?socket=${f.socketPath}`]));
  const names = list.exports.map((e: Record<string, unknown>) => e['export-name']).sort();
  assert.deepEqual(names, ['disk', 'node-binary']);
  const nodeExport = list.exports.find((e: Record<string, unknown>) => e['export-name'] === 'node-binary');
  assert.equal(nodeExport['export-size'], (await stat(process.execPath)).size);
  assert.equal(nodeExport.is_read_only, true);
});

test('qemu-io writes, reads back, flushes, zeroes, discards and writes with FUA', T, async (t) => {
  const f = await fixture(t);
  const out = await ok('qemu-io', [
    '-f', 'raw',
    '-c', 'write -P 0xab 4096 65536',
    '-c', 'read -P 0xab 4096 65536',
    '-c', 'flush',
    '-c', 'write -z 1048576 131072',
    '-c', 'read -P 0 1048576 131072',
    '-c', 'discard 2097152 65536',
    '-c', 'write -f -P 0x5c 3145728 4096',
    '-c', 'read -P 0x5c 3145728 4096',
    '-c', 'write -P 0x11 5000 333',
    '-c', 'read -P 0x11 5000 333',
    f.uri(),
  ]);
  assert.doesNotMatch(out, /Pattern verification failed|error/i);
  const disk = await f.bytes();
  const expected = Buffer.from(f.content);
  expected.fill(0xab, 4096, 4096 + 65536);
  expected.fill(0, MiB, MiB + 131072);
  expected.fill(0x5c, 3 * MiB, 3 * MiB + 4096);
  expected.fill(0x11, 5000, 5333);
  // Trim is an honest no-op for a plain file: the bytes stay.
  assert.equal(sha(disk), sha(expected));
  const s = f.server.stats;
  assert.ok(s.writes >= 3 && s.reads >= 4 && s.flushes >= 1 && s.trims === 1 && s.writeZeroes === 1, JSON.stringify(s));
  assert.equal(s.errors, 0);
});

test('nbdcopy copies the whole export out and a new image in (multi-conn, many requests in flight)', T, async (t) => {
  const f = await fixture(t);
  const out = join(f.dir, 'out.img');
  await ok('nbdcopy', ['--connections=4', '--requests=32', f.uri(), out]);
  assert.equal(sha(await readFile(out)), sha(f.content));

  const src = join(f.dir, 'src.img');
  const fresh = randomBytes(SIZE);
  await writeFile(src, fresh);
  await ok('nbdcopy', ['--connections=4', '--requests=32', src, f.uri()]);
  assert.equal(sha(await f.bytes()), sha(fresh));
  assert.equal(f.server.stats.errors, 0);
  assert.ok(f.server.stats.connections >= 2);
});

// ---------------------------------------------------------------- bad requests through libnbd

const PY_PRELUDE = `
import json, nbd
def attempt(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return e.errno or ('errnum %d' % e.errnum)
def open_(uri, structured=True):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    return h
`;

/** Runs a libnbd script (system python: /usr/bin/nbdsh finds python3 through PATH) and parses its JSON. */
async function nbdsh(body: string): Promise<Record<string, string>> {
  const r = await run('/usr/bin/nbdsh', ['-c', PY_PRELUDE + body], { ...process.env, PATH: '/usr/bin:/bin' });
  assert.equal(r.code, 0, `nbdsh failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

test('bad requests get the errno proto.md prescribes and change nothing', T, async (t) => {
  const f = await fixture(t);
  const before = sha(await f.bytes());
  const r = await nbdsh(`
h = open_(${JSON.stringify(f.uri())})
size = h.get_size()
r = {}
r['read_past_end'] = attempt(lambda: h.pread(4096, size))
r['read_straddling_end'] = attempt(lambda: h.pread(8192, size - 4096))
r['read_huge_offset'] = attempt(lambda: h.pread(512, 2**63))
r['write_past_end'] = attempt(lambda: h.pwrite(b'\\xaa' * 4096, size))
r['write_straddling_end'] = attempt(lambda: h.pwrite(b'\\xaa' * 8192, size - 4096))
r['zero_past_end'] = attempt(lambda: h.zero(4096, size))
r['trim_past_end'] = attempt(lambda: h.trim(4096, size))
r['unknown_command_cache'] = attempt(lambda: h.cache(4096, 0))
r['read_with_no_hole_flag'] = attempt(lambda: h.pread(4096, 0, nbd.CMD_FLAG_NO_HOLE))
r['read_with_df_not_advertised'] = attempt(lambda: h.pread(4096, 0, nbd.CMD_FLAG_DF))
r['write_with_unknown_flag'] = attempt(lambda: h.pwrite(b'\\xaa' * 4096, 0, 1 << 7))
r['zero_with_fast_zero'] = attempt(lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO))
r['still_serves'] = attempt(lambda: h.pread(4096, 0))
h.shutdown()
print(json.dumps(r))
`);
  assert.deepEqual(r, {
    read_past_end: 'EINVAL',
    read_straddling_end: 'EINVAL',
    read_huge_offset: 'EINVAL',
    write_past_end: 'ENOSPC',
    write_straddling_end: 'ENOSPC',
    zero_past_end: 'ENOSPC',
    trim_past_end: 'EINVAL',
    unknown_command_cache: 'EINVAL',
    read_with_no_hole_flag: 'EINVAL',
    read_with_df_not_advertised: 'EINVAL',
    write_with_unknown_flag: 'EINVAL',
    zero_with_fast_zero: 'EINVAL',
    still_serves: 'ok',
  });
  // Every refusal came from the server, not from libnbd's own checks.
  assert.equal(f.server.stats.errors, 12);
  assert.equal(sha(await f.bytes()), before);
  await assertServes(f);
});

test('misaligned and oversized requests are refused; an oversized write payload is consumed', T, async (t) => {
  const f = await fixture(t, { wrap: (b) => constrained(b, SMALL_BLOCKS) });
  const before = sha(await f.bytes());
  const body = (structured: boolean): string => `
h = open_(${JSON.stringify(f.uri())}, ${structured ? 'True' : 'False'})
r = {}
r['min_block'] = str(h.get_block_size(nbd.SIZE_MINIMUM))
r['read_misaligned_offset'] = attempt(lambda: h.pread(4096, 512))
r['read_misaligned_length'] = attempt(lambda: h.pread(1000, 0))
r['write_misaligned'] = attempt(lambda: h.pwrite(b'\\x55' * 512, 4096))
r['zero_misaligned'] = attempt(lambda: h.zero(512, 0))
r['trim_misaligned'] = attempt(lambda: h.trim(4096, 100))
r['read_oversized'] = attempt(lambda: h.pread(2**20 + 4096, 0))
r['write_oversized'] = attempt(lambda: h.pwrite(b'\\x55' * (2**20 + 4096), 0))
r['still_serves'] = attempt(lambda: h.pread(2**20, 0))
h.shutdown()
print(json.dumps(r))
`;
  const expected = {
    min_block: '4096',
    read_misaligned_offset: 'EINVAL',
    read_misaligned_length: 'EINVAL',
    write_misaligned: 'EINVAL',
    zero_misaligned: 'EINVAL',
    trim_misaligned: 'EINVAL',
    write_oversized: 'EINVAL',
    still_serves: 'ok',
  };
  // With structured replies a too-large read may be refused up front with EOVERFLOW.
  assert.deepEqual(await nbdsh(body(true)), { ...expected, read_oversized: 'EOVERFLOW' });
  assert.deepEqual(await nbdsh(body(false)), { ...expected, read_oversized: 'EINVAL' });
  assert.equal(f.server.stats.errors, 14);
  assert.equal(sha(await f.bytes()), before);
  await assertServes(f);
});

test('writes to a read-only export fail with EPERM and leave the file alone', T, async (t) => {
  const f = await fixture(t, { readOnly: true });
  const before = sha(await f.bytes());
  const r = await nbdsh(`
h = open_(${JSON.stringify(f.uri())})
r = {}
r['read_only'] = str(h.is_read_only())
r['write'] = attempt(lambda: h.pwrite(b'\\x01' * 4096, 0))
r['write_fua'] = attempt(lambda: h.pwrite(b'\\x01' * 4096, 8192, nbd.CMD_FLAG_FUA))
r['zero'] = attempt(lambda: h.zero(4096, 0))
r['trim'] = attempt(lambda: h.trim(4096, 0))
r['flush'] = attempt(lambda: h.flush())
r['read'] = attempt(lambda: h.pread(4096, 0))
h.shutdown()
print(json.dumps(r))
`);
  assert.deepEqual(r, { read_only: 'True', write: 'EPERM', write_fua: 'EPERM', zero: 'EPERM', trim: 'EPERM', flush: 'ok', read: 'ok' });
  assert.equal(f.server.stats.errors, 4);
  assert.equal(sha(await f.bytes()), before);
  await assertServes(f);
});

// ---------------------------------------------------------------- raw wire: handshake

test('garbage or unknown flags in the handshake close only that connection', T, async (t) => {
  const f = await fixture(t);
  const refuse = async (what: string, act: (c: RawClient) => Promise<void>): Promise<void> => {
    const c = await RawClient.connect(f.socketPath);
    await act(c);
    assert.ok(await c.closesWithin(), `${what}: server kept the connection`);
  };
  await refuse('HTTP instead of NBD', async (c) => {
    await c.read(18);
    c.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  });
  await refuse('unknown client flag', (c) => c.greet(NbdClientFlag.FIXED_NEWSTYLE | 0x100));
  await refuse('non-fixed newstyle client', (c) => c.greet(0));
  await refuse('NO_ZEROES without FIXED_NEWSTYLE', (c) => c.greet(NbdClientFlag.NO_ZEROES));
  await refuse('bad option magic', async (c) => {
    await c.greet();
    c.send(Buffer.concat([Buffer.from('IHAVEOPX'), Buffer.alloc(8)]));
  });
  await refuse('option header then random bytes', async (c) => {
    await c.greet();
    c.send(randomBytes(64));
  });
  await refuse('export name too long for an NBD string', async (c) => {
    await c.greet();
    c.send(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.alloc(5000, 0x61)));
  });
  await refuse('unknown export via EXPORT_NAME', async (c) => {
    await c.greet();
    c.send(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from('nope')));
  });
  await waitFor('connections to be released', () => f.server.activeConnections === 0);
  await assertServes(f);
});

test('option haggling: errors as the spec says, and the next option still parses', T, async (t) => {
  const f = await fixture(t);
  const c = await RawClient.connect(f.socketPath);
  t.after(() => c.close());
  await c.greet();
  const ask = async (option: number, data?: Buffer): Promise<Array<{ type: number; data: Buffer }>> => {
    c.send(encodeOptionRequest(option, data));
    return c.optionReplies();
  };
  const single = async (option: number, data?: Buffer): Promise<number> => {
    const rs = await ask(option, data);
    assert.equal(rs.length, 1);
    return rs[0]!.type;
  };
  assert.equal(await single(0x7777, Buffer.from('abc')), NbdRep.ERR_UNSUP);
  assert.equal(await single(0x7778, randomBytes(MiB)), NbdRep.ERR_UNSUP);
  assert.equal(await single(NbdOpt.STARTTLS), NbdRep.ERR_UNSUP);
  assert.equal(await single(NbdOpt.SET_META_CONTEXT, Buffer.alloc(8)), NbdRep.ERR_UNSUP);
  assert.equal(await single(NbdOpt.LIST, Buffer.from('x')), NbdRep.ERR_INVALID);
  assert.equal(await single(NbdOpt.STRUCTURED_REPLY, Buffer.from('x')), NbdRep.ERR_INVALID);
  const lying = Buffer.concat([Buffer.from([0, 0, 0, 200]), Buffer.from('disk'), Buffer.alloc(2)]);
  assert.equal(await single(NbdOpt.INFO, lying), NbdRep.ERR_INVALID);
  const trailing = Buffer.concat([encodeInfoRequest({ name: 'disk', requests: [] }), Buffer.alloc(3)]);
  assert.equal(await single(NbdOpt.GO, trailing), NbdRep.ERR_INVALID);
  assert.equal(await single(NbdOpt.INFO, Buffer.alloc(200_000)), NbdRep.ERR_INVALID);
  const unknown = await ask(NbdOpt.INFO, encodeInfoRequest({ name: 'nope', requests: [] }));
  assert.deepEqual(unknown.map((r) => r.type), [NbdRep.ERR_UNKNOWN]);
  assert.match(unknown[0]!.data.toString(), /unknown export "nope"/);

  const list = await ask(NbdOpt.LIST);
  assert.deepEqual(list.map((r) => r.type), [NbdRep.SERVER, NbdRep.ACK]);
  assert.equal(decodeServerEntry(list[0]!.data).name, 'disk');

  const info = await ask(NbdOpt.INFO, encodeInfoRequest({ name: 'disk', requests: [NbdInfo.NAME, NbdInfo.BLOCK_SIZE, 0x99] }));
  assert.equal(info.at(-1)!.type, NbdRep.ACK);
  const infos = info.slice(0, -1).map((r) => decodeInfo(r.data));
  assert.deepEqual(infos.find((i) => i.type === 'export'), {
    type: 'export',
    size: SIZE,
    transmissionFlags:
      NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES | NbdFlag.CAN_MULTI_CONN,
  });
  assert.deepEqual(infos.find((i) => i.type === 'block-size'), { type: 'block-size', min: 1, preferred: 4096, max: 32 * MiB });
  assert.deepEqual(infos.find((i) => i.type === 'name'), { type: 'name', name: 'disk' });

  // After all that the session still enters transmission and serves.
  c.send(encodeOptionRequest(NbdOpt.GO, encodeInfoRequest({ name: '', requests: [] })));
  assert.equal((await c.optionReplies()).at(-1)!.type, NbdRep.ACK);
  c.send(req(NbdCmd.READ, 1n, 4096, 512));
  const r = await c.simple(512);
  assert.deepEqual([r.error, r.cookie], [0, 1n]);
  assert.deepEqual(r.data, f.content.subarray(4096, 4608));
});

test('NBD_OPT_EXPORT_NAME replies with or without the 124 zero bytes; ABORT is acknowledged', T, async (t) => {
  const f = await fixture(t);
  for (const noZeroes of [true, false]) {
    const c = await RawClient.connect(f.socketPath);
    await c.greet(NbdClientFlag.FIXED_NEWSTYLE | (noZeroes ? NbdClientFlag.NO_ZEROES : 0));
    c.send(encodeOptionRequest(NbdOpt.EXPORT_NAME, Buffer.from('disk')));
    const reply = await c.read(noZeroes ? 10 : 134);
    assert.equal(reply.readBigUInt64BE(0), BigInt(SIZE));
    assert.equal(reply.readUInt16BE(8) & NbdFlag.HAS_FLAGS, 1);
    if (!noZeroes) assert.ok(reply.subarray(10).every((b) => b === 0));
    c.send(req(NbdCmd.READ, 7n, 0, 16));
    const r = await c.simple(16);
    assert.deepEqual(r.data, f.content.subarray(0, 16));
    c.close();
  }
  const a = await RawClient.connect(f.socketPath);
  await a.greet();
  a.send(encodeOptionRequest(NbdOpt.ABORT));
  assert.equal((await a.optionReply()).type, NbdRep.ACK);
  assert.ok(await a.closesWithin());
});

// ---------------------------------------------------------------- raw wire: transmission

test('a bad request magic closes that connection only', T, async (t) => {
  const f = await fixture(t);
  const good = await RawClient.connect(f.socketPath);
  const bad = await RawClient.connect(f.socketPath);
  t.after(() => good.close());
  await good.go('disk', true);
  await bad.go('disk', true);
  bad.send(randomBytes(28));
  assert.ok(await bad.closesWithin());
  good.send(req(NbdCmd.READ, 3n, 8192, 4096));
  const r = await good.chunk();
  assert.deepEqual(r.payload.subarray(8), f.content.subarray(8192, 12288));
});

test('malformed commands are answered with EINVAL and the stream stays in step', T, async (t) => {
  const f = await fixture(t, { wrap: (b) => constrained(b, SMALL_BLOCKS) });
  const c = await RawClient.connect(f.socketPath);
  t.after(() => c.close());
  await c.go('disk', true);
  const before = sha(await f.bytes());
  c.send(
    Buffer.concat([
      req(NbdCmd.FLUSH, 1n, 4096, 0),
      req(0x7fff, 2n, 0, 4096),
      req(NbdCmd.BLOCK_STATUS, 3n, 0, 4096),
      req(NbdCmd.WRITE, 4n, 0, 4096, 0x8000),
      Buffer.alloc(4096, 0xee),
      req(NbdCmd.WRITE, 5n, 0, 2 * MiB),
      Buffer.alloc(2 * MiB, 0xee),
      req(NbdCmd.WRITE, 6n, 512, 4096),
      Buffer.alloc(4096, 0xee),
      req(NbdCmd.WRITE, 7n, SIZE, 4096),
      Buffer.alloc(4096, 0xee),
      req(NbdCmd.READ, 8n, 0, 4096),
    ]),
  );
  const errors = new Map<bigint, number>();
  for (let i = 0; i < 7; i++) {
    const ch = await c.chunk();
    assert.ok(ch.flags & NbdReplyFlag.DONE);
    errors.set(ch.cookie, errnoOfChunk(ch));
    assert.match(decodeErrorChunk(ch.type, ch.payload).message, /\w/);
  }
  assert.deepEqual(
    [...errors].sort((a, b) => Number(a[0] - b[0])),
    [
      [1n, NbdErrno.EINVAL],
      [2n, NbdErrno.EINVAL],
      [3n, NbdErrno.EINVAL],
      [4n, NbdErrno.EINVAL],
      [5n, NbdErrno.EINVAL],
      [6n, NbdErrno.EINVAL],
      [7n, NbdErrno.ENOSPC],
    ],
  );
  const read = await c.chunk();
  assert.deepEqual([read.cookie, read.type], [8n, NbdReplyType.OFFSET_DATA]);
  assert.deepEqual(read.payload.subarray(8), f.content.subarray(0, 4096));
  // Zero-length requests are pointless but must not cost the client its connection.
  c.send(Buffer.concat([req(NbdCmd.READ, 9n, 4096, 0), req(NbdCmd.WRITE, 10n, 4096, 0), req(NbdCmd.TRIM, 11n, 0, 0)]));
  const zero = [await c.reply(), await c.reply(), await c.reply()].sort((x, y) => Number(x.cookie - y.cookie));
  assert.deepEqual(zero.map((r) => [r.cookie, r.error]), [[9n, 0], [10n, 0], [11n, 0]]);
  assert.equal(zero[0]!.type, NbdReplyType.NONE);
  assert.equal(sha(await f.bytes()), before);
});

test('pipelined requests are all answered, matched by cookie, with the right data', T, async (t) => {
  const f = await fixture(t);
  const c = await RawClient.connect(f.socketPath);
  t.after(() => c.close());
  await c.go('disk', true);
  const expected = Buffer.from(f.content);
  const parts: Buffer[] = [];
  const reads = new Map<bigint, [number, number]>();
  let cookie = 100n;
  // Writes in descending and ascending runs (as QEMU sends them), then scattered small ones.
  const writes: Array<[number, number]> = [];
  for (let i = 15; i >= 0; i--) writes.push([4 * MiB + i * 65536, 65536]);
  for (let i = 0; i < 16; i++) writes.push([6 * MiB + i * 65536, 65536]);
  for (let i = 0; i < 40; i++) writes.push([8 * MiB + i * 12345, 1000 + i]);
  for (const [off, len] of writes) {
    const data = randomBytes(len);
    data.copy(expected, off);
    parts.push(req(NbdCmd.WRITE, cookie++, off, len, cookie % 7n === 0n ? NbdCmdFlag.FUA : 0), data);
  }
  // Scattered reads, then adjoining runs of reads upwards and downwards (coalesced by the server).
  const readRanges: Array<[number, number]> = [];
  for (let i = 0; i < 60; i++) readRanges.push([12 * MiB + i * 40000, 30000]);
  for (let i = 0; i < 24; i++) readRanges.push([14 * MiB + i * 16384, 16384]);
  for (let i = 23; i >= 0; i--) readRanges.push([15 * MiB + i * 4096, 4096]);
  for (const [off, len] of readRanges) {
    reads.set(cookie, [off, len]);
    parts.push(req(NbdCmd.READ, cookie++, off, len));
  }
  c.send(Buffer.concat(parts));
  const seen = new Set<bigint>();
  for (let i = 0; i < writes.length + reads.size; i++) {
    const r = await c.reply();
    assert.ok(r.cookie >= 100n && r.cookie < cookie, `unknown cookie ${r.cookie}`);
    assert.ok(!seen.has(r.cookie), `cookie ${r.cookie} answered twice`);
    seen.add(r.cookie);
    assert.equal(r.error, 0);
    const range = reads.get(r.cookie);
    if (range) {
      assert.equal(r.type, NbdReplyType.OFFSET_DATA);
      assert.equal(r.payload.readBigUInt64BE(0), BigInt(range[0]));
      assert.deepEqual(r.payload.subarray(8), f.content.subarray(range[0], range[0] + range[1]));
    } else assert.ok(r.simple || r.type === NbdReplyType.NONE, `write answered with chunk type ${r.type}`);
  }
  assert.equal(seen.size, writes.length + reads.size);
  assert.equal(sha(await f.bytes()), sha(expected));
});

test('a client vanishing mid-request leaves no connection behind and the file intact', T, async (t) => {
  const f = await fixture(t);
  const before = sha(await f.bytes());
  const vanish = async (act: (c: RawClient) => Promise<void> | void): Promise<void> => {
    const c = await RawClient.connect(f.socketPath);
    await act(c);
    await sleep(30);
    c.close();
  };
  await vanish(async (c) => {
    await c.read(5);
  });
  await vanish(async (c) => {
    await c.greet();
    c.send(encodeOptionRequest(NbdOpt.GO).subarray(0, 9));
  });
  await vanish(async (c) => {
    await c.go('disk', true);
    c.send(req(NbdCmd.READ, 1n, 0, 4096).subarray(0, 13));
  });
  await vanish(async (c) => {
    await c.go('disk', true);
    c.send(Buffer.concat([req(NbdCmd.WRITE, 2n, 0, 65536), Buffer.alloc(30000, 0xcc)]));
  });
  await vanish(async (c) => {
    await c.go('disk', true);
    // Sequential writes open a coalescing run; the last one is cut short.
    c.send(Buffer.concat([req(NbdCmd.WRITE, 3n, MiB, 4096), Buffer.alloc(4096, 1), req(NbdCmd.WRITE, 4n, MiB + 4096, 4096), Buffer.alloc(100, 1)]));
  });
  await vanish(async (c) => {
    await c.go('disk', true);
    for (let i = 0; i < 200; i++) c.send(req(NbdCmd.READ, BigInt(i), 0, MiB));
  });
  await waitFor('connections to be released', () => f.server.activeConnections === 0);
  const after = await f.bytes();
  // Only the one complete write (3) may have landed.
  const expected = Buffer.from(f.content);
  expected.fill(1, MiB, MiB + 4096);
  assert.ok(sha(after) === before || sha(after) === sha(expected), 'file changed beyond the complete write');
  await assertServes(f);
});

test('NBD_CMD_DISC and a half-closed client still get their in-flight answers', T, async (t) => {
  const f = await fixture(t);
  const c = await RawClient.connect(f.socketPath);
  await c.go('disk', true);
  c.send(Buffer.concat([req(NbdCmd.WRITE, 1n, 0, 4096), Buffer.alloc(4096, 0x42), req(NbdCmd.READ, 2n, 65536, 4096), req(NbdCmd.DISC, 3n, 0, 0), req(NbdCmd.READ, 4n, 0, 4096)]));
  const got = new Set([(await c.reply()).cookie, (await c.reply()).cookie]);
  assert.deepEqual(got, new Set([1n, 2n]));
  assert.ok(await c.closesWithin());
  assert.ok((await f.bytes()).subarray(0, 4096).every((b) => b === 0x42));

  // Only reads before the DISC, gathered into one run: they must still be answered.
  const d = await RawClient.connect(f.socketPath);
  await d.go('disk', true);
  d.send(Buffer.concat([req(NbdCmd.READ, 5n, 0, 4096), req(NbdCmd.READ, 6n, 4096, 4096), req(NbdCmd.DISC, 7n, 0, 0)]));
  const both = [await d.reply(), await d.reply()].sort((x, y) => Number(x.cookie - y.cookie));
  assert.deepEqual(both.map((r) => r.cookie), [5n, 6n]);
  assert.deepEqual(both[1]!.payload.subarray(8), f.content.subarray(4096, 8192));
  assert.ok(await d.closesWithin());

  const h = await RawClient.connect(f.socketPath);
  await h.go('disk', false);
  h.send(Buffer.concat([req(NbdCmd.READ, 9n, 4096, 100), req(NbdCmd.FLUSH, 10n, 0, 0)]));
  h.sock.end();
  const r1 = await h.simple(100);
  assert.deepEqual([r1.cookie, r1.data], [9n, f.content.subarray(4096, 4196)]);
  assert.deepEqual([(await h.simple()).cookie], [10n]);
  assert.ok(await h.closesWithin());
});

test('backend failures are reported as EIO, with simple and structured replies', T, async (t) => {
  const failing = (b: FileBackend): BlockBackend => {
    const fail = async (): Promise<never> => {
      throw Object.assign(new Error('medium error'), { code: 'EIO' });
    };
    return { ...constrained(b, b.blockSizes), read: fail, write: fail, flush: fail };
  };
  const f = await fixture(t, { wrap: failing });
  const s = await RawClient.connect(f.socketPath);
  t.after(() => s.close());
  await s.go('disk', true);
  s.send(req(NbdCmd.READ, 1n, 0, 4096));
  const ch = await s.chunk();
  assert.deepEqual([ch.type, ch.flags & NbdReplyFlag.DONE, errnoOfChunk(ch)], [NbdReplyType.ERROR, 1, NbdErrno.EIO]);

  const p = await RawClient.connect(f.socketPath);
  t.after(() => p.close());
  await p.go('disk', false);
  p.send(Buffer.concat([req(NbdCmd.READ, 2n, 0, 4096), req(NbdCmd.WRITE, 3n, 0, 8), Buffer.alloc(8), req(NbdCmd.FLUSH, 4n, 0, 0)]));
  const errs = new Map<bigint, number>();
  for (let i = 0; i < 3; i++) {
    const r = await p.simple();
    errs.set(r.cookie, r.error);
  }
  assert.deepEqual(errs, new Map([[2n, 5], [3n, 5], [4n, 5]]));
  assert.equal(f.server.stats.errors, 4);
});

// ---------------------------------------------------------------- lifecycle and CLI

test('listen replaces a stale socket, refuses a live one or another file; socket is 0600', T, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-nbd-listen-'));
  const file = join(dir, 'disk.img');
  await writeFile(file, Buffer.alloc(MiB));
  const backend = await FileBackend.open(file);
  t.after(async () => {
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  });
  const exportsMap = new Map<string, BlockBackend>([['disk', backend]]);

  const stale = join(dir, 'stale.sock');
  const py = await run('/usr/bin/python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(stale)})`]);
  assert.equal(py.code, 0, py.stderr);
  assert.ok((await stat(stale)).isSocket());
  const s1 = new NbdServer({ socketPath: stale, exports: exportsMap });
  await s1.listen();
  assert.equal((await stat(stale)).mode & 0o777, 0o600);
  const second = new NbdServer({ socketPath: stale, exports: exportsMap });
  await assert.rejects(second.listen(), /another server is listening/);
  const c = await RawClient.connect(stale);
  await c.go('disk', true);
  await s1.close();
  assert.ok(await c.closesWithin());
  assert.equal(existsSync(stale), false);

  const notSocket = join(dir, 'precious.txt');
  await writeFile(notSocket, 'keep me');
  await assert.rejects(new NbdServer({ socketPath: notSocket, exports: exportsMap }).listen(), /not a socket/);
  assert.equal(await readFile(notSocket, 'utf8'), 'keep me');

  assert.throws(() => new NbdServer({ socketPath: stale, exports: new Map() }), /at least one export/);
  assert.throws(() => new NbdServer({ socketPath: stale, exports: new Map([['x', constrained(backend, { min: 3, preferred: 4096, max: MiB })]]) }), /power of two/);
});

test('vmseal disk serve serves a file until SIGTERM and removes its socket', T, async (t) => {
  const repo = resolve(import.meta.dirname, '../..');
  const entry = [
    "import { Command } from 'commander';",
    "import { registerDiskCommands } from './src/cli/commands/disk.ts';",
    "const p = new Command().name('vmseal'); registerDiskCommands(p);",
    "try { await p.parseAsync(process.argv); } catch (e) { process.stderr.write('vmseal: ' + e.message + '\\n'); process.exitCode = 1; }",
  ].join('\n');
  const cli = (args: string[]) =>
    spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', entry, 'vmseal', 'disk', 'serve', ...args], { cwd: repo });
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-disk-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const collect = (p: ReturnType<typeof cli>): Promise<{ code: number | null; out: string; err: string }> =>
    new Promise((res) => {
      let out = '';
      let err = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (err += d));
      p.on('exit', (code) => res({ code, out, err }));
    });

  const missing = await collect(cli(['--file', join(dir, 'nope.img'), '--socket', join(dir, 'a.sock')]));
  assert.equal(missing.code, 1);
  assert.match(missing.err, /nope\.img does not exist/);

  const file = join(dir, 'disk.img');
  await writeFile(file, Buffer.alloc(2 * MiB, 7));
  const sock = join(dir, 'serve.sock');
  const p = cli(['--file', file, '--socket', sock, '--export', 'boot', '--read-only']);
  t.after(() => p.kill('SIGKILL'));
  const done = collect(p);
  await waitFor('the socket', () => existsSync(sock), 30_000);
  const info = JSON.parse(await ok('nbdinfo', ['--json', `nbd+unix:///boot?socket=${sock}`])).exports[0];
  assert.deepEqual([info['export-size'], info.is_read_only], [2 * MiB, true]);
  p.kill('SIGTERM');
  const r = await done;
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /serving .*disk\.img \(2097152 bytes, read-only\) as NBD export "boot" on .*serve\.sock/);
  assert.equal(r.out.trim().split('\n').length, 1);
  assert.equal(existsSync(sock), false);
});

test('a listening server keeps serving while other unix-socket servers come and go', T, async (t) => {
  // Regression guard for removeStaleSocket: probing must not disturb a foreign live socket.
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-nbd-foreign-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'foreign.sock');
  const foreign = createServer((s) => {
    s.on('error', () => undefined);
    s.end('hello');
  });
  await new Promise<void>((res) => foreign.listen(path, res));
  t.after(() => new Promise<void>((res) => foreign.close(() => res())));
  const backend = await FileBackend.open(process.execPath, { readOnly: true });
  t.after(() => backend.close());
  await assert.rejects(new NbdServer({ socketPath: path, exports: new Map([['x', backend]]) }).listen(), /another server/);
  const hello = await new Promise<string>((res) => {
    const s = connect(path);
    let d = '';
    s.on('data', (x) => (d += x));
    s.on('close', () => res(d));
  });
  assert.equal(hello, 'hello');
});
