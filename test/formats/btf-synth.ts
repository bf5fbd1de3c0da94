/** A synthetic BTF writer for tests: both byte orders, and hostile variants field by field. */

export interface Synth {
  /** Raw type records (already encoded words), appended in order, ids from 1. */
  records: number[][];
  strings: string[];
}

export function synthBtf(s: Synth, opts: { bigEndian?: boolean; patch?: (view: DataView, little: boolean) => void } = {}): Uint8Array {
  const little = !opts.bigEndian;
  const strBytes = Buffer.from(`\0${s.strings.map((x) => `${x}\0`).join('')}`, 'utf8');
  const words = s.records.flat();
  const typeLen = words.length * 4;
  const out = new Uint8Array(24 + typeLen + strBytes.length);
  const v = new DataView(out.buffer);
  v.setUint16(0, 0xeb9f, little);
  v.setUint8(2, 1);
  v.setUint32(4, 24, little);
  v.setUint32(8, 0, little);
  v.setUint32(12, typeLen, little);
  v.setUint32(16, typeLen, little);
  v.setUint32(20, strBytes.length, little);
  words.forEach((w, i) => v.setUint32(24 + i * 4, w >>> 0, little));
  out.set(strBytes, 24 + typeLen);
  opts.patch?.(v, little);
  return out;
}

/** Offset of `name` in the string section synthBtf builds. */
export function strOff(s: Synth, name: string): number {
  let off = 1;
  for (const x of s.strings) {
    if (x === name) return off;
    off += Buffer.byteLength(x) + 1;
  }
  throw new Error(`no string ${name}`);
}

export const info = (kind: number, vlen: number, kflag = false) => ((kflag ? 0x80000000 : 0) | (kind << 24) | vlen) >>> 0;

/** A small BTF using every kind: the ids are listed next to each record. */
export function everyKind(): Synth {
  const s: Synth = { records: [], strings: ['int', 'u64', 'flags', 'a', 'b', 'c', 'node', 'next', 'color', 'RED', 'BIG', 'ev', 'f', 'x', 'myvar', '.data', 'double', 'tag', 'u'] };
  const o = (n: string) => strOff(s, n);
  s.records.push(
    [o('int'), info(1, 0), 4, (1 << 24) | 32], // 1 INT int, signed
    [o('u64'), info(1, 0), 8, 64], // 2 INT u64
    [0, info(2, 0), 7], // 3 PTR -> struct node
    [0, info(3, 0), 0, 1, 1, 4], // 4 ARRAY int[4]
    [o('flags'), info(4, 3, true), 8, o('a'), 1, (3 << 24) | 0, o('b'), 1, (5 << 24) | 3, o('c'), 2, 0], // 5 STRUCT kflag (c at bit 0 of u64 overlapping is fine for the test)
    [o('u'), info(5, 2), 8, o('a'), 1, 0, o('b'), 2, 0], // 6 UNION
    [o('node'), info(4, 2), 16, o('next'), 3, 0, o('color'), 8, 64], // 7 STRUCT node
    [o('color'), info(6, 2, true), 4, o('RED'), 0xffffffff, o('BIG'), 7], // 8 ENUM signed, RED = -1
    [o('ev'), info(19, 1), 8, o('BIG'), 0x00000001, 0x80000000], // 9 ENUM64 unsigned 2^63+1
    [o('f'), info(7, 0, true), 0], // 10 FWD union f
    [o('x'), info(8, 0), 12], // 11 TYPEDEF x -> 12
    [0, info(9, 0), 13], // 12 VOLATILE
    [0, info(10, 0), 14], // 13 CONST
    [0, info(11, 0), 15], // 14 RESTRICT
    [o('tag'), info(18, 0), 1], // 15 TYPE_TAG -> int
    [0, info(13, 2), 1, o('a'), 1, 0, 3], // 16 FUNC_PROTO int (int a, struct node *)
    [o('f'), info(12, 1), 16], // 17 FUNC global
    [o('myvar'), info(14, 0), 7, 1], // 18 VAR global
    [o('.data'), info(15, 1), 16, 18, 0, 16], // 19 DATASEC
    [o('double'), info(16, 0), 8], // 20 FLOAT
    [o('tag'), info(17, 0), 7, 0xffffffff], // 21 DECL_TAG on node, component -1
  );
  return s;
}

