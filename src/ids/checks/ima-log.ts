/**
 * The guest's IMA measurement list, read agentlessly from kernel memory (the `ima_measurements` list:
 * ima_queue_entry.later → ima_template_entry) and serialized exactly as the kernel's ima_fs.c shows
 * `binary_runtime_measurements` (ima_measurements_show, non-canonical format = the x86-64 guest's little
 * endian), so src/formats/ima.ts parses it and a verifier can replay it against a quoted PCR 10:
 *
 *   u32 pcr ‖ sha1 template digest (20) ‖ u32 name length ‖ name ‖ [u32 template_data_len ‖
 *   for each field: u32 len ‖ data]      (the legacy "ima" template: no data length, no field lengths)
 *
 * The template digest shown is the one in the SHA-1 slot (ima_sha1_idx), as the kernel's file does. It
 * never alerts: the verifier judges the list. Everything read is hostile: counts and lengths are bounded.
 */
import type { KernelView } from '../kernel/kernel-view.ts';
import type { KPtr } from '../kernel/kobject.ts';
import type { Check } from './check.ts';

export interface ImaLogData {
  entries: number;
  /** binary_runtime_measurements, base64. */
  log: string;
}

/** IMA_TEMPLATE_NUM_FIELDS_MAX and IMA_TEMPLATE_NAME_LEN_MAX (ima.h). */
const MAX_FIELDS = 15;
const MAX_NAME = 15;
/** One field (an ima-buf payload, a signature) stays well under this; the whole list under 32 MiB. */
const MAX_FIELD_BYTES = 1 << 20;
const MAX_LOG_BYTES = 32 << 20;
const MAX_ENTRIES = 200_000;
const TPM_ALG_SHA1 = 0x0004;
const SHA1_SIZE = 20;

interface ImaQueueEntry {
  entry: KPtr<ImaTemplateEntry>;
}
interface ImaTemplateEntry {
  pcr: number;
  digests: KPtr<unknown>;
  template_desc: KPtr<ImaTemplateDesc>;
  template_data_len: number;
}
interface ImaTemplateDesc {
  name: KPtr<unknown>;
  fmt: KPtr<unknown>;
  num_fields: number;
}

class ImaReadError extends Error {
  override name = 'ImaReadError';
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

/** The measurement list as binary_runtime_measurements bytes, and its entry count. */
export async function readImaLog(k: KernelView, maxEntries = MAX_ENTRIES): Promise<{ entries: number; bytes: Buffer }> {
  const m = k.model;
  const queue = await k.list<ImaQueueEntry>(k.sym('ima_measurements'), 'ima_queue_entry', 'later', { max: maxEntries });
  if (queue.length === 0) return { entries: 0, bytes: Buffer.alloc(0) };
  const sha1Idx = (await k.bytes(k.sym('ima_sha1_idx'), 4)).readInt32LE(0);
  if (sha1Idx < 0 || sha1Idx > 16) throw new ImaReadError(`ima_sha1_idx ${sha1Idx}`);

  const entries = await k.atAll<ImaTemplateEntry>('ima_template_entry', queue.map((q) => q.entry.addr));
  const descAddrs = [...new Set(entries.map((e) => e.template_desc.addr))];
  const descs = new Map((await k.atAll<ImaTemplateDesc>('ima_template_desc', descAddrs)).map((d) => [d.$addr, d]));
  const names = new Map<bigint, string>();
  for (const d of descs.values()) {
    let name = d.name.isNull ? '' : await k.string(d.name.addr, MAX_NAME + 1);
    if (name === '' && !d.fmt.isNull) name = await k.string(d.fmt.addr, 256);
    if (name.length === 0 || name.length > 256) throw new ImaReadError(`template descriptor at 0x${d.$addr.toString(16)} has no usable name`);
    if (d.num_fields < 0 || d.num_fields > MAX_FIELDS) throw new ImaReadError(`template ${name} has ${d.num_fields} fields`);
    names.set(d.$addr, name);
  }

  const dataOff = BigInt(m.offsetOf('ima_template_entry', 'template_data').offset);
  const fieldSize = m.sizeOf('ima_field_data');
  const fDataOff = m.offsetOf('ima_field_data', 'data').offset;
  const fLenOff = m.offsetOf('ima_field_data', 'len').offset;
  const digestSize = m.sizeOf('tpm_digest');
  const algOff = m.offsetOf('tpm_digest', 'alg_id').offset;
  const digOff = m.offsetOf('tpm_digest', 'digest').offset;

  const heads = await k.bytesAll(
    entries.flatMap((e) => [
      { addr: e.digests.addr + BigInt(sha1Idx * digestSize), len: digestSize },
      { addr: e.$addr + dataOff, len: Math.max(1, descs.get(e.template_desc.addr)!.num_fields * fieldSize) },
    ]),
  );
  const fieldReads: { addr: bigint; len: number }[] = [];
  const fieldsOf: { len: number }[][] = [];
  entries.forEach((e, i) => {
    const digest = heads[2 * i];
    const arr = heads[2 * i + 1];
    if (!digest || !arr) throw new ImaReadError(`IMA entry ${i} is unreadable`);
    if (digest.readUInt16LE(algOff) !== TPM_ALG_SHA1) throw new ImaReadError(`IMA entry ${i}: slot ${sha1Idx} is not the SHA-1 digest`);
    const n = descs.get(e.template_desc.addr)!.num_fields;
    const fields: { len: number }[] = [];
    for (let f = 0; f < n; f++) {
      const ptr = arr.readBigUInt64LE(f * fieldSize + fDataOff);
      const len = arr.readUInt32LE(f * fieldSize + fLenOff);
      if (len > MAX_FIELD_BYTES) throw new ImaReadError(`IMA entry ${i} field ${f} of ${len} bytes`);
      fields.push({ len });
      if (len > 0) fieldReads.push({ addr: ptr, len });
    }
    fieldsOf.push(fields);
  });
  const fieldData = await k.bytesAll(fieldReads);

  const out: Buffer[] = [];
  let total = 0;
  let next = 0;
  entries.forEach((e, i) => {
    const name = names.get(e.template_desc.addr)!;
    const legacy = name === 'ima';
    const parts: Buffer[] = [u32(e.pcr), heads[2 * i]!.subarray(digOff, digOff + SHA1_SIZE), u32(Buffer.byteLength(name, 'latin1')), Buffer.from(name, 'latin1')];
    if (!legacy) parts.push(u32(e.template_data_len));
    for (const f of fieldsOf[i]!) {
      if (!legacy) parts.push(u32(f.len));
      if (f.len === 0) continue;
      const d = fieldData[next++];
      if (!d) throw new ImaReadError(`IMA entry ${i}: field data unreadable`);
      parts.push(d);
    }
    const b = Buffer.concat(parts);
    total += b.length;
    if (total > MAX_LOG_BYTES) throw new ImaReadError(`the IMA list exceeds ${MAX_LOG_BYTES} bytes`);
    out.push(b);
  });
  return { entries: entries.length, bytes: Buffer.concat(out) };
}

export function imaLogCheck(): Check<ImaLogData> {
  return {
    name: 'ima-log',
    async scan(k) {
      const { entries, bytes } = await readImaLog(k);
      return { alerts: [], data: { entries, log: bytes.toString('base64') } };
    },
  };
}
