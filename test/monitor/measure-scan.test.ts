import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseImaAscii, findTemplateHashMismatch } from '../../src/formats/ima.ts';
import { buildMbr, MBR_TYPE_LINUX } from '../../src/formats/mbr.ts';
import { FileBackend } from '../../src/monitor/disk/file-backend.ts';
import { ProtectedBackend, type WriteRefusal } from '../../src/monitor/disk/protected-backend.ts';
import { makeBaseline, parseBaseline } from '../../src/formats/file-baseline.ts';
import { backendReader, openGuestVolume } from '../../src/monitor/measure/guest-volume.ts';
import { protectedRangesFor } from '../../src/monitor/measure/protect-map.ts';
import { scanDisk } from '../../src/monitor/measure/scan.ts';
import { buildNtfsImage, ntfscat } from '../formats/ntfs-image.ts';

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('agentless scan', () => {
  let dir: string;
  let ext4Disk: string;
  let tree: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmseal-scan-'));
    tree = path.join(dir, 'tree');
    fs.mkdirSync(path.join(tree, 'etc'), { recursive: true });
    fs.mkdirSync(path.join(tree, 'bin'));
    fs.writeFileSync(path.join(tree, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
    fs.writeFileSync(path.join(tree, 'bin', 'tool'), randomBytes(3 << 20));
    for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(tree, 'etc', `conf${i}`), `v${i}\n`); // a hashed (htree) directory
    fs.symlinkSync('/bin/tool', path.join(tree, 'bin', 'link'));
    // An MBR disk with one ext4 partition at 1 MiB, as the demo guest's.
    const part = path.join(dir, 'part.img');
    execFileSync('truncate', ['-s', '32M', part]);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-d', tree, part]);
    ext4Disk = path.join(dir, 'disk.raw');
    const mbr = buildMbr({ partitions: [{ type: MBR_TYPE_LINUX, startLba: 2048, sectors: 65536 }] });
    fs.writeFileSync(ext4Disk, Buffer.concat([Buffer.from(mbr), Buffer.alloc((1 << 20) - 512), fs.readFileSync(part)]));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('ext4: every file hashed, list parses as IMA, baseline diff finds the change', async () => {
    const fb = await FileBackend.open(ext4Disk, { readOnly: true });
    const read = backendReader(fb);
    const r = await scanDisk(read, fb.size);
    assert.equal(r.filesystem, 'ext4');
    assert.equal(r.offset, 1 << 20);
    assert.equal(r.files.length, 302);
    assert.equal(r.files.find((f) => f.path === '/bin/tool')!.sha256, sha256(fs.readFileSync(path.join(tree, 'bin', 'tool'))));
    assert.equal(r.files.find((f) => f.path === '/etc/conf299')!.sha256, sha256(Buffer.from('v299\n')));
    const ima = parseImaAscii(r.measurementList);
    assert.equal(ima.length, 302);
    assert.equal(findTemplateHashMismatch(ima), -1, 'template hashes are what the kernel would compute');
    assert.equal(ima[0]!.template, 'ima-ng');

    const baseline = parseBaseline(Buffer.from(JSON.stringify(makeBaseline('ext4', new Map(r.files.map((f) => [f.path, f.sha256]))))));
    baseline.files['/etc/gone'] = 'a'.repeat(64);
    baseline.files['/etc/passwd'] = 'b'.repeat(64);
    delete baseline.files['/etc/conf7'];
    const d = await scanDisk(read, fb.size, { baseline, paths: ['/etc'] });
    assert.deepEqual(d.diff, { added: ['/etc/conf7'], modified: ['/etc/passwd'], removed: ['/etc/gone'] });
    assert.equal(d.files.length, 301);
    const m = await scanDisk(read, fb.size, { paths: ['/nope', '/bin/tool'] });
    assert.deepEqual(m.missing, ['/nope']);
    assert.throws(() => parseBaseline(Buffer.from('{"v":2}')), /baseline/);
    await fb.close();
  });

  test('ntfs: Windows tree scanned with compressed files reported, digests match ntfscat', async () => {
    const image = buildNtfsImage(dir);
    const fb = await FileBackend.open(image, { readOnly: true });
    const r = await scanDisk(backendReader(fb), fb.size, { paths: ['/windows/system32', '/inetpub'] });
    assert.equal(r.filesystem, 'ntfs');
    const idx = r.files.find((f) => f.path === '/inetpub/wwwroot/index.html')!;
    assert.equal(idx.sha256, sha256(ntfscat(image, '/inetpub/wwwroot/index.html')));
    assert.ok(r.files.some((f) => f.path === '/Windows/System32/ntoskrnl.exe'));
    assert.ok(!r.files.some((f) => f.path.startsWith('/Windows/Temp')));
    const all = await scanDisk(backendReader(fb), fb.size);
    assert.deepEqual(all.unsupported, [{ path: '/Compressed/log.txt', reason: 'compressed' }]);
    await fb.close();
  });

  test('protection map + backend: protected bytes refuse changes, identical rewrites and other blocks pass', async () => {
    const copy = path.join(dir, 'prot.raw');
    fs.copyFileSync(ext4Disk, copy);
    const fb = await FileBackend.open(copy);
    const vol = await openGuestVolume(backendReader(fb), fb.size);
    assert.equal(vol.kind, 'ext4');
    if (vol.kind !== 'ext4') return;
    const ranges = await protectedRangesFor(vol.fs, ['/etc/passwd', '/bin'], vol.offset);
    assert.ok(ranges.some((r) => r.label === '/bin/tool data'), 'directories are protected recursively');
    assert.ok(ranges.some((r) => r.label === '/bin entries'));
    const log: WriteRefusal[] = [];
    const pb = new ProtectedBackend(fb, ranges, (r) => log.push(r));
    const data = ranges.find((r) => r.label === '/etc/passwd data')!;
    await assert.rejects(pb.write(data.offset, Buffer.alloc(4096, 0x41), false), (e: NodeJS.ErrnoException) => e.code === 'EPERM');
    await assert.rejects(pb.trim(data.offset, 4096, false), (e: NodeJS.ErrnoException) => e.code === 'EPERM');
    await assert.rejects(pb.writeZeroes(data.offset, 4096, false), (e: NodeJS.ErrnoException) => e.code === 'EPERM');
    assert.deepEqual(log.map((l) => [l.op, l.labels]), [
      ['write', ['/etc/passwd data']],
      ['trim', ['/etc/passwd data']],
      ['write-zeroes', ['/etc/passwd data']],
    ]);
    // The inode-table block: rewriting it unchanged passes; changing the protected inode's size does not.
    const inodeRange = ranges.find((r) => r.label.startsWith('/etc/passwd (inode'))!;
    const blockStart = Math.floor(inodeRange.offset / 4096) * 4096;
    const block = Buffer.alloc(4096);
    await pb.read(blockStart, 4096, block);
    await pb.write(blockStart, block, false);
    const atime = Buffer.from(block);
    atime.writeUInt32LE(12345, inodeRange.offset - blockStart + 8); // i_atime is left writable
    await pb.write(blockStart, atime, false);
    const sized = Buffer.from(atime);
    sized.writeUInt32LE(0, inodeRange.offset - blockStart + 4); // i_size_lo
    await assert.rejects(pb.write(blockStart, sized, false), /protected \/etc\/passwd \(inode/);
    // A free block far from everything protected.
    await pb.write(fb.size - 4096, Buffer.alloc(4096, 7), false);
    assert.equal(pb.refusals, 4);
    const check = await openGuestVolume(backendReader(fb), fb.size);
    if (check.kind !== 'ext4') return;
    assert.equal((await check.fs.readFile(await check.fs.lookup('/etc/passwd'))).toString(), 'root:x:0:0::/root:/bin/sh\n');
    await fb.close();
  });
});
