/**
 * Parser for raw BTF blobs (/sys/kernel/btf/vmlinux, an ELF `.BTF` section). Layout per the kernel's
 * Documentation/bpf/btf.rst: a header, then a type section of variable-length records and a string
 * section, both placed relative to the end of the header. Byte order is taken from the magic 0xeB9F.
 *
 * The blob is hostile: every record is bounds-checked before it is read, counts are capped by the bytes
 * that remain (so no allocation outgrows the input), string offsets and type references are checked,
 * and unknown kinds are refused. Errors are BtfError with the offending type id and offset.
 */
import { Btf } from './btf.ts';
import { BTF_KIND_NAMES, BtfError, type BtfKind, type BtfType, type Linkage } from './btf-types.ts';

const BTF_MAGIC = 0xeb9f;
const HEADER_MIN = 24;
/** BTF_MAX_TYPE: type ids are 20-bit. */
const MAX_TYPES = 0xfffff;
const LINKAGES: readonly Linkage[] = ['static', 'global', 'extern'];

const utf8 = new TextDecoder('utf-8');
const latin1 = new TextDecoder('latin1');

/**
 * Names by string-section offset. Kernel string sections are ASCII: those are decoded once as a whole
 * and names are sliced out of it (per-name decoding dominated the parse time); anything else is
 * decoded name by name as UTF-8.
 */
class Strings {
  private readonly whole: string | undefined;
  constructor(private readonly table: Uint8Array) {
    this.whole = table.every((b) => b < 0x80) ? latin1.decode(table) : undefined;
  }
  get(off: number, where: string): string {
    if (off >= this.table.length) {
      throw new BtfError(`${where}: name offset ${off} is past the string section (${this.table.length} bytes)`);
    }
    // The section is known to end with NUL, so both searches find one.
    if (this.whole !== undefined) return this.whole.slice(off, this.whole.indexOf('\0', off));
    return utf8.decode(this.table.subarray(off, this.table.indexOf(0, off)));
  }
}

export function parseBtf(bytes: Uint8Array): Btf {
  if (bytes.length < HEADER_MIN) throw new BtfError(`BTF is ${bytes.length} bytes, too short for a header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let little: boolean;
  if (view.getUint16(0, true) === BTF_MAGIC) little = true;
  else if (view.getUint16(0, false) === BTF_MAGIC) little = false;
  else throw new BtfError(`bad magic 0x${view.getUint16(0, true).toString(16)}: not BTF`);

  const version = view.getUint8(2);
  if (version !== 1) throw new BtfError(`BTF version ${version} is not supported (expected 1)`);
  const hdrLen = view.getUint32(4, little);
  if (hdrLen < HEADER_MIN || hdrLen > bytes.length) {
    throw new BtfError(`header length ${hdrLen} is invalid for a ${bytes.length}-byte blob`);
  }
  const typeOff = view.getUint32(8, little);
  const typeLen = view.getUint32(12, little);
  const strOff = view.getUint32(16, little);
  const strLen = view.getUint32(20, little);
  const dataLen = bytes.length - hdrLen;
  const inData = (off: number, len: number) => off <= dataLen && len <= dataLen - off;
  if (!inData(typeOff, typeLen)) throw new BtfError(`type section (offset ${typeOff}, ${typeLen} bytes) lies outside the blob`);
  if (!inData(strOff, strLen)) throw new BtfError(`string section (offset ${strOff}, ${strLen} bytes) lies outside the blob`);
  if (typeOff % 4 !== 0 || typeLen % 4 !== 0) throw new BtfError('type section is not 4-byte aligned');
  if (typeOff < strOff ? typeOff + typeLen > strOff : strOff + strLen > typeOff) {
    throw new BtfError('type and string sections overlap');
  }
  const strTable = bytes.subarray(hdrLen + strOff, hdrLen + strOff + strLen);
  if (strLen === 0 || strTable[0] !== 0 || strTable[strLen - 1] !== 0) {
    throw new BtfError('string section must start and end with a NUL byte');
  }
  const strings = new Strings(strTable);

  const types: BtfType[] = [{ kind: 'VOID', id: 0, name: '' }];
  const base = hdrLen + typeOff;
  const end = base + typeLen;
  let off = base;
  const u32 = (o: number) => view.getUint32(o, little);
  /** Claims `n` trailing entries of `size` bytes of the current record, refusing counts the section cannot hold. */
  const trailing = (n: number, size: number, where: string): number => {
    if (n * size > end - off) throw new BtfError(`${where}: ${n} entries of ${size} bytes run past the type section`);
    const start = off;
    off += n * size;
    return start;
  };

  while (off < end) {
    const id = types.length;
    if (id > MAX_TYPES) throw new BtfError(`more than ${MAX_TYPES} types`);
    const where = `type [${id}] at offset ${off - base}`;
    if (end - off < 12) throw new BtfError(`${where}: record is truncated`);
    const name = strings.get(u32(off), where);
    const info = u32(off + 4);
    const sizeOrType = u32(off + 8);
    const kindNum = (info >>> 24) & 0x1f;
    const vlen = info & 0xffff;
    const kflag = info >>> 31 === 1;
    const kind: BtfKind | undefined = BTF_KIND_NAMES[kindNum];
    if (kind === undefined || kind === 'VOID') throw new BtfError(`${where}: unknown kind ${kindNum}`);
    off += 12;
    switch (kind) {
      case 'INT': {
        const enc = u32(trailing(1, 4, where));
        const bits = enc & 0xff;
        const bitOffset = (enc >>> 16) & 0xff;
        const e = (enc >>> 24) & 0x0f;
        if (bits === 0 || bits > 128 || bitOffset + bits > sizeOrType * 8) {
          throw new BtfError(`${where}: INT of ${sizeOrType} bytes cannot hold ${bits} bits at offset ${bitOffset}`);
        }
        types.push({ kind, id, name, size: sizeOrType, signed: (e & 1) !== 0, char: (e & 2) !== 0, bool: (e & 4) !== 0, bitOffset, bits });
        break;
      }
      case 'PTR':
      case 'TYPEDEF':
      case 'VOLATILE':
      case 'CONST':
      case 'RESTRICT':
      case 'TYPE_TAG':
        types.push({ kind, id, name, type: sizeOrType });
        break;
      case 'ARRAY': {
        const o = trailing(1, 12, where);
        types.push({ kind, id, name, type: u32(o), indexType: u32(o + 4), nelems: u32(o + 8) });
        break;
      }
      case 'STRUCT':
      case 'UNION': {
        const o = trailing(vlen, 12, where);
        const members = new Array(vlen);
        for (let i = 0; i < vlen; i++) {
          const m = o + i * 12;
          const raw = u32(m + 8);
          members[i] = {
            name: strings.get(u32(m), `${where} member ${i}`),
            type: u32(m + 4),
            bitOffset: kflag ? raw & 0xffffff : raw,
            bitfieldSize: kflag ? raw >>> 24 : 0,
          };
        }
        types.push({ kind, id, name, size: sizeOrType, members });
        break;
      }
      case 'ENUM':
      case 'ENUM64': {
        const wide = kind === 'ENUM64';
        const o = trailing(vlen, wide ? 12 : 8, where);
        const values = new Array(vlen);
        for (let i = 0; i < vlen; i++) {
          const e = o + i * (wide ? 12 : 8);
          let value: bigint;
          if (wide) {
            const raw = (BigInt(u32(e + 8)) << 32n) | BigInt(u32(e + 4));
            value = kflag ? BigInt.asIntN(64, raw) : raw;
          } else {
            value = BigInt(kflag ? view.getInt32(e + 4, little) : u32(e + 4));
          }
          values[i] = { name: strings.get(u32(e), `${where} value ${i}`), value };
        }
        types.push({ kind, id, name, size: sizeOrType, signed: kflag, values });
        break;
      }
      case 'FWD':
        types.push({ kind, id, name, union: kflag });
        break;
      case 'FUNC': {
        const linkage = LINKAGES[vlen];
        if (!linkage) throw new BtfError(`${where}: FUNC linkage ${vlen} is unknown`);
        types.push({ kind, id, name, type: sizeOrType, linkage });
        break;
      }
      case 'FUNC_PROTO': {
        const o = trailing(vlen, 8, where);
        const params = new Array(vlen);
        for (let i = 0; i < vlen; i++) {
          params[i] = { name: strings.get(u32(o + i * 8), `${where} param ${i}`), type: u32(o + i * 8 + 4) };
        }
        types.push({ kind, id, name, returnType: sizeOrType, params });
        break;
      }
      case 'VAR': {
        const raw = u32(trailing(1, 4, where));
        const linkage = LINKAGES[raw];
        if (!linkage) throw new BtfError(`${where}: VAR linkage ${raw} is unknown`);
        types.push({ kind, id, name, type: sizeOrType, linkage });
        break;
      }
      case 'DATASEC': {
        const o = trailing(vlen, 12, where);
        const vars = new Array(vlen);
        for (let i = 0; i < vlen; i++) {
          const v = o + i * 12;
          vars[i] = { type: u32(v), offset: u32(v + 4), size: u32(v + 8) };
        }
        types.push({ kind, id, name, size: sizeOrType, vars });
        break;
      }
      case 'FLOAT':
        types.push({ kind, id, name, size: sizeOrType });
        break;
      case 'DECL_TAG':
        types.push({ kind, id, name, type: sizeOrType, componentIdx: view.getInt32(trailing(1, 4, where), little) });
        break;
    }
  }
  checkReferences(types);
  return new Btf(types, little ? 'little' : 'big');
}

/** Every type id a record names must exist; after this, lookups by id cannot miss. */
function checkReferences(types: BtfType[]): void {
  const n = types.length;
  const check = (ref: number, t: BtfType, what: string) => {
    if (ref >= n) throw new BtfError(`type [${t.id}] ${t.kind} ${what} refers to type ${ref}, but only ${n} types exist`);
  };
  for (const t of types) {
    switch (t.kind) {
      case 'PTR':
      case 'TYPEDEF':
      case 'VOLATILE':
      case 'CONST':
      case 'RESTRICT':
      case 'TYPE_TAG':
      case 'FUNC':
      case 'VAR':
      case 'DECL_TAG':
        check(t.type, t, 'type');
        break;
      case 'ARRAY':
        check(t.type, t, 'element type');
        check(t.indexType, t, 'index type');
        break;
      case 'STRUCT':
      case 'UNION':
        for (const m of t.members) check(m.type, t, `member '${m.name}'`);
        break;
      case 'FUNC_PROTO':
        check(t.returnType, t, 'return type');
        for (const p of t.params) check(p.type, t, 'parameter');
        break;
      case 'DATASEC':
        for (const v of t.vars) check(v.type, t, 'variable');
        break;
      default:
        break;
    }
  }
}
