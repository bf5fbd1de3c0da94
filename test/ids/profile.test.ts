import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unpackBzImage } from '../../src/formats/bzimage.ts';
import { fieldOffset, parseIsfText, serializeIsf, type IsfProfile } from '../../src/formats/isf.ts';
import { buildProfileWithReport, ProfileError } from '../../src/ids/profile/build-profile.ts';
import { IDS_PROFILE_REQUIREMENTS } from '../../src/ids/profile/ids-requirements.ts';
import { kernelOracle, readSystemMap } from '../fixtures/kernel-oracle.ts';

interface BpftoolType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  members?: Array<{ name: string; type_id: number; bits_offset: number; bitfield_size?: number }>;
}

/** The real guest kernel, its profile, and bpftool's view of the same vmlinux. */
const fixture = (async () => {
  const { vmlinuzPath, systemMapPath } = await kernelOracle();
  const image = readFileSync(vmlinuzPath);
  const build = buildProfileWithReport(image, { sourceName: 'vmlinuz' });
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-profile-'));
  try {
    const vmlinuxPath = join(dir, 'vmlinux');
    writeFileSync(vmlinuxPath, unpackBzImage(image).vmlinux);
    const dump = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', vmlinuxPath], { maxBuffer: 1 << 30 }).toString()) as { types: BpftoolType[] };
    const notes = execFileSync('readelf', ['-n', vmlinuxPath]).toString();
    const sha256 = execFileSync('sha256sum', [vmlinuzPath]).toString().split(' ')[0]!;
    return { build, dump, notes, sha256, systemMap: await readSystemMap(systemMapPath), vmlinuzPath };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
})();

/** bpftool's first STRUCT/UNION of that name. */
function bpftoolStruct(dump: { types: BpftoolType[] }, name: string): BpftoolType | undefined {
  return dump.types.find((t) => (t.kind === 'STRUCT' || t.kind === 'UNION') && t.name === name);
}

test('profile: offsets of the real guest kernel equal what bpftool reports', async () => {
  const { build, dump } = await fixture;
  const p = build.profile;
  const task = bpftoolStruct(dump, 'task_struct')!;
  const off = (t: BpftoolType, m: string) => t.members!.find((x) => x.name === m)!.bits_offset / 8;
  assert.equal(fieldOffset(p, 'task_struct', 'comm'), off(task, 'comm'));
  assert.equal(fieldOffset(p, 'task_struct', 'tasks'), off(task, 'tasks'));
  assert.equal(fieldOffset(p, 'task_struct', 'real_cred'), off(task, 'real_cred'));
  const cred = bpftoolStruct(dump, 'cred')!;
  assert.equal(fieldOffset(p, 'cred', 'uid'), off(cred, 'uid'));
  assert.equal(fieldOffset(p, 'cred', 'euid.val'), off(cred, 'euid'));
  assert.deepEqual(p.user_types.task_struct!.fields.comm!.type, { kind: 'array', count: 16, subtype: { kind: 'base', name: 'char' } });

  // Every named struct/union we emitted: same size, and every member at the same place.
  let compared = 0;
  for (const [name, ut] of Object.entries(p.user_types)) {
    const theirs = bpftoolStruct(dump, name);
    if (!theirs) continue; // unnamed_* or named after a typedef
    compared++;
    assert.equal(ut.size, theirs.size, `${name} size`);
    for (const m of theirs.members!) {
      if (!m.name || m.name === '(anon)') continue;
      const f = ut.fields[m.name]!;
      assert.ok(f, `${name}.${m.name}`);
      if (f.type.kind === 'bitfield') assert.equal(f.offset * 8 + f.type.bit_position, m.bits_offset, `${name}.${m.name} bit`);
      else assert.equal(f.offset * 8, m.bits_offset, `${name}.${m.name}`);
    }
  }
  assert.ok(compared >= IDS_PROFILE_REQUIREMENTS.types.length - 2, `compared ${compared} structs`);
});

test('profile: symbol addresses equal System.map, banner and build id equal the image', async () => {
  const { build, systemMap, notes, sha256 } = await fixture;
  const p = build.profile;
  const map = new Map(systemMap.map((e) => [e.name, e.address]));
  assert.equal(p.symbols.init_task!.address, map.get('init_task'));
  assert.deepEqual(p.symbols.init_task!.type, { kind: 'struct', name: 'task_struct' });
  for (const [name, sym] of Object.entries(p.symbols)) assert.equal(sym.address, map.get(name), name);
  assert.deepEqual(build.missing, { types: [], symbols: [] });

  const banner = Buffer.from(p.symbols.linux_banner!.constant_data!, 'base64').toString('latin1');
  assert.match(banner, /^Linux version 6\.1\.0-56-cloud-amd64 .*\n\0$/s);
  assert.equal(build.banner, banner.slice(0, -1));
  const buildId = /Build ID: ([0-9a-f]+)/.exec(notes)![1]!;
  assert.equal(build.buildId, buildId);
  assert.equal(Buffer.from(p.symbols.vmlinux_build_id!.constant_data!, 'base64').toString('hex'), buildId);
  assert.deepEqual(p.metadata.linux?.symbols, [{ kind: 'symtab', name: 'vmlinuz', hash_type: 'sha256', hash_value: sha256 }]);

  // What is written is read back exactly (kernel addresses beyond 2^53 included).
  const text = serializeIsf(p);
  assert.ok(text.includes(`"address":${map.get('init_task')}`));
  assert.deepEqual(parseIsfText(text), p);
});

test('profile: --all holds every struct and every kallsyms symbol', async () => {
  const { vmlinuzPath, dump, systemMap } = await fixture;
  const { profile } = buildProfileWithReport(readFileSync(vmlinuzPath), { all: true });
  const named = new Set(dump.types.filter((t) => (t.kind === 'STRUCT' || t.kind === 'UNION') && t.name !== '(anon)').map((t) => t.name));
  for (const name of named) assert.ok(profile.user_types[name], name);
  const inMap = systemMap.filter((e) => Object.hasOwn(profile.symbols, e.name));
  assert.ok(inMap.length > systemMap.length / 2, `${inMap.length} of ${systemMap.length} System.map symbols`);
  assertReferencesResolve(profile);
});

/** Every struct/union/enum a by-value field names is defined (pointers may dangle by design). */
function assertReferencesResolve(p: IsfProfile): void {
  for (const [name, ut] of Object.entries(p.user_types)) {
    for (const [fname, f] of Object.entries(ut.fields)) {
      let t = f.type;
      while (t.kind === 'array') t = t.subtype;
      if (t.kind === 'struct' || t.kind === 'union') assert.ok(p.user_types[t.name], `${name}.${fname} -> ${t.name}`);
      if (t.kind === 'enum') assert.ok(p.enums[t.name], `${name}.${fname} -> enum ${t.name}`);
      if (t.kind === 'base') assert.ok(p.base_types[t.name], `${name}.${fname} -> ${t.name}`);
    }
  }
}

test('profile: the default profile is closed over by-value references', async () => {
  const { build } = await fixture;
  assertReferencesResolve(build.profile);
});

test('profile: a file that is not a kernel gives a clear ProfileError', () => {
  assert.throws(() => buildProfileWithReport(Buffer.from('#!/bin/sh\necho hello\n'.repeat(100))), (e: unknown) => e instanceof ProfileError && /not a Linux kernel image/.test(e.message));
  const elfNoBtf = readFileSync(process.execPath);
  assert.throws(() => buildProfileWithReport(elfNoBtf), (e: unknown) => e instanceof ProfileError && /no \.BTF section/.test(e.message));
});

test('profile: vmseal ids profile writes the profile and prints a one-line summary', async () => {
  const { vmlinuzPath, build } = await fixture;
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-profile-cli-'));
  try {
    const out = join(dir, 'profile.json');
    const ok = spawnSync(process.execPath, ['bin/vmseal.js', 'ids', 'profile', vmlinuzPath, '--out', out], { encoding: 'utf8' });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /^.*profile\.json: \d+ types, \d+ enums, \d+ symbols, \d+ bytes in [\d.]+s \(kernel 6\.1\.0-56-cloud-amd64, build id [0-9a-f]+\)\n$/);
    const written = parseIsfText(readFileSync(out, 'utf8'));
    assert.deepEqual(written.user_types, build.profile.user_types);
    assert.deepEqual(written.symbols, build.profile.symbols);

    const notKernel = join(dir, 'notes.txt');
    writeFileSync(notKernel, 'not a kernel\n'.repeat(100));
    const bad = spawnSync(process.execPath, ['bin/vmseal.js', 'ids', 'profile', notKernel, '--out', join(dir, 'x.json')], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^vmseal: not a Linux kernel image/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
