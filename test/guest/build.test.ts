import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, linkSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, closeSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseMbr } from '../../src/formats/mbr.ts';
import { buildGuest, type GuestBuild } from '../../src/guest/build.ts';
import { GUEST_CMDLINE, GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { partitionSpec, PARTITION_OFFSET, DISK_BYTES } from '../../src/guest/disk-image.ts';
import { parseControlStanza, parseDepends } from '../../src/guest/kernel-package.ts';
import { artifactReady, readManifest, writeFileAtomic, type Manifest } from '../../src/guest/manifest.ts';
import { sortModules } from '../../src/guest/modules.ts';

const BUILD_TIMEOUT = 15 * 60_000;

function withTemp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-guest-test-'));
  return fn(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

function debugfs(disk: string, request: string): { stdout: string; stderr: string } {
  const r = spawnSync('debugfs', ['-R', request, partitionSpec(disk)], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return { stdout: r.stdout, stderr: r.stderr };
}

/** depends= of a module, read by readelf (the oracle), not by our parser. */
function readelfDepends(ko: string): string[] {
  const dump = execFileSync('readelf', ['-p', '.modinfo', ko], { encoding: 'utf8' });
  const line = /depends=(.*)$/m.exec(dump)?.[1]?.trim() ?? '';
  return line === '' ? [] : line.split(',').map((d) => d.replaceAll('-', '_'));
}

let first: { build: GuestBuild; progress: string[] } | undefined;
async function cachedBuild(): Promise<GuestBuild> {
  if (!first) {
    const progress: string[] = [];
    first = { build: await buildGuest({ onProgress: (m) => progress.push(m) }), progress };
  }
  return first.build;
}

test('buildGuest returns absolute paths, the exported cmdline and a cloud kernel version', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  for (const p of [g.kernel, g.initrd, g.disk, g.systemMap]) {
    assert.ok(p.startsWith('/'), p);
    assert.ok(p.includes(`/guest/${g.kernelVersion}/`), p);
    assert.ok(statSync(p).isFile());
  }
  assert.match(g.kernelVersion, /^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
  assert.equal(g.cmdline, GUEST_CMDLINE);
  assert.match(g.cmdline, /(^| )console=ttyS0( |$)/);
  assert.match(g.cmdline, /(^| )ima_policy=tcb( |$)/);
});

test('the kernel is a bzImage', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  assert.equal(readAt(g.kernel, 0x202, 4).toString('latin1'), 'HdrS');
  assert.deepEqual([...readAt(g.kernel, 0x1fe, 2)], [0x55, 0xaa]);
});

test('the disk has an MBR with one Linux partition at 1 MiB holding a clean ext4 root', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  assert.equal(statSync(g.disk).size, DISK_BYTES);
  const mbr = readAt(g.disk, 0, 512);
  assert.deepEqual([mbr[510], mbr[511]], [0x55, 0xaa]);
  const { partitions } = parseMbr(mbr, DISK_BYTES / 512);
  assert.equal(partitions.length, 1);
  assert.equal(partitions[0]!.type, 0x83);
  assert.equal(partitions[0]!.startLba * 512, PARTITION_OFFSET);
  assert.equal((partitions[0]!.startLba + partitions[0]!.sectors) * 512, DISK_BYTES);

  const fsck = spawnSync('e2fsck', ['-f', '-n', partitionSpec(g.disk)], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, `${fsck.stdout}${fsck.stderr}`);

  for (const path of ['/sbin/init', '/etc/inittab', '/bin/busybox', '/etc/init.d/rcS', '/etc/init.d/rcK', '/etc/acpi/PWRF/00000080', '/usr/sbin/vmseal-sensord']) {
    const { stdout, stderr } = debugfs(g.disk, `stat ${path}`);
    assert.doesNotMatch(stderr, /not found/, path);
    assert.match(stdout, /User:\s+0\s+Group:\s+0/, `${path} is owned by root`);
  }
  assert.match(debugfs(g.disk, 'stat /sbin/init').stdout, /Type: symlink/);
  const inittab = debugfs(g.disk, 'cat /etc/inittab').stdout;
  assert.match(inittab, /^::sysinit:\/etc\/init.d\/rcS$/m);
  assert.match(inittab, /^ttyS0::respawn:/m);
  assert.match(inittab, /^::shutdown:\/etc\/init.d\/rcK$/m);
  const rcS = debugfs(g.disk, 'cat /etc/init.d/rcS').stdout;
  assert.match(rcS, new RegExp(`^echo "${GUEST_READY_MARKER}"$`, 'm'));
  assert.match(rcS, /securityfs \/sys\/kernel\/security/);
  assert.match(debugfs(g.disk, 'cat /etc/init.d/rcK').stdout, /mount -o remount,ro \//);
  for (const path of ['/usr/bin/tpm2', '/usr/bin/tpm2_nvread', '/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0', '/lib64/ld-linux-x86-64.so.2', '/lib/x86_64-linux-gnu/libc.so.6']) {
    assert.doesNotMatch(debugfs(g.disk, `stat ${path}`).stderr, /not found/, path);
  }
  assert.match(debugfs(g.disk, 'cat /etc/passwd').stdout, /^vmseal:x:1000:1000:/m);
  assert.match(debugfs(g.disk, 'cat /etc/profile').stdout, /^export TPM2TOOLS_TCTI=device:\/dev\/tpmrm0$/m);
  const manifest = await readManifest(dirname(g.disk));
  assert.ok(manifest?.rootfsPackages?.some((p) => p.name === 'tpm2-tools'), 'the manifest names the packages the rootfs took files from');
});

test('a cache without System.map gets it from the -dbg package, and the disk is not rebuilt', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  await withTemp(async (cache) => {
    const from = dirname(g.disk);
    const dir = join(cache, 'guest', g.kernelVersion);
    mkdirSync(dir, { recursive: true });
    // Hard links: an artifact that is rebuilt lands by rename and leaves the shared inode alone.
    for (const f of ['vmlinuz', 'initrd.img', 'disk.raw']) linkSync(join(from, f), join(dir, f));
    const manifest = (await readManifest(from))!;
    delete manifest.artifacts.systemMap;
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));
    const progress: string[] = [];
    const again = await buildGuest({ cacheDir: cache, onProgress: (m) => progress.push(m) });
    assert.ok(progress.includes('building: systemMap'), progress.join('\n'));
    assert.deepEqual(readFileSync(again.systemMap), readFileSync(g.systemMap));
    for (const f of ['vmlinuz', 'initrd.img', 'disk.raw']) assert.equal(statSync(join(dir, f)).ino, statSync(join(from, f)).ino, `${f} kept`);
    assert.deepEqual((await readManifest(dir))?.artifacts.systemMap, (await readManifest(from))?.artifacts.systemMap);
  });
});

test('the initramfs holds /init and the modules in dependency order', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  const cpio = execFileSync('gzip', ['-dc', g.initrd], { maxBuffer: 1 << 28 });
  const members = execFileSync('cpio', ['-t', '--quiet'], { input: cpio, encoding: 'utf8' }).trim().split('\n');
  assert.ok(members.includes('init'));
  assert.ok(members.includes('bin/busybox'));
  const modules = members.filter((m) => /^lib\/modules\/[^/]+\.ko$/.test(m)).map((m) => m.slice('lib/modules/'.length, -3));
  for (const needed of ['virtio_ring', 'virtio', 'virtio_pci', 'virtio_blk', 'virtio_console', 'evdev', 'button']) {
    assert.ok(modules.includes(needed), `${needed} in ${modules.join(' ')}`);
  }
  await withTemp(async (dir) => {
    execFileSync('cpio', ['-i', '-d', '--quiet'], { cwd: dir, input: cpio });
    for (const [i, name] of modules.entries()) {
      for (const dep of readelfDepends(join(dir, 'lib', 'modules', `${name}.ko`))) {
        const at = modules.indexOf(dep);
        assert.ok(at >= 0 && at < i, `${name} needs ${dep}, which must come earlier in ${modules.join(' ')}`);
      }
    }
    const init = readFileSync(join(dir, 'init'), 'utf8');
    assert.equal(/^MODULES="(.*)"$/m.exec(init)?.[1], modules.join(' '), '/init loads them in archive order');
    assert.ok(statSync(join(dir, 'init')).mode & 0o100, '/init is executable');
  });
  const listing = execFileSync('cpio', ['-t', '-v', '--quiet'], { input: cpio, encoding: 'utf8' });
  for (const line of listing.trim().split('\n')) assert.match(line, /^\S+\s+\d+\s+root\s+root\s/, line);
});

test('a second call reuses the cache without touching the artifacts', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  const before = [g.kernel, g.initrd, g.disk, g.systemMap].map((p) => statSync(p).mtimeMs);
  const progress: string[] = [];
  const again = await buildGuest({ onProgress: (m) => progress.push(m) });
  assert.deepEqual(again, g);
  assert.deepEqual([again.kernel, again.initrd, again.disk, again.systemMap].map((p) => statSync(p).mtimeMs), before);
  assert.ok(progress.some((m) => m.startsWith('cached guest is complete')), progress.join('\n'));
  assert.ok(!progress.some((m) => m.startsWith('downloading') || m.startsWith('building')), progress.join('\n'));
});

test('vmseal guest build --json prints the build as its last stdout line', { timeout: BUILD_TIMEOUT }, async () => {
  const g = await cachedBuild();
  // The command alone, in its own process (stdout is the test runner's channel here).
  const script = [
    "import { Command } from 'commander';",
    "import { registerGuestCommands } from './src/cli/commands/guest.ts';",
    'const program = new Command();',
    'registerGuestCommands(program);',
    "await program.parseAsync(['guest', 'build', '--json'], { from: 'user' });",
  ].join('\n');
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: BUILD_TIMEOUT });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.deepEqual(JSON.parse(lines[lines.length - 1]!), g);
  assert.match(r.stderr, /^guest: cached guest is complete/m, 'progress goes to stderr as plain lines without a TTY');
});

// ---- fallbacks when apt cannot help, with fake apt tools and a fake cache ----

function fakeBuild(cache: string, version: string, updatedAt: string, complete = true): void {
  const dir = join(cache, 'guest', version);
  mkdirSync(dir, { recursive: true });
  const files = { kernel: 'vmlinuz', initrd: 'initrd.img', disk: 'disk.raw', systemMap: 'System.map' } as const;
  const manifest: Manifest = {
    kernelVersion: version,
    kernelPackage: { name: `linux-image-${version}`, version: '1' },
    cmdline: GUEST_CMDLINE,
    artifacts: {},
    updatedAt,
  };
  for (const [kind, file] of Object.entries(files) as Array<[keyof typeof files, string]>) {
    if (complete || kind !== 'disk') writeFileSync(join(dir, file), 'x');
    manifest.artifacts[kind] = { file, bytes: 1, recipe: 'test' };
  }
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));
}

async function withFakeTool<T>(tool: string, script: string, fn: () => Promise<T>): Promise<T> {
  const bin = mkdtempSync(join(tmpdir(), 'vmseal-fakebin-'));
  const path = process.env.PATH;
  writeFileSync(join(bin, tool), `#!/bin/sh\n${script}\n`);
  chmodSync(join(bin, tool), 0o755);
  process.env.PATH = `${bin}:${path}`;
  try {
    return await fn();
  } finally {
    process.env.PATH = path;
    rmSync(bin, { recursive: true, force: true });
  }
}

test('without apt metadata the newest complete cached build is used, and said so', { timeout: 120_000 }, async () => {
  await withTemp(async (cache) => {
    fakeBuild(cache, '6.0.0-1-cloud-amd64', '2025-01-01T00:00:00.000Z');
    fakeBuild(cache, '6.0.0-2-cloud-amd64', '2025-02-01T00:00:00.000Z');
    fakeBuild(cache, '6.0.0-3-cloud-amd64', '2025-03-01T00:00:00.000Z', false); // newer but incomplete
    await withFakeTool('apt-cache', 'echo "E: No packages found" >&2; exit 100', async () => {
      const progress: string[] = [];
      const g = await buildGuest({ cacheDir: cache, onProgress: (m) => progress.push(m) });
      assert.equal(g.kernelVersion, '6.0.0-2-cloud-amd64');
      assert.equal(g.kernel, join(cache, 'guest', '6.0.0-2-cloud-amd64', 'vmlinuz'));
      assert.ok(progress.some((m) => /apt-get update/.test(m)), progress.join('\n'));
      assert.ok(progress.some((m) => /using the newest cached guest instead: 6.0.0-2-cloud-amd64/.test(m)), progress.join('\n'));
    });
  });
});

test('without apt metadata and without a cache, the error says to run apt-get update', { timeout: 120_000 }, async () => {
  await withTemp(async (cache) => {
    await withFakeTool('apt-cache', 'echo "E: No packages found" >&2; exit 100', async () => {
      await assert.rejects(buildGuest({ cacheDir: cache }), /package lists are empty or stale; run `apt-get update` \(or scripts\/setup.sh\)/);
    });
  });
});

test('when the download fails, the newest complete cached build is used', { timeout: 120_000 }, async () => {
  await withTemp(async (cache) => {
    fakeBuild(cache, '6.0.0-1-cloud-amd64', '2025-01-01T00:00:00.000Z');
    await withFakeTool('apt-get', 'echo "E: Failed to fetch http://deb.debian.org/x.deb  Temporary failure resolving" >&2; exit 100', async () => {
      const progress: string[] = [];
      const g = await buildGuest({ cacheDir: cache, onProgress: (m) => progress.push(m) });
      assert.equal(g.kernelVersion, '6.0.0-1-cloud-amd64');
      assert.ok(progress.some((m) => /downloading linux-image-.* failed: .*Temporary failure resolving/s.test(m)), progress.join('\n'));
      // Nothing half-built was left to count as done.
      const dirs = readdirSync(join(cache, 'guest')).filter((d) => !d.startsWith('6.0.0-1'));
      for (const d of dirs) assert.deepEqual(readdirSync(join(cache, 'guest', d)), [], `${d} stays empty`);
    });
  });
});

// ---- pure pieces ----

test('sortModules: dependencies first, cycles and missing modules refused', () => {
  const graph = new Map<string, string[]>([
    ['virtio_blk', ['virtio', 'virtio_ring']],
    ['virtio_pci', ['virtio_ring', 'virtio_pci_modern_dev', 'virtio']],
    ['virtio_pci_modern_dev', []],
    ['virtio', []],
    ['virtio_ring', []],
  ]);
  assert.deepEqual(sortModules(['virtio_blk', 'virtio_pci'], graph), ['virtio', 'virtio_ring', 'virtio_blk', 'virtio_pci_modern_dev', 'virtio_pci']);
  assert.throws(
    () => sortModules(['a'], new Map([['a', ['b']], ['b', ['c']], ['c', ['a']]])),
    /module dependency cycle: a -> b -> c -> a/,
  );
  assert.throws(() => sortModules(['a'], new Map([['a', ['gone']]])), /module a depends on gone, which is not available/);
  assert.throws(() => sortModules(['nothing'], new Map()), /module nothing is not available/);
});

test('apt control stanzas and Depends fields', () => {
  const fields = parseControlStanza('Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDescription: a\n more\n\nPackage: other\n');
  assert.equal(fields.get('Package'), 'linux-image-cloud-amd64');
  assert.equal(fields.get('Description'), 'a\nmore');
  assert.deepEqual(parseDepends('linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)'), [{ name: 'linux-image-6.1.0-56-cloud-amd64', exactVersion: '6.1.192-2' }]);
  assert.deepEqual(parseDepends('a (>= 1), b:any | c'), [{ name: 'a' }, { name: 'b' }, { name: 'c' }]);
  assert.throws(() => parseDepends('a (= 1'), /cannot parse/);
});

test('manifest: an artifact counts only with its entry, its recipe and its full size', { timeout: 30_000 }, async () => {
  await withTemp(async (dir) => {
    await writeFileAtomic(join(dir, 'vmlinuz'), 'kernel');
    assert.deepEqual(readdirSync(dir), ['vmlinuz'], 'no temp file left behind');
    const manifest: Manifest = {
      kernelVersion: 'v',
      kernelPackage: { name: 'p', version: '1' },
      cmdline: GUEST_CMDLINE,
      artifacts: { kernel: { file: 'vmlinuz', bytes: 6, recipe: 'r1' } },
      updatedAt: new Date().toISOString(),
    };
    assert.equal(await artifactReady(dir, manifest, 'kernel', 'r1'), true);
    assert.equal(await artifactReady(dir, manifest, 'kernel', 'r2'), false, 'recipe changed');
    assert.equal(await artifactReady(dir, manifest, 'initrd', 'r1'), false, 'no entry (a crash before the manifest update)');
    assert.equal(await artifactReady(dir, undefined, 'kernel', 'r1'), false, 'no manifest');
    writeFileSync(join(dir, 'vmlinuz'), 'kern');
    assert.equal(await artifactReady(dir, manifest, 'kernel', 'r1'), false, 'size differs');
    writeFileSync(join(dir, 'manifest.json'), '{"kernelVersion": 5}');
    assert.equal(await readManifest(dir), undefined, 'a malformed manifest is ignored');
    await assert.rejects(writeFileAtomic(join(dir, 'missing-dir', 'f'), 'x'));
  });
});
