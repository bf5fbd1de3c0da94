/**
 * The enclave measurement, vmseal's MRENCLAVE: one hash over exactly the code that runs and the static
 * configuration it runs with.
 *
 *   measurement = SHA-256("VMSEAL-ENCLAVE1" ‖ u64 BE len ‖ bundle ‖ u64 BE len ‖ canonical config JSON)
 *
 * Canonical JSON: object keys sorted by UTF-16 code units, no whitespace, JSON.stringify's escaping; the
 * config holds only strings, safe integers, booleans, null, arrays and objects, so this is RFC 8785.
 */
import { createHash } from 'node:crypto';

const LABEL = Buffer.from('VMSEAL-ENCLAVE1', 'ascii');

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new Error(`canonical JSON takes safe integers only, not ${value}`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  throw new Error(`canonical JSON cannot hold a ${typeof value}`);
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
}

/** Hex SHA-256 measurement of a bundle and its configuration. */
export function enclaveMeasurement(bundle: Uint8Array, config: unknown): string {
  const configBytes = Buffer.from(canonicalJson(config), 'utf8');
  return createHash('sha256').update(LABEL).update(u64(bundle.length)).update(bundle).update(u64(configBytes.length)).update(configBytes).digest('hex');
}
