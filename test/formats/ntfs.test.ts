import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { NtfsError, parseBootSector } from '../../src/formats/ntfs/boot-sector.ts';
import { decodeDataRuns } from '../../src/formats/ntfs/data-runs.ts';
import { NtfsVolume, type ReadAt } from '../../src/formats/ntfs/volume.ts';
import { buildNtfsImage, ntfscat, ntfslsPaths } from './ntfs-image.ts';

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function bufferReader(buf: Buffer): ReadAt {
  return async (offset, length) => buf.subarray(offset, Math.min(buf.length, offset + length));
}

describe('NTFS reader against mkntfs + ntfs-3g images', () => {
  let dir: string;
  let image: string;
  let bytes: Buffer;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmseal-ntfs-'));
    image = buildNtfsImage(dir);
    bytes = fs.readFileSync(image);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('the tree matches ntfsls -R', async () => {
    const vol = await NtfsVolume.open(bufferReader(bytes));
    assert.deepEqual(vol.damaged, []);
    const ours = vol.walk().map((e) => `${e.isDirectory ? 'd' : 'f'} ${e.path}`).sort();
    const theirs = ntfslsPaths(image).map((e) => `${e.isDirectory ? 'd' : 'f'} ${e.path}`).sort();
    assert.deepEqual(ours, theirs);
    assert.ok(ours.includes('f /Windows/System32/cmd.exe'));
    assert.ok(ours.includes('f /inetpub/wwwroot/index.html'));
    assert.ok(ours.includes('d /Program Files'), 'the Win32 name wins over the DOS alias PROGRA~1');
    assert.ok(ours.filter((p) => p.startsWith('f /Windows/Temp/')).length === 80);
  });

  test('file contents match ntfscat, including sparse and fragmented files', async () => {
    const vol = await NtfsVolume.open(bufferReader(bytes), { scanChunk: 64 << 10 });
    let checked = 0;
    for (const e of vol.walk()) {
      if (e.isDirectory || e.unsupported) continue;
      assert.equal(sha256(await vol.readFile(e)), sha256(ntfscat(image, e.path)), e.path);
      checked++;
    }
    assert.ok(checked >= 86);
    const frag = vol.lookup('/windows/system32/FRAGMENTED.EXE')!;
    assert.ok(vol.extents(frag).length > 1, `fragmented.exe has ${vol.extents(frag).length} extents`);
    const sparse = vol.lookup('/sparse.vhd')!;
    assert.equal(sparse.unsupported, undefined);
    assert.equal(sha256(await vol.readFile(sparse)), sha256(ntfscat(image, '/sparse.vhd')));
    assert.equal(sparse.size, (8 << 20) + 4);
    assert.ok(vol.extents(sparse).reduce((n, x) => n + x.length, 0) < 1 << 20, 'sparse runs occupy no clusters');
    assert.equal(vol.lookup('/Windows/System32/tiny.ini')!.size, 8);
    assert.deepEqual(vol.extents(vol.lookup('/Windows/System32/tiny.ini')!), [], 'resident data has no extents');
  });

  test('streams are listed, compressed files are reported unsupported', async () => {
    const vol = await NtfsVolume.open(bufferReader(bytes));
    assert.deepEqual(vol.lookup('/Windows/System32/cmd.exe')!.streams, ['Zone.Identifier']);
    const comp = vol.lookup('/Compressed/log.txt')!;
    assert.equal(comp.unsupported, 'compressed');
    assert.equal(comp.size, 'hello compression\n'.length * 20000);
    await assert.rejects(vol.readFile(comp), /unsupported \(compressed\)/);
    assert.ok(vol.lookup('/Windows/System32/cmd.exe')!.standardInformation!.modified.getFullYear() >= 2024);
  });

  test('the extents of a file hold exactly its bytes', async () => {
    const vol = await NtfsVolume.open(bufferReader(bytes));
    const e = vol.lookup('/Windows/System32/ntoskrnl.exe')!;
    const joined = Buffer.concat(vol.extents(e).map((x) => bytes.subarray(x.offset, x.offset + x.length)));
    assert.equal(sha256(joined.subarray(0, e.size)), sha256(ntfscat(image, e.path)));
  });

  test('hostile images: torn records, runs off the volume, huge $MFT, bad boot sector', async () => {
    const vol = await NtfsVolume.open(bufferReader(bytes));
    const boot = vol.boot;
    const recOff = (r: number): number => boot.mftLcn * boot.clusterSize + r * boot.mftRecordSize;

    const badBoot = Buffer.from(bytes);
    badBoot.write('EXFAT   ', 3, 'latin1');
    await assert.rejects(NtfsVolume.open(bufferReader(badBoot)), NtfsError);

    // A torn $MFT record 0 (fixup mismatch) stops the open.
    const torn0 = Buffer.from(bytes);
    torn0.writeUInt16LE(torn0.readUInt16LE(recOff(0) + 510) ^ 0xffff, recOff(0) + 510);
    await assert.rejects(NtfsVolume.open(bufferReader(torn0)), /fixup mismatch in sector 0/);

    // A torn user record is reported as damaged and left out; the rest of the tree still reads.
    const cmd = vol.lookup('/Windows/System32/cmd.exe')!;
    const torn = Buffer.from(bytes);
    torn.writeUInt16LE(torn.readUInt16LE(recOff(cmd.record) + 1022) ^ 0xffff, recOff(cmd.record) + 1022);
    const tv = await NtfsVolume.open(bufferReader(torn));
    assert.equal(tv.damaged.length, 1);
    assert.match(tv.damaged[0]!.error, /fixup mismatch/);
    assert.equal(tv.lookup('/Windows/System32/cmd.exe'), undefined);
    assert.ok(tv.lookup('/inetpub/wwwroot/index.html'));

    // $MFT claiming an absurd size.
    const huge = Buffer.from(bytes);
    const rec0 = Buffer.from(bytes.subarray(recOff(0), recOff(0) + boot.mftRecordSize));
    // Find $DATA (0x80) in record 0 and set its data size to 2^40 (fixups do not cover offset 0x30 here).
    let at = rec0.readUInt16LE(0x14);
    while (rec0.readUInt32LE(at) !== 0x80) at += rec0.readUInt32LE(at + 4);
    huge.writeBigUInt64LE(1n << 40n, recOff(0) + at + 0x30);
    huge.writeBigUInt64LE(1n << 41n, recOff(0) + at + 0x28);
    await assert.rejects(NtfsVolume.open(bufferReader(huge)), /over the limit|inconsistent|exceeds/);

    // Truncated image: reads come back short, which is an error, not zeros.
    const short = bytes.subarray(0, vol.extents(cmd)[0]!.offset + 4096);
    await assert.rejects(
      (async () => {
        const sv = await NtfsVolume.open(bufferReader(short));
        await sv.readFile(sv.lookup('/Windows/System32/cmd.exe')!);
      })(),
      /short read/,
    );
  });

  test('boot sector checks', () => {
    const s = Buffer.from(bytes.subarray(0, 512));
    assert.equal(parseBootSector(s).clusterSize, 4096);
    const bad = Buffer.from(s);
    bad[0x0d] = 3;
    assert.throws(() => parseBootSector(bad), /power of two/);
  });
});

describe('NTFS data runs', () => {
  test('decodes lengths, signed offsets and sparse runs', () => {
    // 0x21: 1-byte length, 2-byte offset; 0x01: sparse; 0x11 with negative delta.
    const runs = decodeDataRuns(Uint8Array.from([0x21, 0x10, 0x00, 0x01, 0x01, 0x08, 0x11, 0x04, 0xf0, 0x00]), 0, 10000);
    assert.deepEqual(runs, [
      { vcn: 0, clusters: 16, lcn: 256 },
      { vcn: 16, clusters: 8, lcn: null },
      { vcn: 24, clusters: 4, lcn: 240 },
    ]);
  });
  test('refuses runs outside the volume, negative LCNs and wrong totals', () => {
    assert.throws(() => decodeDataRuns(Uint8Array.from([0x21, 0x10, 0xff, 0x7f, 0]), 0, 1000), /outside the volume/);
    assert.throws(() => decodeDataRuns(Uint8Array.from([0x11, 0x10, 0xf0, 0]), 0, 1000), /outside the volume/);
    assert.throws(() => decodeDataRuns(Uint8Array.from([0x11, 0x10, 0x10, 0]), 0, 1000, 17), /cover 16 clusters/);
    assert.throws(() => decodeDataRuns(Uint8Array.from([0x91, 0x10]), 0, 1000), /bad field sizes|past the end/);
  });
});
