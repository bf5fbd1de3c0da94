// The LUKS2 JSON metadata (on-disk-format-luks2.pdf, section 3): keyslots, tokens, segments, digests, config.
// 64-bit quantities are decimal strings, small integers are JSON numbers, binary values are base64. Everything
// is validated here (zod for shape, then cross-references and bounds), so later code can trust the numbers.
import { z } from 'zod';
import { BINARY_HEADER_SIZE } from './binary-header.ts';
import { MAX_AF_STRIPES } from './af.ts';
import { LuksFormatError } from './errors.ts';
import { checkKdf, type KeyslotKdf } from './kdf.ts';
import { luksHash } from './hash.ts';

/** cryptsetup's limits: 32 keyslots and tokens, a keyslots area of at most 128 MiB. */
export const MAX_KEYSLOTS = 32;
export const MAX_KEYSLOTS_AREA = 128 * 1024 * 1024;
export const SECTOR_SIZES: readonly number[] = [512, 1024, 2048, 4096];
const AREA_ALIGN = 4096;

const id = z.string().regex(/^(0|[1-9][0-9]{0,8})$/, 'object key must be a decimal id');
const u64 = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,19})$/, 'expected a decimal 64-bit integer string')
  .transform((s) => BigInt(s))
  .refine((v) => v < 1n << 64n, 'exceeds 64 bits');
/** A 64-bit string that must also fit a JS number exactly (byte offsets and sizes of real files do). */
const u53 = u64.refine((v) => v <= BigInt(Number.MAX_SAFE_INTEGER), 'exceeds 2^53').transform((v) => Number(v));
const base64 = z
  .string()
  .max(8192)
  .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'expected base64')
  .transform((s) => Buffer.from(s, 'base64'));
const int = (min: number, max: number) => z.number().int().min(min).max(max);
const shortString = z.string().min(1).max(64);

const pbkdf2Kdf = z.object({ type: z.literal('pbkdf2'), hash: shortString, iterations: int(1, 0xffffffff), salt: base64 });
const argon2Kdf = z.object({
  type: z.enum(['argon2i', 'argon2id']),
  time: int(1, 0xffffffff),
  memory: int(1, 0xffffffff),
  cpus: int(1, 0xffffff),
  salt: base64,
});
const luks2Keyslot = z.object({
  type: z.literal('luks2'),
  key_size: int(1, 512),
  priority: z.union([z.literal(0), z.literal(1), z.literal(2)]).optional(),
  af: z.object({ type: z.literal('luks1'), stripes: int(1, MAX_AF_STRIPES), hash: shortString }),
  area: z.object({ type: z.literal('raw'), offset: u53, size: u53, encryption: shortString, key_size: int(1, 512) }),
  kdf: z.discriminatedUnion('type', [pbkdf2Kdf, argon2Kdf]),
});
const anyTyped = z.looseObject({ type: z.string().max(64) });
const cryptSegment = z.object({
  type: z.literal('crypt'),
  offset: u53,
  size: z.union([z.literal('dynamic'), u53]),
  iv_tweak: u64,
  encryption: shortString,
  sector_size: int(512, 4096),
  integrity: z.unknown().optional(),
  flags: z.array(z.string().max(64)).max(64).optional(),
});
const digestSchema = z.object({
  type: z.literal('pbkdf2'),
  keyslots: z.array(id).max(MAX_KEYSLOTS),
  segments: z.array(id).max(64),
  hash: shortString,
  iterations: int(1, 0xffffffff),
  salt: base64,
  digest: base64,
});
const metadataSchema = z.object({
  keyslots: z.record(id, anyTyped),
  tokens: z.record(id, anyTyped),
  segments: z.record(id, anyTyped),
  digests: z.record(id, anyTyped),
  config: z.object({
    json_size: u53,
    keyslots_size: u53,
    flags: z.array(z.string().max(64)).max(64).optional(),
    requirements: z.object({ mandatory: z.array(z.string().max(64)).max(64).optional() }).optional(),
  }),
});

export interface Luks2Keyslot {
  id: number;
  keySize: number;
  /** 0 = ignore, 1 = normal, 2 = high: the order cryptsetup tries keyslots in. */
  priority: 0 | 1 | 2;
  af: { stripes: number; hash: string };
  area: { offset: number; size: number; encryption: string; keySize: number };
  kdf: KeyslotKdf;
}

export interface Luks2CryptSegment {
  id: number;
  type: 'crypt';
  offset: number;
  size: number | 'dynamic';
  ivTweak: bigint;
  encryption: string;
  sectorSize: number;
  /** dm-integrity (authenticated encryption) is configured for this segment. */
  integrity: boolean;
  flags: string[];
}

export interface Luks2Digest {
  id: number;
  keyslots: number[];
  segments: number[];
  hash: string;
  iterations: number;
  salt: Buffer;
  digest: Buffer;
}

export interface Luks2Metadata {
  keyslots: Luks2Keyslot[];
  /** Keyslots of a type other than "luks2" (e.g. "reencrypt"): never used to unlock. */
  otherKeyslots: { id: number; type: string }[];
  tokens: Record<string, Record<string, unknown>>;
  segments: Luks2CryptSegment[];
  /** Segments of a type other than "crypt" (e.g. "linear" during reencryption). */
  otherSegments: { id: number; type: string }[];
  digests: Luks2Digest[];
  config: { jsonSize: number; keyslotsSize: number; flags: string[]; mandatoryRequirements: string[] };
}

/** Parses and validates the JSON text of a header whose hdr_size is `hdrSize`. */
export function parseLuks2Metadata(jsonText: string, hdrSize: number): Luks2Metadata {
  let raw: unknown;
  try {
    raw = JSON.parse(jsonText);
  } catch (e) {
    throw new LuksFormatError(`LUKS2 metadata is not valid JSON: ${(e as Error).message}`);
  }
  const top = check(metadataSchema, raw, 'metadata');
  const m: Luks2Metadata = {
    keyslots: [],
    otherKeyslots: [],
    tokens: top.tokens,
    segments: [],
    otherSegments: [],
    digests: [],
    config: {
      jsonSize: top.config.json_size,
      keyslotsSize: top.config.keyslots_size,
      flags: top.config.flags ?? [],
      mandatoryRequirements: top.config.requirements?.mandatory ?? [],
    },
  };
  if (Object.keys(top.keyslots).length > MAX_KEYSLOTS || Object.keys(top.tokens).length > MAX_KEYSLOTS) {
    throw new LuksFormatError(`LUKS2 metadata: more than ${MAX_KEYSLOTS} keyslots or tokens`);
  }
  for (const [key, value] of Object.entries(top.keyslots)) {
    if (value.type !== 'luks2') {
      m.otherKeyslots.push({ id: Number(key), type: value.type });
      continue;
    }
    const k = check(luks2Keyslot, value, `keyslot ${key}`);
    const kdf: KeyslotKdf =
      k.kdf.type === 'pbkdf2'
        ? { type: 'pbkdf2', hash: k.kdf.hash, iterations: k.kdf.iterations, salt: k.kdf.salt }
        : { type: k.kdf.type, time: k.kdf.time, memoryKiB: k.kdf.memory, parallelism: k.kdf.cpus, salt: k.kdf.salt };
    wrap(`keyslot ${key}`, () => {
      checkKdf(kdf);
      luksHash(k.af.hash);
    });
    m.keyslots.push({
      id: Number(key),
      keySize: k.key_size,
      priority: k.priority ?? 1,
      af: { stripes: k.af.stripes, hash: k.af.hash },
      area: { offset: k.area.offset, size: k.area.size, encryption: k.area.encryption, keySize: k.area.key_size },
      kdf,
    });
  }
  for (const [key, value] of Object.entries(top.segments)) {
    if (value.type !== 'crypt') {
      m.otherSegments.push({ id: Number(key), type: value.type });
      continue;
    }
    const s = check(cryptSegment, value, `segment ${key}`);
    m.segments.push({
      id: Number(key),
      type: 'crypt',
      offset: s.offset,
      size: s.size,
      ivTweak: s.iv_tweak,
      encryption: s.encryption,
      sectorSize: s.sector_size,
      integrity: s.integrity !== undefined,
      flags: s.flags ?? [],
    });
  }
  for (const [key, value] of Object.entries(top.digests)) {
    const d = check(digestSchema, value, `digest ${key}`);
    wrap(`digest ${key}`, () => luksHash(d.hash));
    m.digests.push({
      id: Number(key),
      keyslots: d.keyslots.map(Number),
      segments: d.segments.map(Number),
      hash: d.hash,
      iterations: d.iterations,
      salt: d.salt,
      digest: d.digest,
    });
  }
  crossCheck(m, hdrSize, top);
  return m;
}

function crossCheck(m: Luks2Metadata, hdrSize: number, top: z.infer<typeof metadataSchema>): void {
  const fail = (msg: string): never => {
    throw new LuksFormatError(`LUKS2 metadata: ${msg}`);
  };
  if (m.config.jsonSize !== hdrSize - BINARY_HEADER_SIZE) fail(`config.json_size ${m.config.jsonSize} != hdr_size - 4096`);
  const ks = m.config.keyslotsSize;
  if (ks % AREA_ALIGN !== 0 || ks > MAX_KEYSLOTS_AREA) fail(`config.keyslots_size ${ks} invalid`);
  const areaStart = 2 * hdrSize;
  const areaEnd = areaStart + ks;
  for (const k of m.keyslots) {
    const { offset, size } = k.area;
    if (offset % AREA_ALIGN !== 0 || size % AREA_ALIGN !== 0 || size === 0) fail(`keyslot ${k.id} area not 4096-aligned`);
    if (offset < areaStart || offset + size > areaEnd) fail(`keyslot ${k.id} area ${offset}+${size} outside the keyslots area`);
    if (k.keySize * k.af.stripes > size) fail(`keyslot ${k.id}: ${k.af.stripes} stripes of ${k.keySize} bytes exceed its area`);
  }
  const sorted = [...m.keyslots].sort((a, b) => a.area.offset - b.area.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    if (prev.area.offset + prev.area.size > sorted[i]!.area.offset) fail(`keyslots ${prev.id} and ${sorted[i]!.id} overlap`);
  }
  for (const s of m.segments) {
    if (!SECTOR_SIZES.includes(s.sectorSize)) fail(`segment ${s.id}: sector_size ${s.sectorSize} invalid`);
    if (s.offset % s.sectorSize !== 0) fail(`segment ${s.id}: offset not aligned to its sector size`);
    if (s.size !== 'dynamic' && s.size % s.sectorSize !== 0) fail(`segment ${s.id}: size not a multiple of its sector size`);
  }
  const keyslotIds = new Set(Object.keys(top.keyslots).map(Number));
  const segmentIds = new Set(Object.keys(top.segments).map(Number));
  for (const d of m.digests) {
    for (const k of d.keyslots) if (!keyslotIds.has(k)) fail(`digest ${d.id} names missing keyslot ${k}`);
    for (const s of d.segments) if (!segmentIds.has(s)) fail(`digest ${d.id} names missing segment ${s}`);
    if (d.digest.length < 1 || d.digest.length > 64) fail(`digest ${d.id} has ${d.digest.length} bytes`);
  }
}

/** Encodes metadata as cryptsetup lays it out (compact JSON, u64 as strings). */
export function encodeLuks2Metadata(m: Luks2Metadata): string {
  const keyslots: Record<string, unknown> = {};
  for (const k of m.keyslots) {
    keyslots[String(k.id)] = {
      type: 'luks2',
      key_size: k.keySize,
      ...(k.priority === 1 ? {} : { priority: k.priority }),
      af: { type: 'luks1', stripes: k.af.stripes, hash: k.af.hash },
      area: { type: 'raw', offset: String(k.area.offset), size: String(k.area.size), encryption: k.area.encryption, key_size: k.area.keySize },
      kdf:
        k.kdf.type === 'pbkdf2'
          ? { type: 'pbkdf2', hash: k.kdf.hash, iterations: k.kdf.iterations, salt: k.kdf.salt.toString('base64') }
          : { type: k.kdf.type, time: k.kdf.time, memory: k.kdf.memoryKiB, cpus: k.kdf.parallelism, salt: k.kdf.salt.toString('base64') },
    };
  }
  const segments: Record<string, unknown> = {};
  for (const s of m.segments) {
    if (s.integrity) throw new LuksFormatError('encoding integrity segments is not supported');
    segments[String(s.id)] = {
      type: 'crypt',
      offset: String(s.offset),
      size: String(s.size),
      iv_tweak: String(s.ivTweak),
      encryption: s.encryption,
      sector_size: s.sectorSize,
      ...(s.flags.length ? { flags: s.flags } : {}),
    };
  }
  const digests: Record<string, unknown> = {};
  for (const d of m.digests) {
    digests[String(d.id)] = {
      type: 'pbkdf2',
      keyslots: d.keyslots.map(String),
      segments: d.segments.map(String),
      hash: d.hash,
      iterations: d.iterations,
      salt: d.salt.toString('base64'),
      digest: d.digest.toString('base64'),
    };
  }
  const config: Record<string, unknown> = { json_size: String(m.config.jsonSize), keyslots_size: String(m.config.keyslotsSize) };
  if (m.config.flags.length) config.flags = m.config.flags;
  if (m.config.mandatoryRequirements.length) config.requirements = { mandatory: m.config.mandatoryRequirements };
  return JSON.stringify({ keyslots, tokens: m.tokens, segments, digests, config });
}

function check<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues
    .slice(0, 3)
    .map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`)
    .join('; ');
  throw new LuksFormatError(`LUKS2 ${what}: ${issues}`);
}

function wrap(what: string, fn: () => void): void {
  try {
    fn();
  } catch (e) {
    throw new LuksFormatError(`LUKS2 ${what}: ${(e as Error).message}`);
  }
}
