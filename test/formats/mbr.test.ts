import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildMbr, MBR_TYPE_LINUX, MbrError, parseMbr, SECTOR_SIZE, type MbrSpec } from '../../src/formats/mbr.ts';

const LAYOUTS: Array<{ what: string; spec: MbrSpec; diskSectors: number }> = [
  {
    what: 'the guest disk: one Linux partition at 1 MiB filling 256 MiB',
    spec: { partitions: [{ type: MBR_TYPE_LINUX, startLba: 2048, sectors: 524288 - 2048 }] },
    diskSectors: 524288,
  },
  {
    what: 'four partitions, one bootable, with a disk signature',
    spec: {
      diskSignature: 0xdeadbeef,
      partitions: [
        { type: 0x83, startLba: 2048, sectors: 4096, bootable: true },
        { type: 0x82, startLba: 6144, sectors: 2048 },
        { type: 0x0c, startLba: 8192, sectors: 100000 },
        { type: 0x83, startLba: 108192, sectors: 1000 },
      ],
    },
    diskSectors: 200000,
  },
  {
    what: 'a partition beyond the CHS limit (saturated CHS)',
    spec: { partitions: [{ type: 0x83, startLba: 20_000_000, sectors: 1_000_000 }] },
    diskSectors: 21_000_000,
  },
];

interface FdiskRow {
  boot: boolean;
  startChs: string;
  endChs: string;
  start: number;
  end: number;
  sectors: number;
  id: number;
}

/** `busybox fdisk -l` on a sparse image holding the sector: the independent reading of the table. */
function fdiskList(sector: Uint8Array, diskSectors: number): FdiskRow[] {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-mbr-'));
  try {
    const image = join(dir, 'd');
    const fd = openSync(image, 'w');
    ftruncateSync(fd, diskSectors * SECTOR_SIZE);
    writeSync(fd, sector, 0, sector.length, 0);
    closeSync(fd);
    const out = execFileSync('busybox', ['fdisk', '-l', image], { encoding: 'utf8' });
    return out
      .split('\n')
      .filter((l) => l.startsWith(`${image}`) && !l.startsWith(`${image}:`))
      .map((l) => {
        const f = l.slice(image.length + 1).trim().split(/\s+/);
        const boot = f[0] === '*';
        const [startChs, endChs, start, end, sectors, , id] = boot ? f.slice(1) : f;
        return { boot, startChs: startChs!, endChs: endChs!, start: Number(start), end: Number(end), sectors: Number(sectors), id: Number.parseInt(id!, 16) };
      });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function chsOf(sector: Uint8Array, slot: number, at: 1 | 5): string {
  const o = 446 + slot * 16 + at;
  const head = sector[o]!;
  const sec = sector[o + 1]! & 0x3f;
  const cyl = sector[o + 2]! | ((sector[o + 1]! & 0xc0) << 2);
  return `${cyl},${head},${sec}`;
}

test('build -> parse round trip, and busybox fdisk reads the same table', () => {
  for (const { what, spec, diskSectors } of LAYOUTS) {
    const sector = buildMbr({ ...spec, diskSectors });
    assert.equal(sector.length, SECTOR_SIZE);
    assert.deepEqual([sector[510], sector[511]], [0x55, 0xaa], what);
    const parsed = parseMbr(sector, diskSectors);
    assert.equal(parsed.diskSignature, spec.diskSignature ?? 0, what);
    assert.deepEqual(
      parsed.partitions.map(({ type, startLba, sectors, bootable }) => ({ type, startLba, sectors, bootable })),
      spec.partitions.map((p) => ({ type: p.type, startLba: p.startLba, sectors: p.sectors, bootable: p.bootable ?? false })),
      what,
    );
    const rows = fdiskList(sector, diskSectors);
    assert.deepEqual(
      rows.map((r) => ({ boot: r.boot, start: r.start, end: r.end, sectors: r.sectors, id: r.id })),
      spec.partitions.map((p) => ({ boot: p.bootable ?? false, start: p.startLba, end: p.startLba + p.sectors - 1, sectors: p.sectors, id: p.type })),
      what,
    );
    rows.forEach((r, slot) => {
      assert.equal(r.startChs, chsOf(sector, slot, 1));
      assert.equal(r.endChs, chsOf(sector, slot, 5));
    });
  }
});

test('CHS fields follow the 255-head, 63-sector convention', () => {
  const sector = buildMbr({ partitions: [{ type: 0x83, startLba: 2048, sectors: 522240 }] });
  // LBA 2048 = cylinder 0, head 32, sector 33; LBA 524287 = cylinder 32, head 162, sector 2.
  assert.equal(chsOf(sector, 0, 1), '0,32,33');
  assert.equal(chsOf(sector, 0, 5), '32,162,2');
  const far = buildMbr({ partitions: [{ type: 0x83, startLba: 20_000_000, sectors: 10 }] });
  assert.deepEqual([...far.subarray(447, 450)], [0xfe, 0xff, 0xff]);
});

test('invalid specs are refused', () => {
  const p = { type: 0x83, startLba: 2048, sectors: 100 };
  const bad: Array<[MbrSpec, RegExp]> = [
    [{ partitions: [p, p, p, p, p] }, /at most 4/],
    [{ partitions: [{ ...p, type: 0 }] }, /type must be/],
    [{ partitions: [{ ...p, type: 256 }] }, /type must be/],
    [{ partitions: [{ ...p, startLba: 0 }] }, /start must be/],
    [{ partitions: [{ ...p, sectors: 0 }] }, /at least one sector/],
    [{ partitions: [{ ...p, startLba: 1.5 }] }, /start must be/],
    [{ partitions: [{ ...p, startLba: 0xffffff00, sectors: 0x1000 }] }, /2 TiB/],
    [{ partitions: [p, { ...p, startLba: 2100 }] }, /overlap/],
    [{ partitions: [p], diskSectors: 2100 }, /past the end/],
    [{ partitions: [p], diskSignature: -1 }, /signature/],
  ];
  for (const [spec, message] of bad) assert.throws(() => buildMbr(spec), (err: unknown) => err instanceof MbrError && message.test(err.message), message.source);
});

test('hostile boot sectors are refused with clear errors', () => {
  const good = () => buildMbr({ partitions: [{ type: 0x83, startLba: 2048, sectors: 4096 }, { type: 0x83, startLba: 8192, sectors: 4096 }] });
  const edit = (fn: (s: Uint8Array, v: DataView) => void) => {
    const s = good();
    fn(s, new DataView(s.buffer));
    return s;
  };
  const bad: Array<[string, Uint8Array, RegExp, number?]> = [
    ['short', new Uint8Array(100), /expected 512/],
    ['no signature', new Uint8Array(512), /0x55AA/],
    ['bad status byte', edit((s) => (s[446] = 0x12)), /status byte/],
    ['start at sector 0', edit((_s, v) => v.setUint32(446 + 8, 0, true)), /sector 0/],
    ['typed but empty', edit((_s, v) => v.setUint32(446 + 12, 0, true)), /no sectors/],
    ['overlap', edit((_s, v) => v.setUint32(446 + 16 + 8, 3000, true)), /overlap/],
    ['past the disk', good(), /past the end/, 10000],
    ['huge sizes near 2^32', edit((_s, v) => v.setUint32(446 + 16 + 12, 0xffffffff, true)), /past the end/, 100000],
  ];
  for (const [what, sector, message, diskSectors] of bad) {
    assert.throws(() => parseMbr(sector, diskSectors), (err: unknown) => err instanceof MbrError && message.test(err.message), what);
  }
  // An empty table is a valid MBR with no partitions; a type-0 slot is empty whatever else it holds.
  const empty = new Uint8Array(512);
  empty[510] = 0x55;
  empty[511] = 0xaa;
  assert.deepEqual(parseMbr(empty).partitions, []);
  const stale = edit((s) => (s[446 + 16 + 4] = 0));
  assert.equal(parseMbr(stale).partitions.length, 1);
});
