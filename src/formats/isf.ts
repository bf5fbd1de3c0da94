/**
 * Volatility 3's Intermediate Symbol Format (ISF): the JSON kernel profile Volatility reads, modelled
 * on its schema 6.x (volatility3/schemas/schema-6.*.json) so our profiles load in Volatility and
 * Volatility's own ISF files load here.
 *
 * Symbol addresses and enum constants are exact bigints: kernel addresses (0xffffffff8...) and 64-bit
 * enum values exceed 2^53, and Volatility writes them as plain JSON integers. Use `parseIsfText` /
 * `serializeIsf` for the JSON text, which keep every integer exact; `parseIsf` validates an
 * already-parsed value and refuses numbers beyond 2^53 in it (JSON.parse has rounded them).
 */
import { parse as parseLossless, stringify as stringifyLossless } from 'lossless-json';
import { z } from 'zod';

export class IsfError extends Error {
  override name = 'IsfError';
}

export type IsfBaseRef = { kind: 'base'; name: string };
export type IsfEnumRef = { kind: 'enum'; name: string };
export type IsfTypeDescriptor =
  | IsfBaseRef
  | { kind: 'pointer'; subtype: IsfTypeDescriptor; base?: string | undefined }
  | { kind: 'array'; count: number; subtype: IsfTypeDescriptor }
  | { kind: 'struct' | 'union' | 'class'; name: string }
  | IsfEnumRef
  | { kind: 'function' }
  | { kind: 'bitfield'; bit_position: number; bit_length: number; type: IsfBaseRef | IsfEnumRef };

/** Object keys an attacker could use to reach a prototype; never valid C identifiers anyway. */
const safeKey = z.string().refine((k) => k !== '__proto__', 'reserved key');
const count = z.number().int().nonnegative();
/** An exact integer: a number (safe) or a bigint (from parseIsfText), always returned as bigint. */
const exactInt = z.union([z.bigint(), z.number().int()]).transform((v) => BigInt(v));

const baseRef = z.strictObject({ kind: z.literal('base'), name: z.string() });
const enumRef = z.strictObject({ kind: z.literal('enum'), name: z.string() });

const typeDescriptor: z.ZodType<IsfTypeDescriptor> = z.lazy(() =>
  z.discriminatedUnion('kind', [
    baseRef,
    z.strictObject({ kind: z.literal('pointer'), subtype: typeDescriptor, base: z.string().optional() }),
    z.strictObject({ kind: z.literal('array'), count, subtype: typeDescriptor }),
    z.strictObject({ kind: z.enum(['struct', 'union', 'class']), name: z.string() }),
    enumRef,
    z.strictObject({ kind: z.literal('function') }),
    z.strictObject({
      kind: z.literal('bitfield'),
      bit_position: count,
      bit_length: count,
      type: z.discriminatedUnion('kind', [baseRef, enumRef]),
    }),
  ]),
);

const nixItem = z.strictObject({
  kind: z.enum(['dwarf', 'symtab', 'system-map']).optional(),
  name: z.string().optional(),
  hash_type: z.literal('sha256').optional(),
  hash_value: z.string().regex(/^[a-fA-F0-9]+$/).optional(),
});
const nixMetadata = z.strictObject({ symbols: z.array(nixItem).optional(), types: z.array(nixItem).optional() });

const metadataSchema = z
  .strictObject({
    format: z.string().regex(/^[0-9]+\.[0-9]+\.[0-9]+$/),
    // Volatility's schema leaves the producer open to extra fields.
    producer: z.looseObject({ name: z.string(), version: z.string(), datetime: z.string().optional() }).optional(),
    linux: nixMetadata.optional(),
    mac: nixMetadata.optional(),
    windows: z
      .strictObject({
        pe: z.strictObject({ major: z.number().int(), minor: z.number().int(), revision: z.number().int(), build: z.number().int().optional() }).optional(),
        pdb: z.strictObject({ GUID: z.string(), age: z.number().int(), database: z.string(), machine_type: z.number().int() }).optional(),
      })
      .optional(),
  })
  .refine((m) => [m.linux, m.mac, m.windows].filter((x) => x !== undefined).length <= 1, 'metadata names more than one operating system');

const isfSchema = z.strictObject({
  metadata: metadataSchema,
  base_types: z.record(
    safeKey,
    z.strictObject({ size: count, signed: z.boolean(), kind: z.enum(['void', 'int', 'float', 'char', 'bool']), endian: z.enum(['little', 'big']) }),
  ),
  user_types: z.record(
    safeKey,
    z.strictObject({
      kind: z.enum(['struct', 'union', 'class']),
      size: count,
      fields: z.record(safeKey, z.strictObject({ type: typeDescriptor, offset: count, anonymous: z.boolean().optional() })),
    }),
  ),
  enums: z.record(safeKey, z.strictObject({ size: count, base: z.string(), constants: z.record(safeKey, exactInt) })),
  symbols: z.record(
    safeKey,
    z.strictObject({
      address: exactInt,
      linkage_name: z.string().optional(),
      type: typeDescriptor.optional(),
      constant_data: z.base64().optional(),
    }),
  ),
});

export type IsfProfile = z.output<typeof isfSchema>;
export type IsfMetadata = IsfProfile['metadata'];
export type IsfBaseType = IsfProfile['base_types'][string];
export type IsfUserType = IsfProfile['user_types'][string];
export type IsfField = IsfUserType['fields'][string];
export type IsfEnum = IsfProfile['enums'][string];
export type IsfSymbol = IsfProfile['symbols'][string];

/** The ISF format version our profiles declare (schema 6.x; anonymous fields need >= 6.1). */
export const ISF_FORMAT_VERSION = '6.2.0';

/** Validates a parsed ISF document. */
export function parseIsf(json: unknown): IsfProfile {
  const r = isfSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new IsfError(`not a valid ISF profile: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}`);
  }
  return r.data;
}

/** Parses ISF JSON text, keeping integers beyond 2^53 exact (as bigint). */
export function parseIsfText(text: string): IsfProfile {
  let json: unknown;
  try {
    json = parseLossless(text, null, (digits) => {
      if (/^-?\d+$/.test(digits)) {
        const n = Number(digits);
        return Number.isSafeInteger(n) ? n : BigInt(digits);
      }
      return Number(digits);
    });
  } catch (err) {
    throw new IsfError(`ISF is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  return parseIsf(json);
}

/** The profile as JSON text; bigints are written as plain JSON integers, as Volatility writes them. */
export function serializeIsf(profile: IsfProfile): string {
  const text = stringifyLossless(profile, null, undefined, [
    { test: (v) => typeof v === 'bigint', stringify: (v) => (v as bigint).toString() },
  ]);
  if (text === undefined) throw new IsfError('profile could not be serialized');
  return text;
}

/** Byte offset of `path` (a.b.c through nested struct fields, anonymous members searched too) in `type`. */
export function fieldOffset(profile: IsfProfile, type: string, path: string): number {
  let current = type;
  let offset = 0;
  for (const part of path.split('.')) {
    const found = findField(profile, current, part, 0);
    if (!found) throw new IsfError(`${current} has no field ${part}`);
    offset += found.offset;
    const t = found.field.type;
    current = t.kind === 'struct' || t.kind === 'union' || t.kind === 'class' ? t.name : '';
  }
  return offset;
}

/** A field by name, looking through anonymous struct/union members as C does. */
export function findField(profile: IsfProfile, type: string, name: string, depth = 0): { field: IsfField; offset: number } | undefined {
  const ut = Object.hasOwn(profile.user_types, type) ? profile.user_types[type] : undefined;
  if (!ut || depth > 32) return undefined;
  if (Object.hasOwn(ut.fields, name)) {
    const field = ut.fields[name]!;
    return { field, offset: field.offset };
  }
  for (const field of Object.values(ut.fields)) {
    const t = field.type;
    if (field.anonymous && (t.kind === 'struct' || t.kind === 'union' || t.kind === 'class')) {
      const inner = findField(profile, t.name, name, depth + 1);
      if (inner) return { field: inner.field, offset: field.offset + inner.offset };
    }
  }
  return undefined;
}
