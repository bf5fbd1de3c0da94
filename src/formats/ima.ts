// Linux IMA measurement list (security/integrity/ima), both securityfs forms:
//
// binary_runtime_measurements, per entry (little-endian on x86, and always so with ima_canonical_fmt):
//   u32 pcr | 20-byte SHA-1 template digest | u32 name length | template name |
//   u32 template-data length (absent for the legacy "ima" template) | template data
// The binary list always carries the SHA-1 template digest, whatever banks the TPM has (ima_fs.c).
// Template data is a sequence of fields, each u32 length + bytes; the legacy "ima" template writes its
// digest without a length and its name as u32 strlen + bytes.
//
// ascii_runtime_measurements: "pcr template-hash template-name field field ...", digests as "algo:hex"
// (d-ng) or bare hex (d), names as text, sig/buf as hex (an empty one still leaves its separator).
//
// Template hash (ima_crypto.c ima_calc_field_array_hash): for every bank, H(template data), i.e. each
// field's u32 length then bytes; for "ima", H(20-byte digest ‖ name zero-padded to 256 bytes). PCR 10
// in a bank is extended with that bank's hash; a violation entry (template digest all zero) extends
// every bank with all-0xff instead (ima_queue.c ima_init_digests).
import { hash } from 'node:crypto';

/** A malformed or hostile measurement list. */
export class ImaLogError extends Error {
  override readonly name = 'ImaLogError';
}

export type ImaBank = 'sha1' | 'sha256' | 'sha384' | 'sha512';
export const IMA_BANK_SIZES: Readonly<Record<ImaBank, number>> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };
export const IMA_PCR = 10;

/** Field layout of the kernel's built-in templates (ima_template.c). */
export const IMA_TEMPLATES: Readonly<Record<string, readonly string[]>> = {
  ima: ['d', 'n'],
  'ima-ng': ['d-ng', 'n-ng'],
  'ima-ngv2': ['d-ngv2', 'n-ng'],
  'ima-sig': ['d-ng', 'n-ng', 'sig'],
  'ima-sigv2': ['d-ngv2', 'n-ng', 'sig'],
  'ima-buf': ['d-ng', 'n-ng', 'buf'],
  'ima-modsig': ['d-ng', 'n-ng', 'sig', 'd-modsig', 'modsig'],
};

const TEMPLATE_NAME_MAX = 15; // IMA_TEMPLATE_NAME_LEN_MAX
const LEGACY_NAME_FIELD = 256; // IMA_EVENT_NAME_LEN_MAX + 1
const DEFAULT_MAX_ENTRIES = 1_000_000;
const NO_DIGEST: ImaFileDigest = Object.freeze({ algorithm: '', digest: Buffer.alloc(0) });

export interface ImaFileDigest {
  /** Hash algorithm name as the kernel prints it (sha1, sha256, ...). */
  algorithm: string;
  digest: Buffer;
  /** d-ngv2 only: "ima" (file content) or "verity" (fs-verity digest). */
  type?: string;
}

export interface ImaEntry {
  pcr: number;
  /** SHA-1 template digest as recorded in the list; all zero marks a violation. */
  templateHash: Buffer;
  template: string;
  /** Raw fields in template order. */
  fields: Buffer[];
  /** The bytes the template digest is computed over (see header). */
  templateData: Buffer;
  /** d / d-ng / d-ngv2 field. */
  fileDigest: ImaFileDigest;
  /** n / n-ng field, without the trailing NUL; for ima-buf the buffer's name (e.g. a keyring). */
  path: string;
  /** sig field (ima-sig, ima-sigv2, ima-modsig); empty when the file carried none. */
  signature?: Buffer;
  /** buf field (ima-buf). */
  buf?: Buffer;
  modsig?: { digest: ImaFileDigest; signature: Buffer };
  violation: boolean;
}

export interface ImaParseOptions {
  maxEntries?: number;
}

function isZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}

// Parsed d-ng / d-ngv2 prefixes: a list repeats the same few ("sha256:"), so each is validated once.
// Bounded, since a hostile list may carry many distinct ones.
const PREFIX_CACHE_MAX = 64;
const ngPrefixes = new Map<string, { algorithm: string; type?: string }>();

function decodeNgDigest(field: Buffer, what: string, v2: boolean): ImaFileDigest {
  // d-ng: "algo:\0" + digest; d-ngv2: "type:algo:\0" + digest. A field without the prefix is a bare
  // sha1/md5 digest (kernels write that for those two when the template asks for d-ng, pre-5.x).
  const nul = field.indexOf(0);
  if (nul < 0) {
    if (field.length === 20) return { algorithm: 'sha1', digest: field };
    if (field.length === 16) return { algorithm: 'md5', digest: field };
    throw new ImaLogError(`${what}: digest has no algorithm prefix`);
  }
  const prefix = field.toString('latin1', 0, nul);
  const digest = field.subarray(nul + 1);
  // A prefix never holds NUL, so a leading one keeps d-ngv2 keys apart from d-ng ones.
  const key = v2 ? `\0${prefix}` : prefix;
  const hit = ngPrefixes.get(key);
  if (hit) return hit.type === undefined ? { algorithm: hit.algorithm, digest } : { type: hit.type, algorithm: hit.algorithm, digest };
  if (!prefix.endsWith(':')) throw new ImaLogError(`${what}: digest prefix ${JSON.stringify(prefix)} lacks ':'`);
  const parts = prefix.slice(0, -1).split(':');
  let parsed: { algorithm: string; type?: string };
  if (v2) {
    if (parts.length !== 2 || !parts[0] || !parts[1]) throw new ImaLogError(`${what}: bad d-ngv2 prefix ${JSON.stringify(prefix)}`);
    parsed = { type: parts[0], algorithm: parts[1] };
  } else {
    if (parts.length !== 1 || !parts[0] || !/^[a-z0-9_-]+$/.test(parts[0])) throw new ImaLogError(`${what}: bad d-ng prefix ${JSON.stringify(prefix)}`);
    parsed = { algorithm: parts[0] };
  }
  if (ngPrefixes.size < PREFIX_CACHE_MAX) ngPrefixes.set(key, parsed);
  return parsed.type === undefined ? { algorithm: parsed.algorithm, digest } : { type: parsed.type, algorithm: parsed.algorithm, digest };
}

function decodeName(field: Buffer): string {
  const nul = field.indexOf(0);
  return field.toString('utf8', 0, nul < 0 ? field.length : nul);
}

function interpret(pcr: number, templateHash: Buffer, template: string, fields: Buffer[], what: string, rawData?: Buffer): ImaEntry {
  const layout = IMA_TEMPLATES[template];
  if (!layout) throw new ImaLogError(`${what}: unsupported template ${JSON.stringify(template)}`);
  if (fields.length !== layout.length) throw new ImaLogError(`${what}: template ${template} has ${layout.length} fields, got ${fields.length}`);
  // Fields are views into the parsed input (no copies: a 10,000-entry list must parse in milliseconds).
  const e: ImaEntry = {
    pcr, templateHash, template, fields, templateData: rawData ?? templateHashInput(template, fields),
    fileDigest: NO_DIGEST, path: '', violation: isZero(templateHash),
  };
  let modDigest: ImaFileDigest = NO_DIGEST;
  for (let i = 0; i < layout.length; i++) {
    const f = fields[i] as Buffer;
    switch (layout[i]) {
      case 'd':
        if (f.length !== 20) throw new ImaLogError(`${what}: legacy digest must be 20 bytes`);
        e.fileDigest = { algorithm: 'sha1', digest: f };
        break;
      case 'd-ng':
        e.fileDigest = decodeNgDigest(f, what, false);
        break;
      case 'd-ngv2':
        e.fileDigest = decodeNgDigest(f, what, true);
        break;
      case 'n':
      case 'n-ng':
        e.path = decodeName(f);
        break;
      case 'sig':
        e.signature = f;
        break;
      case 'buf':
        e.buf = f;
        break;
      case 'd-modsig':
        if (f.length > 0) modDigest = decodeNgDigest(f, what, false);
        break;
      case 'modsig':
        e.modsig = { digest: modDigest, signature: f };
        break;
    }
  }
  if (e.fileDigest === NO_DIGEST) throw new ImaLogError(`${what}: no digest field`);
  return e;
}

/** Parses binary_runtime_measurements. Every length is checked against the input before use. */
export function parseImaBinary(data: Uint8Array, opts: ImaParseOptions = {}): ImaEntry[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const max = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
  const out: ImaEntry[] = [];
  let off = 0;
  const need = (n: number, what: string) => {
    if (n > buf.length - off) throw new ImaLogError(`entry ${out.length}: truncated ${what} at offset ${off}`);
  };
  while (off < buf.length) {
    if (out.length >= max) throw new ImaLogError(`more than ${max} entries`);
    const what = `entry ${out.length}`;
    need(4 + 20 + 4, 'header');
    const pcr = buf.readUInt32LE(off);
    const templateHash = buf.subarray(off + 4, off + 24);
    const nameLen = buf.readUInt32LE(off + 24);
    off += 28;
    if (nameLen === 0 || nameLen > TEMPLATE_NAME_MAX) throw new ImaLogError(`${what}: template name length ${nameLen}`);
    need(nameLen, 'template name');
    const template = buf.toString('latin1', off, off + nameLen);
    off += nameLen;
    let fields: Buffer[];
    if (template === 'ima') {
      need(20 + 4, 'ima digest');
      const digest = buf.subarray(off, off + 20);
      const len = buf.readUInt32LE(off + 20);
      off += 24;
      if (len >= LEGACY_NAME_FIELD) throw new ImaLogError(`${what}: legacy name length ${len}`);
      need(len, 'ima name');
      fields = [digest, buf.subarray(off, off + len)];
      off += len;
    } else {
      need(4, 'template data length');
      const len = buf.readUInt32LE(off);
      off += 4;
      need(len, 'template data');
      const raw = buf.subarray(off, off + len);
      fields = splitFields(raw, what);
      off += len;
      out.push(interpret(pcr, templateHash, template, fields, what, raw));
      continue;
    }
    out.push(interpret(pcr, templateHash, template, fields, what));
  }
  return out;
}

function splitFields(data: Buffer, what: string): Buffer[] {
  const fields: Buffer[] = [];
  let off = 0;
  while (off < data.length) {
    if (data.length - off < 4) throw new ImaLogError(`${what}: truncated field length`);
    const len = data.readUInt32LE(off);
    off += 4;
    if (len > data.length - off) throw new ImaLogError(`${what}: field length ${len} overruns template data`);
    fields.push(data.subarray(off, off + len));
    off += len;
  }
  return fields;
}

const HEX = /^(?:[0-9a-f]{2})*$/i;

function hex(s: string, what: string): Buffer {
  if (!HEX.test(s)) throw new ImaLogError(`${what}: not hex: ${JSON.stringify(s.slice(0, 80))}`);
  return Buffer.from(s, 'hex');
}

function asciiDigestField(tok: string, what: string, v2: boolean): Buffer {
  const parts = tok.split(':');
  const digest = hex(parts.pop() ?? '', what);
  if (parts.length === 0) return digest;
  if (parts.length !== (v2 ? 2 : 1) || parts.some((p) => !/^[a-z0-9_-]+$/.test(p))) throw new ImaLogError(`${what}: bad digest ${JSON.stringify(tok)}`);
  return Buffer.concat([Buffer.from(`${parts.join(':')}:\0`, 'latin1'), digest]);
}

/**
 * Parses ascii_runtime_measurements back into fields. The ASCII form loses information the template
 * hash covers (names are printed escaped, without their NUL), so template data rebuilt from it is
 * exact only for ordinary names; the binary form is authoritative.
 */
export function parseImaAscii(text: string, opts: ImaParseOptions = {}): ImaEntry[] {
  const max = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
  const out: ImaEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).replace(/\r$/, '');
    if (line === '') continue;
    if (out.length >= max) throw new ImaLogError(`more than ${max} entries`);
    const what = `line ${i + 1}`;
    const m = /^(\d{1,10}) ([0-9a-fA-F]+) (\S+) (.*)$/.exec(line);
    if (!m) throw new ImaLogError(`${what}: not an IMA entry`);
    const pcr = Number(m[1]);
    if (pcr > 0xffffffff) throw new ImaLogError(`${what}: pcr out of range`);
    const templateHash = hex(m[2] as string, what);
    if (templateHash.length !== 20) throw new ImaLogError(`${what}: template hash must be 20 bytes`);
    const template = m[3] as string;
    const layout = IMA_TEMPLATES[template];
    if (!layout) throw new ImaLogError(`${what}: unsupported template ${JSON.stringify(template)}`);
    const rest = m[4] as string;
    // Names carry no spaces (escaped by the kernel), so split on spaces; the last field may be empty.
    const toks = rest.split(' ');
    if (toks.length !== layout.length) throw new ImaLogError(`${what}: template ${template} has ${layout.length} fields, got ${toks.length}`);
    const fields = layout.map((id, k) => {
      const tok = toks[k] as string;
      switch (id) {
        case 'd':
          return hex(tok, what);
        case 'd-ng':
        case 'd-modsig':
          return tok === '' ? Buffer.alloc(0) : asciiDigestField(tok, what, false);
        case 'd-ngv2':
          return asciiDigestField(tok, what, true);
        case 'n':
          return Buffer.from(tok, 'utf8');
        case 'n-ng':
          return Buffer.concat([Buffer.from(tok, 'utf8'), Buffer.of(0)]);
        default:
          return hex(tok, what);
      }
    });
    out.push(interpret(pcr, templateHash, template, fields, what));
  }
  return out;
}

function templateHashInput(template: string, fields: readonly Buffer[]): Buffer {
  if (template === 'ima') {
    const name = fields[1] as Buffer;
    const padded = Buffer.alloc(LEGACY_NAME_FIELD);
    name.copy(padded, 0, 0, Math.min(name.length, LEGACY_NAME_FIELD - 1));
    return Buffer.concat([fields[0] as Buffer, padded]);
  }
  const out = Buffer.alloc(fields.reduce((n, f) => n + 4 + f.length, 0));
  let off = 0;
  for (const f of fields) {
    off = out.writeUInt32LE(f.length, off);
    off += f.copy(out, off);
  }
  return out;
}

/** The template digest of this entry in one bank, as the kernel computes it. */
export function imaTemplateHash(entry: ImaEntry, bank: ImaBank): Buffer {
  return hash(bank, entry.templateData, 'buffer');
}

// Node's one-shot hash returns a string about twice as fast as a Buffer (no per-call backing store),
// which matters at three hashes per entry of a 10,000-entry list; the loops below therefore work on
// latin1 strings (one char per byte, so no hex parsing) and reuse one scratch buffer.
function templateHashBytes(entry: ImaEntry, bank: ImaBank): string {
  return hash(bank, entry.templateData, 'binary'); // 'binary' is node's alias of latin1
}

/** What PCR 10 of `bank` is extended with for this entry. */
export function imaExtendValue(entry: ImaEntry, bank: ImaBank): Buffer {
  return entry.violation ? Buffer.alloc(IMA_BANK_SIZES[bank], 0xff) : imaTemplateHash(entry, bank);
}

/** Whether the recorded SHA-1 template digest of a non-violation entry matches its data. */
export function templateHashMatches(entry: ImaEntry): boolean {
  return entry.violation || templateHashBytes(entry, 'sha1') === entry.templateHash.toString('latin1');
}

/** Index of the first entry whose recorded SHA-1 template digest does not match its data, or -1. */
export function findTemplateHashMismatch(entries: readonly ImaEntry[]): number {
  return entries.findIndex((e) => !templateHashMatches(e));
}

/**
 * Replays the entries for `pcr` from zero; `stop` sees the value after each extend (latin1, see
 * above) with the index of the entry and ends the replay by returning true. Returns the final value.
 */
function replay(entries: readonly ImaEntry[], bank: ImaBank, pcr: number, stop: (value: string, index: number) => boolean): string {
  const size = IMA_BANK_SIZES[bank];
  // value ‖ extend value: the PCR extend input, rewritten in place.
  const scratch = Buffer.alloc(2 * size);
  let value = scratch.toString('latin1', 0, size);
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i] as ImaEntry;
    if (e.pcr !== pcr) continue;
    if (e.violation) scratch.fill(0xff, size);
    else scratch.write(templateHashBytes(e, bank), size, 'latin1');
    value = hash(bank, scratch, 'binary');
    scratch.write(value, 0, 'latin1');
    if (stop(value, i)) break;
  }
  return value;
}

/** Replays the entries for one PCR (10 by default) from zero and returns its value in `bank`. */
export function replayImaLog(entries: readonly ImaEntry[], bank: ImaBank, pcr = IMA_PCR): Buffer {
  return Buffer.from(replay(entries, bank, pcr, () => false), 'latin1');
}

/**
 * The number of leading entries whose replay equals `quoted`, or null. IMA appends to the list before
 * it extends the PCR and a quote is not atomic with reading the list, so the quoted value may match a
 * prefix; the verifier then judges only that prefix.
 */
export function matchImaPrefix(entries: readonly ImaEntry[], bank: ImaBank, quoted: Uint8Array, pcr = IMA_PCR): number | null {
  const want = Buffer.from(quoted.buffer, quoted.byteOffset, quoted.byteLength).toString('latin1');
  if (want === '\0'.repeat(IMA_BANK_SIZES[bank])) return 0;
  let n: number | null = null;
  replay(entries, bank, pcr, (value, i) => {
    if (value !== want) return false;
    n = i + 1;
    return true;
  });
  return n;
}

export const BOOT_AGGREGATE_NAME = 'boot_aggregate';

/** The boot_aggregate entry: the first entry, named boot_aggregate, or undefined. */
export function findBootAggregate(entries: readonly ImaEntry[]): ImaEntry | undefined {
  const first = entries[0];
  return first && first.path === BOOT_AGGREGATE_NAME ? first : undefined;
}

/**
 * boot_aggregate from PCR values (ima_crypto.c ima_calc_boot_aggregate_tfm): H(PCR0 ‖ … ‖ PCR7), and
 * for banks other than SHA-1 also ‖ PCR8 ‖ PCR9. Without a TPM the kernel records all zeros instead.
 */
export function computeBootAggregate(pcrs: readonly Uint8Array[], bank: ImaBank): Buffer {
  const count = bank === 'sha1' ? 8 : 10;
  if (pcrs.length < count) throw new ImaLogError(`boot_aggregate over ${bank} needs PCRs 0-${count - 1}`);
  const values = pcrs.slice(0, count).map((v, i) => {
    if (v.length !== IMA_BANK_SIZES[bank]) throw new ImaLogError(`PCR ${i} is not a ${bank} value`);
    return v;
  });
  return hash(bank, Buffer.concat(values), 'buffer');
}

/** One line of ascii_runtime_measurements for an entry (what the kernel prints). */
export function formatImaAscii(e: ImaEntry): string {
  const layout = IMA_TEMPLATES[e.template] ?? [];
  const cols = layout.map((id, i) => {
    const f = e.fields[i] as Buffer;
    switch (id) {
      case 'd':
        return f.toString('hex');
      case 'd-ng':
      case 'd-ngv2':
      case 'd-modsig': {
        if (f.length === 0) return '';
        const nul = f.indexOf(0);
        return nul < 0 ? f.toString('hex') : `${f.subarray(0, nul).toString('latin1')}${f.subarray(nul + 1).toString('hex')}`;
      }
      case 'n':
      case 'n-ng':
        return decodeName(f);
      default:
        return f.toString('hex');
    }
  });
  return `${e.pcr} ${e.templateHash.toString('hex')} ${e.template} ${cols.join(' ')}`;
}
