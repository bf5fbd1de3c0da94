/**
 * The kernel model on synthetic memory: objects are written through the model's own offsets from a
 * small ISF, then read back through KernelView the way checks read a guest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KernelView } from '../../src/ids/kernel/kernel-view.ts';
import { KPtr, KArr, type KObj } from '../../src/ids/kernel/kobject.ts';
import type { Cred, ListHead } from '../../src/ids/kernel/linux-types.ts';
import { TypeModel } from '../../src/ids/kernel/type-model.ts';
import { BufferSource, MINI_ISF } from './synthetic-memory.ts';

interface MiniTask {
  pid: number;
  tgid: number;
  comm: string;
  flags: number;
  neg: number;
  start_time: bigint;
  start_lo: number;
  cpus: KArr<number>;
  kthread: boolean;
  tasks: KObj<ListHead>;
  cred: KPtr<Cred>;
  real_parent: KPtr<MiniTask>;
  opaque: KPtr<unknown>;
}

const SLIDE = 0x1c00000n;
const BASE = 0xffffffff82000000n + SLIDE;
const model = new TypeModel(MINI_ISF);
const f = (s: string, name: string) => model.offsetOf(s, name).offset;

function buildMemory(taskCount: number) {
  const mem = Buffer.alloc(0x1000 + taskCount * 0x100 + 0x1000);
  const off = (addr: bigint) => Number(addr - BASE);
  mem.write('Linux version 6.1.0-test (synthetic)\n', off(0xffffffff82000100n + SLIDE), 'latin1');
  const init = 0xffffffff82001000n + SLIDE;
  const tasks = [init, ...Array.from({ length: taskCount }, (_, i) => init + 0x200n + BigInt(i) * 0x100n)];
  const credAddr = init + 0x100n;
  mem.writeUInt32LE(1000, off(credAddr) + f('cred', 'uid'));
  mem.writeUInt32LE(0, off(credAddr) + f('cred', 'euid'));
  tasks.forEach((t, i) => {
    const o = off(t);
    const link = (x: bigint) => x + BigInt(f('task_struct', 'tasks'));
    const next = tasks[(i + 1) % tasks.length] as bigint;
    const prev = tasks[(i - 1 + tasks.length) % tasks.length] as bigint;
    mem.writeBigUInt64LE(link(next), o + f('task_struct', 'tasks.next'));
    mem.writeBigUInt64LE(link(prev), o + f('task_struct', 'tasks.prev'));
    mem.writeInt32LE(i, o + f('task_struct', 'pid'));
    mem.writeInt32LE(i, o + f('task_struct', 'tgid'));
    mem.write(i === 0 ? 'swapper/0' : `task-${i}`, o + f('task_struct', 'comm'), 'latin1');
    mem.writeBigUInt64LE(0x1_0000_0000n + BigInt(i), o + f('task_struct', 'start_time'));
    mem.writeBigUInt64LE(credAddr, o + f('task_struct', 'cred'));
    mem.writeBigUInt64LE(init, o + f('task_struct', 'real_parent'));
    mem.writeUInt32LE(7, o + f('task_struct', 'cpus[2]'));
    mem.writeUInt32LE((0b10110 << 3) | (0b1110 << 8) | 0x7, o + f('task_struct', 'flags'));
    mem.writeUInt8(i === 0 ? 1 : 0, o + f('task_struct', 'kthread'));
  });
  return { source: new BufferSource(BASE, mem), init, credAddr };
}

test('locateKernel finds the slide in one request; fields decode by their BTF types', async () => {
  const { source, init, credAddr } = buildMemory(3);
  const k = await KernelView.open(source, MINI_ISF);
  assert.equal(k.slide, SLIDE);
  assert.equal(k.banner, 'Linux version 6.1.0-test (synthetic)');
  assert.equal(source.requests, 1, 'all candidate slides in one batch');

  const t = await k.var<MiniTask>('init_task');
  assert.equal(t.$addr, init);
  assert.equal(t.$type, 'task_struct');
  assert.equal(t.comm, 'swapper/0');
  assert.equal(t.pid, 0);
  assert.equal(t.start_time, 0x1_0000_0000n, 'member of an anonymous union, 8 bytes → bigint');
  assert.equal(t.start_lo, 0);
  assert.equal(t.flags, 0b10110, 'unsigned bitfield');
  assert.equal(t.neg, -2, 'signed bitfield sign-extends');
  assert.equal(t.kthread, true);
  assert.ok(t.cpus instanceof KArr);
  assert.deepEqual([...t.cpus], [0, 0, 7, 0]);
  assert.equal(t.tasks.$addr, init + BigInt(f('task_struct', 'tasks')), 'embedded struct keeps its address');
  assert.equal(t.$addrOf('cpus[2]'), init + BigInt(f('task_struct', 'cpus')) + 8n);
  assert.ok(t.cred instanceof KPtr);
  assert.equal(t.cred.addr, credAddr);
  const cred = await t.cred.deref();
  assert.equal(cred.uid.val, 1000);
  assert.equal(cred.euid.val, 0);
  assert.equal(t.opaque.targetStruct, 'not_in_profile');
  assert.equal(t.$str('comm'), 'swapper/0');
  assert.throws(() => t.$str('pid'), /not a byte array/);
  assert.equal(await k.string(t.$addrOf('comm')), 'swapper/0');
  assert.throws(() => (t as unknown as Record<string, unknown>).no_such_field, /task_struct has no field no_such_field/);
  assert.equal('pid' in t, true);
  assert.equal((t as unknown as { then?: unknown }).then, undefined, 'a snapshot is not mistaken for a promise');
});

test('a whole list ring is one request; derefAll batches pointers', async () => {
  const { source, init } = buildMemory(300);
  const k = await KernelView.open(source, MINI_ISF);
  const t = await k.var<MiniTask>('init_task');
  const before = source.requests;
  const seen: number[] = [];
  for await (const e of k.listEntries<MiniTask>(t.tasks, 'task_struct', 'tasks')) seen.push(e.pid);
  assert.equal(source.requests - before, 1);
  assert.deepEqual(seen, Array.from({ length: 300 }, (_, i) => i + 1), 'every entry but the head, in order');

  const entries = await k.list<MiniTask>(t.tasks, 'task_struct', 'tasks');
  const parents = await k.derefAll(entries.map((e) => e.real_parent));
  assert.equal(source.requests - before, 3);
  assert.ok(parents.every((p) => p?.$addr === init && p.comm === 'swapper/0'));
  assert.deepEqual(await k.derefAll([new KPtr<MiniTask>(k, 0n, model.struct('task_struct'))]), [null]);
  assert.equal(k.containerOf(entries[0]!.tasks.$addr, 'task_struct', 'tasks'), entries[0]!.$addr);
});

test('hostile or broken replies fail loudly', async () => {
  const { source } = buildMemory(1);
  const k = await KernelView.open(source, MINI_ISF);
  await assert.rejects(k.at('task_struct', 0x1000n), /kv 0x1000\+104: unmapped/);
  const short = { read: async (ops: readonly unknown[]) => ops.map(() => ({ ok: true as const, data: Buffer.alloc(3) })) };
  const k2 = await KernelView.open(short, MINI_ISF, { slide: 0n });
  await assert.rejects(k2.var('init_task'), /reply has 3 bytes, asked 104/);
  assert.throws(() => model.offsetOf('task_struct', 'cpus[9]'), /out of bounds/);
  assert.throws(() => model.field('nope', 'x'), /no struct nope/);
  await assert.rejects(KernelView.open({ read: async (ops) => ops.map(() => ({ ok: false as const, error: 'unmapped' })) }, MINI_ISF), /kernel not found/);
});
