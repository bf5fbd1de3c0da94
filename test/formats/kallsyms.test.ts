import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { unpackBzImage } from '../../src/formats/bzimage.ts';
import { findSection, parseElf } from '../../src/formats/elf.ts';
import { findKallsyms, KallsymsError } from '../../src/formats/kallsyms.ts';
import { kernelOracle, readSystemMap } from '../fixtures/kernel-oracle.ts';

let real: Promise<{ vmlinux: Buffer; map: Awaited<ReturnType<typeof readSystemMap>> }> | undefined;
function realKernel(): NonNullable<typeof real> {
  real ??= (async () => {
    const oracle = await kernelOracle();
    const { vmlinux } = unpackBzImage(await readFile(oracle.vmlinuzPath));
    return { vmlinux, map: await readSystemMap(oracle.systemMapPath) };
  })();
  return real;
}

test('kallsyms found in the real vmlinux agree with the kernel package System.map', async (t) => {
  const { vmlinux, map } = await realKernel();
  const k = findKallsyms(vmlinux);
  assert.ok(k.symbols.length > 50_000);
  assert.equal(k.absolutePercpu, true, 'x86_64 uses CONFIG_KALLSYMS_ABSOLUTE_PERCPU');
  const mapAddr = (name: string): bigint => {
    const e = map.find((m) => m.name === name);
    assert.ok(e, `${name} in System.map`);
    return e.address;
  };
  // The tables themselves sit where System.map says.
  assert.equal(k.tables.offsets, mapAddr('kallsyms_offsets'));
  assert.equal(k.tables.relativeBase, mapAddr('kallsyms_relative_base'));
  assert.equal(k.tables.numSyms, mapAddr('kallsyms_num_syms'));
  assert.equal(k.tables.names, mapAddr('kallsyms_names'));
  assert.equal(k.tables.markers, mapAddr('kallsyms_markers'));
  assert.equal(k.tables.tokenTable, mapAddr('kallsyms_token_table'));
  assert.equal(k.tables.tokenIndex, mapAddr('kallsyms_token_index'));

  for (const name of ['init_task', 'linux_banner', 'sys_call_table', 'modules', 'init_pid_ns', '_text', '_stext', '_etext', 'module_kset']) {
    assert.equal(k.lookup(name), mapAddr(name), name);
  }
  // A percpu symbol: an absolute (non-negative) offset.
  assert.equal(k.lookup('fixed_percpu_data'), mapAddr('fixed_percpu_data'));

  // Every text/data/rodata/bss symbol of System.map that kallsyms also names has exactly that
  // address (names can repeat: static symbols, so compare name+address pairs).
  const pairs = new Set(k.symbols.map((s) => `${s.name}@${s.address}`));
  const names = new Set(k.symbols.map((s) => s.name));
  let compared = 0;
  const wrong: string[] = [];
  for (const e of map) {
    if (!/^[TtDdRrBb]$/.test(e.type) || !names.has(e.name)) continue;
    compared++;
    if (!pairs.has(`${e.name}@${e.address}`)) wrong.push(`${e.name} ${e.address.toString(16)}`);
  }
  t.diagnostic(`compared ${compared} System.map symbols with ${k.symbols.length} kallsyms entries`);
  assert.deepEqual(wrong.slice(0, 10), []);
  assert.ok(compared > 80_000, `compared ${compared}`);
  // Type letters agree for text symbols.
  const text = k.symbols.filter((s) => s.name === 'start_kernel');
  assert.deepEqual(
    text.map((s) => s.type),
    ['T'],
  );
});

test('garbage and damaged images give KallsymsError', async () => {
  assert.throws(() => findKallsyms(randomBytes(100_000)), (e: unknown) => e instanceof KallsymsError && /not a usable ELF/.test(e.message));
  const { vmlinux } = await realKernel();
  const k = findKallsyms(vmlinux);
  const rodata = findSection(parseElf(vmlinux), '.rodata')!;
  const fileOff = (addr: bigint): number => rodata.offset + Number(addr - rodata.addr);

  // Token index destroyed: no tables at all.
  const noTokens = Buffer.from(vmlinux);
  randomBytes(512).copy(noTokens, fileOff(k.tables.tokenIndex));
  assert.throws(() => findKallsyms(noTokens), (e: unknown) => e instanceof KallsymsError && /no kallsyms tables/.test(e.message));

  // Markers disagree with the names: refused rather than trusted.
  const badMarkers = Buffer.from(vmlinux);
  badMarkers.writeUInt32LE(12345, fileOff(k.tables.markers) + 4);
  assert.throws(() => findKallsyms(badMarkers), (e: unknown) => e instanceof KallsymsError && /no symbol names that agree/.test(e.message));

  // Offsets out of order (a forged table) are refused.
  const unsorted = Buffer.from(vmlinux);
  unsorted.writeInt32LE(-1, fileOff(k.tables.offsets) + 4 * 40_000);
  assert.throws(() => findKallsyms(unsorted), KallsymsError);
});
