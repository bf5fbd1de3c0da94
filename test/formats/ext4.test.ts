/**
 * The ext4 reader against images made by mke2fs -d (e2fsprogs) from a known tree, with several
 * feature sets (ext4 64-bit and 32-bit, no journal, 1 KiB blocks, ext3/ext2 block maps, no filetype),
 * checked against the source tree (contents by SHA-256, symlink targets, sizes) and against debugfs
 * (inode numbers and modes from `ls -p`, physical blocks from `blocks`, htree directories after
 * `e2fsck -D`); then the real demo guest disk; then hostile images.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildGuest } from '../../src/guest/build.ts';
import { Ext4, Ext4Error, isDir, isRegular, isSymlink, type ReadAt } from '../../src/formats/ext4/index.ts';

const work = mkdtempSync(join(tmpdir(), 'ext4-test-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

const overBuffer = (img: Buffer): ReadAt => async (off, len) => {
  if (off < 0 || off + len > img.length) throw new Error('read past the image');
  return img.subarray(off, off + len);
};
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const debugfs = (img: string, cmd: string) => execFileSync('debugfs', ['-R', cmd, img], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();

interface Expected { type: 'file' | 'dir' | 'link'; sha?: string; size?: number; target?: string }

function makeTree(): { dir: string; expected: Map<string, Expected> } {
  const dir = join(work, 'src');
  mkdirSync(dir);
  const put = (rel: string, data: Buffer) => writeFileSync(join(dir, rel), data);
  put('empty', Buffer.alloc(0));
  put('small.txt', Buffer.from('hello ext4\n'));
  put('two-blocks.bin', randomBytes(5000));
  put('large.bin', randomBytes(3 * 1024 * 1024 + 17));
  mkdirSync(join(dir, 'bin'));
  put('bin/tool', randomBytes(70_000));
  // A fragmented sparse file: one data block every other 4 KiB, so the extent tree needs index nodes.
  const frag = openSync(join(dir, 'fragmented.bin'), 'w');
  for (let i = 0; i < 600; i++) writeSync(frag, randomBytes(4096), 0, 4096, i * 8192);
  closeSync(frag);
  // Data past 64 MiB reaches the triple-indirect block of a 1 KiB-block block map.
  const sparse = openSync(join(dir, 'sparse.bin'), 'w');
  writeSync(sparse, Buffer.from('start'), 0, 5, 0);
  writeSync(sparse, randomBytes(3000), 0, 3000, 70 * 1024 * 1024);
  closeSync(sparse);
  let deep = dir;
  for (let i = 0; i < 40; i++) {
    deep = join(deep, `d${i}`);
    mkdirSync(deep);
  }
  writeFileSync(join(deep, 'bottom'), 'deep\n');
  mkdirSync(join(dir, 'many'));
  for (let i = 0; i < 2500; i++) put(`many/file-with-a-longish-name-${i}`, Buffer.from(String(i)));
  symlinkSync('small.txt', join(dir, 'fast-link'));
  symlinkSync(`/${'x'.repeat(80)}/${'y'.repeat(80)}`, join(dir, 'slow-link'));
  symlinkSync('../../small.txt', join(dir, 'bin', 'rel-link'));
  symlinkSync('/bin', join(dir, 'abs-dir-link'));
  const expected = new Map<string, Expected>();
  const walk = (d: string, rel: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const r = `${rel}/${name}`;
      const st = lstatSync(p);
      if (st.isSymbolicLink()) expected.set(r, { type: 'link', target: readlinkSync(p) });
      else if (st.isDirectory()) {
        expected.set(r, { type: 'dir' });
        walk(p, r);
      } else expected.set(r, { type: 'file', sha: sha(readFileSync(p)), size: st.size });
    }
  };
  walk(dir, '');
  return { dir, expected };
}

const tree = makeTree();

const FEATURE_SETS: Array<{ name: string; args: string[] }> = [
  { name: 'ext4 64bit 4k', args: ['-t', 'ext4', '-O', '64bit', '-b', '4096'] },
  { name: 'ext4 32bit no journal 1k', args: ['-t', 'ext4', '-O', '^64bit,^has_journal', '-b', '1024'] },
  { name: 'ext3 block map 1k', args: ['-t', 'ext3', '-b', '1024'] },
  { name: 'ext2 no filetype 2k', args: ['-t', 'ext2', '-O', '^filetype', '-b', '2048'] },
];

for (const fs of FEATURE_SETS) {
  test(`mke2fs -d image (${fs.name}) reads back the source tree exactly`, { timeout: 300_000 }, async () => {
    const img = join(work, `${fs.name.replace(/\W+/g, '-')}.img`);
    execFileSync('mke2fs', ['-q', '-F', ...fs.args, '-N', '4096', '-d', tree.dir, img, '96M'], { stdio: 'ignore' });
    execFileSync('e2fsck', ['-fyD', img], { stdio: 'ignore' }); // -D: index large directories (htree)
    const e = await Ext4.open(overBuffer(readFileSync(img)));
    const seen = new Set<string>();
    for await (const { path, inode } of e.walk('/')) {
      if (path === '/lost+found') continue;
      const want = tree.expected.get(path);
      assert.ok(want, `unexpected ${path}`);
      seen.add(path);
      if (want.type === 'dir') assert.ok(isDir(inode), path);
      else if (want.type === 'link') {
        assert.ok(isSymlink(inode), path);
        assert.equal(await e.readlink(inode), want.target, path);
      } else {
        assert.ok(isRegular(inode), path);
        assert.equal(inode.size, want.size, path);
        const h = createHash('sha256');
        for await (const c of e.contents(inode)) h.update(c);
        assert.equal(h.digest('hex'), want.sha, path);
      }
    }
    assert.equal(seen.size, tree.expected.size);

    // debugfs: inode numbers and modes of a directory listing, and the physical blocks of files.
    const listing = debugfs(img, 'ls -p /bin').trim().split('\n').filter(Boolean).map((l) => l.split('/'));
    const ours = await e.readdir(await e.lookup('/bin'));
    for (const [, ino, mode, , , name] of listing) {
      const entry = ours.find((x) => x.name === name);
      assert.equal(entry?.ino, Number(ino), `/bin/${name} inode`);
      assert.equal((await e.inode(Number(ino))).mode.toString(8).padStart(6, '0'), mode);
    }
    for (const file of ['/fragmented.bin', '/sparse.bin', '/large.bin']) {
      const inode = await e.lookup(file);
      const ourBlocks = (await e.runs(inode)).flatMap((r) => Array.from({ length: r.length }, (_, i) => r.physical + i));
      const theirs = debugfs(img, `blocks ${file}`).trim().split(/\s+/).map(Number);
      // debugfs `blocks` lists the data blocks and the indirect / extent-tree blocks: exactly ours plus mapBlocks.
      const map = await e.mapBlocks(inode);
      assert.deepEqual([...ourBlocks, ...map].sort((a, b) => a - b), [...theirs].sort((a, b) => a - b), `${file} data + map blocks`);
      if (file === '/fragmented.bin') assert.ok(map.length > 0, 'the fragmented file has extent-tree or indirect blocks');
      // debugfs `imap`: the inode's block and offset in the inode table.
      const imap = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(debugfs(img, `imap ${file}`));
      assert.ok(imap, `debugfs imap ${file}`);
      assert.equal(await e.inodeLocation(inode.ino), Number(imap[1]) * e.sb.blockSize + parseInt(imap[2]!, 16), `${file} inode location`);
    }
    assert.deepEqual(await e.mapBlocks(await e.lookup('/small.txt')), [], 'a one-extent file has no map blocks');
    assert.ok(((await e.inode((await e.lookup('/many')).ino)).flags & 0x1000) !== 0 || fs.name.includes('ext2'), '/many is an htree directory');

    // Lookup: symlinks in the middle are followed, .. works, a final symlink only on request.
    assert.equal((await e.readFile(await e.lookup('/abs-dir-link/rel-link', true))).toString(), 'hello ext4\n');
    assert.ok(isSymlink(await e.lookup('/abs-dir-link/rel-link')));
    assert.equal((await e.lookup('/bin/../small.txt')).ino, (await e.lookup('/small.txt')).ino);
    await assert.rejects(e.lookup('/nope'), /not found/);
    await assert.rejects(e.lookup('/small.txt/x'), /not a directory/);
  });
}

test('the demo guest disk: every file equals what debugfs rdump extracts', { timeout: 300_000 }, async () => {
  const guest = await buildGuest();
  const PART = 1024 * 1024;
  const out = join(work, 'rdump');
  mkdirSync(out);
  execFileSync('debugfs', ['-R', `rdump / ${out}`, `${guest.disk}?offset=${PART}`], { stdio: 'ignore' });
  const fh = await open(guest.disk, 'r');
  try {
    const e = await Ext4.open(async (off, len) => {
      const b = Buffer.alloc(len);
      const { bytesRead } = await fh.read(b, 0, len, PART + off);
      return b.subarray(0, bytesRead);
    });
    let files = 0;
    for await (const { path, inode } of e.walk('/')) {
      const local = join(out, path);
      const st = lstatSync(local);
      if (isRegular(inode)) {
        assert.equal(sha(await e.readFile(inode)), sha(readFileSync(local)), path);
        files++;
      } else if (isSymlink(inode)) assert.equal(await e.readlink(inode), readlinkSync(local), path);
      else if (isDir(inode)) assert.ok(st.isDirectory(), path);
    }
    assert.ok(files > 10);
    const busybox = await e.lookup('/bin/busybox', true);
    assert.ok(busybox.size > 500_000);
  } finally {
    await fh.close();
  }
});

test('hostile images: loops, bad records and huge sizes give Ext4Error', async () => {
  const img = join(work, 'hostile.img');
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '1024', '-N', '4096', '-d', tree.dir, img, '96M'], { stdio: 'ignore' });
  const pristine = readFileSync(img);
  const e0 = await Ext4.open(overBuffer(pristine));
  const bs = e0.sb.blockSize;
  const inodeOffset = async (ino: number) => {
    const group = Math.floor((ino - 1) / e0.sb.inodesPerGroup);
    const desc = pristine.subarray(2 * bs + group * e0.sb.descSize); // 1 KiB blocks: GDT at block 2
    return desc.readUInt32LE(8) * bs + ((ino - 1) % e0.sb.inodesPerGroup) * e0.sb.inodeSize;
  };

  // Extent index pointing at its own block: a loop.
  const frag = await e0.lookup('/fragmented.bin');
  const fragOff = await inodeOffset(frag.ino);
  const loop = Buffer.from(pristine);
  assert.ok(loop.readUInt16LE(fragOff + 40 + 6) > 0, 'fragmented.bin has an indexed extent tree');
  const child = loop.readUInt32LE(fragOff + 40 + 12 + 4);
  loop.writeUInt32LE(child, child * bs + 12 + 4); // the index node's first entry points back at itself
  loop.writeUInt16LE(loop.readUInt16LE(child * bs + 6) || 1, child * bs + 6);
  const e1 = await Ext4.open(overBuffer(loop));
  await assert.rejects(e1.readFile(await e1.inode(frag.ino)), Ext4Error);

  // Directory record length 0 (would spin forever if trusted).
  const root = await e0.inode(2);
  const [rootRun] = await e0.runs(root);
  const zero = Buffer.from(pristine);
  zero.writeUInt16LE(0, rootRun!.physical * bs + 4);
  const e2 = await Ext4.open(overBuffer(zero));
  await assert.rejects(e2.readdir(await e2.inode(2)), /record length 0/);

  // A directory that contains its own ancestor: the walk reports the loop.
  const bin = await e0.lookup('/bin');
  const [binRun] = await e0.runs(bin);
  const cyc = Buffer.from(pristine);
  const binBlock = cyc.subarray(binRun!.physical * bs, (binRun!.physical + 1) * bs);
  let off = 0;
  for (;;) {
    const len = binBlock.readUInt16LE(off + 4);
    const name = binBlock.subarray(off + 8, off + 8 + (binBlock[off + 6] ?? 0)).toString();
    if (name === 'tool') {
      binBlock.writeUInt32LE(2, off); // /bin/tool → the root directory inode
      binBlock[off + 7] = 2;
      break;
    }
    off += len;
  }
  const e3 = await Ext4.open(overBuffer(cyc));
  await assert.rejects((async () => { for await (const _ of e3.walk('/')) void _; })(), /directory loop/);

  // A file claiming an absurd size: readFile refuses before reading, streaming refuses beyond ext4's maximum.
  const huge = Buffer.from(pristine);
  const smallOff = await inodeOffset((await e0.lookup('/small.txt')).ino);
  huge.writeUInt32LE(0xffffffff, smallOff + 4);
  huge.writeUInt32LE(0x10000, smallOff + 108);
  const e4 = await Ext4.open(overBuffer(huge));
  const bigInode = await e4.lookup('/small.txt');
  await assert.rejects(e4.readFile(bigInode), /over the/);
  await assert.rejects((async () => { for await (const _ of e4.contents(bigInode)) void _; })(), /beyond the ext4 maximum/);

  // Superblock damage and short reads.
  const bad = Buffer.from(pristine);
  bad.writeUInt16LE(0, 1024 + 56);
  await assert.rejects(Ext4.open(overBuffer(bad)), /magic/);
  await assert.rejects(Ext4.open(async () => Buffer.alloc(10)), /short read/);
  const incompat = Buffer.from(pristine);
  incompat.writeUInt32LE(incompat.readUInt32LE(1024 + 96) | 0x10000, 1024 + 96);
  await assert.rejects(Ext4.open(overBuffer(incompat)), /ENCRYPT/);
});
