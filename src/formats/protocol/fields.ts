/** zod field types shared by the protocol messages: binary values travel as base64 or hex in JSON. */
import { z } from 'zod';
import { HOST_ID_PATTERN } from './host-certificate.ts';

/** Base64 (standard alphabet, padded) of exactly `bytes` bytes; parses to a Buffer. */
export function base64Bytes(bytes: number) {
  const chars = 4 * Math.ceil(bytes / 3);
  return z
    .string()
    .length(chars)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64')
    .transform((s, ctx): Buffer => {
      const b = Buffer.from(s, 'base64');
      if (b.length !== bytes || b.toString('base64') !== s) {
        ctx.addIssue({ code: 'custom', message: `must be base64 of exactly ${bytes} bytes` });
        return z.NEVER;
      }
      return b;
    });
}

/** Lower-case hex of exactly `bytes` bytes, kept as a string. */
export const hexBytes = (bytes: number) => z.string().regex(new RegExp(`^[0-9a-f]{${bytes * 2}}$`), `must be ${bytes * 2} lower-case hex digits`);

export const sha256Hex = hexBytes(32);
export const vmIdHex = hexBytes(16);

/** A host id as the CA certifies it (src/authority/ca.ts's HOST_ID_PATTERN). */
export const hostIdField = z.string().regex(HOST_ID_PATTERN, 'must be a host id (1-64 of A-Z a-z 0-9 . _ -)');

/** The tenant's name for a VM. */
export const vmNameField = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'must be 1-63 of a-z 0-9 - (starting with a letter or digit)');

export class ProtocolError extends Error {
  override name = 'ProtocolError';
  constructor(
    readonly what: string,
    message: string,
  ) {
    super(`${what}: ${message}`);
  }
}

/** Parses a JSON message of at most `maxBytes` with `schema`; any problem is a ProtocolError naming `what`. */
export function decodeJson<S extends z.ZodType>(what: string, schema: S, bytes: Uint8Array, maxBytes: number): z.output<S> {
  if (bytes.length > maxBytes) throw new ProtocolError(what, `${bytes.length} bytes is over the limit of ${maxBytes}`);
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new ProtocolError(what, 'not valid JSON');
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ProtocolError(what, issues);
  }
  return parsed.data;
}
