/**
 * Test helpers: a MemorySource over a Buffer standing for kernel virtual memory at `base` (kv ops
 * only, plus 'list' with the semantics ids-read.ts documents), and a tiny ISF profile. Objects are
 * laid out in the buffer through the model's own offsets, so no test writes an offset by hand.
 */
import type { MemorySource, ReadOp, ReadResult } from '../../src/formats/protocol/ids-read.ts';
import type { IsfLike } from '../../src/ids/kernel/type-model.ts';

export class BufferSource implements MemorySource {
  requests = 0;
  constructor(
    readonly base: bigint,
    readonly mem: Buffer,
  ) {}

  private slice(addr: bigint, len: number): Buffer | null {
    const off = addr - this.base;
    if (off < 0n || off + BigInt(len) > BigInt(this.mem.length)) return null;
    return Buffer.from(this.mem.subarray(Number(off), Number(off) + len));
  }

  async read(ops: readonly ReadOp[]): Promise<ReadResult[]> {
    this.requests++;
    return ops.map((op): ReadResult => {
      if (op.kind === 'kv') {
        const b = this.slice(op.addr, op.len);
        return b ? { ok: true, data: b } : { ok: false, error: 'unmapped' };
      }
      if (op.kind === 'list') {
        const parts: Buffer[] = [];
        const bases: bigint[] = [];
        let link = op.head;
        while (bases.length < op.max) {
          const nb = this.slice(link, 8);
          if (!nb) break;
          const next = nb.readBigUInt64LE(0);
          if (next === op.head) break;
          const entry = this.slice(next - BigInt(op.linkOffset), op.len);
          if (!entry) break;
          parts.push(entry);
          bases.push(next - BigInt(op.linkOffset));
          link = next;
        }
        return { ok: true, data: Buffer.concat(parts), bases };
      }
      return { ok: false, error: `unsupported op ${op.kind}` };
    });
  }
}

const int = (name: string) => ({ kind: 'base' as const, name });
const ptr = (subtype: IsfLike['symbols'][string]['type'] & object) => ({ kind: 'pointer' as const, subtype });
const struct = (name: string) => ({ kind: 'struct' as const, name });

/** A made-up kernel with a few struct shapes the real one has (anonymous union, bitfield, char array). */
export const MINI_ISF: IsfLike = {
  base_types: {
    int: { kind: 'int', size: 4, signed: true, endian: 'little' },
    'unsigned int': { kind: 'int', size: 4, signed: false, endian: 'little' },
    'long long unsigned int': { kind: 'int', size: 8, signed: false, endian: 'little' },
    char: { kind: 'char', size: 1, signed: true, endian: 'little' },
    'unsigned char': { kind: 'char', size: 1, signed: false, endian: 'little' },
    _Bool: { kind: 'bool', size: 1, signed: false, endian: 'little' },
    pointer: { kind: 'int', size: 8, signed: false, endian: 'little' },
    void: { kind: 'void', size: 0, signed: false, endian: 'little' },
  },
  user_types: {
    list_head: { kind: 'struct', size: 16, fields: { next: { offset: 0, type: ptr(struct('list_head')) }, prev: { offset: 8, type: ptr(struct('list_head')) } } },
    kuid_t: { kind: 'struct', size: 4, fields: { val: { offset: 0, type: int('unsigned int') } } },
    cred: { kind: 'struct', size: 12, fields: { usage: { offset: 0, type: int('int') }, uid: { offset: 4, type: struct('kuid_t') }, euid: { offset: 8, type: struct('kuid_t') } } },
    unnamed_u1: { kind: 'union', size: 8, fields: { start_time: { offset: 0, type: int('long long unsigned int') }, start_lo: { offset: 0, type: int('unsigned int') } } },
    task_struct: {
      kind: 'struct',
      size: 104,
      fields: {
        __state: { offset: 0, type: int('unsigned int') },
        flags: { offset: 4, type: { kind: 'bitfield', bit_position: 3, bit_length: 5, type: int('unsigned int') } },
        neg: { offset: 4, type: { kind: 'bitfield', bit_position: 8, bit_length: 4, type: int('int') } },
        tasks: { offset: 8, type: struct('list_head') },
        pid: { offset: 24, type: int('int') },
        tgid: { offset: 28, type: int('int') },
        unnamed_field_0: { offset: 32, type: { kind: 'union', name: 'unnamed_u1' }, anonymous: true },
        cred: { offset: 40, type: ptr(struct('cred')) },
        comm: { offset: 48, type: { kind: 'array', count: 16, subtype: int('char') } },
        cpus: { offset: 64, type: { kind: 'array', count: 4, subtype: int('unsigned int') } },
        real_parent: { offset: 80, type: ptr(struct('task_struct')) },
        kthread: { offset: 88, type: int('_Bool') },
        opaque: { offset: 96, type: ptr(struct('not_in_profile')) },
      },
    },
  },
  enums: { pid_type: { size: 4, base: 'unsigned int', constants: { PIDTYPE_PID: 0, PIDTYPE_TGID: 1 } } },
  symbols: {
    linux_banner: { address: 0xffffffff82000100n },
    init_task: { address: 0xffffffff82001000n },
  },
};
