/** The exports an NBD server offers: validated once, with their transmission flags. */
import { MAX_STRING_LENGTH, NbdFlag } from '../../formats/nbd/constants.ts';
import type { BlockBackend, BlockSizes } from './backend.ts';

export interface NbdExport {
  name: string;
  backend: BlockBackend;
  size: number;
  blockSizes: BlockSizes;
  transmissionFlags: number;
}

const isPowerOfTwo = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Checks what the spec demands of advertised sizes, so we never advertise nonsense. */
function checkBlockSizes(name: string, s: BlockSizes): void {
  const bad = (why: string): never => {
    throw new Error(`export "${name}": ${why} (min ${s.min}, preferred ${s.preferred}, max ${s.max})`);
  };
  if (!isPowerOfTwo(s.min) || s.min > 65536) bad('minimum block size must be a power of two no larger than 65536');
  if (!isPowerOfTwo(s.preferred) || s.preferred < Math.max(s.min, 512)) bad('preferred block size must be a power of two >= max(minimum, 512)');
  if (!Number.isInteger(s.max) || s.max < s.preferred || s.max > 0xffffffff) bad('maximum payload must be an integer between the preferred size and 2^32-1');
  if (s.max % s.min !== 0) bad('maximum payload must be a multiple of the minimum block size');
}

/**
 * Flags are advertised only for what the server really does. CAN_MULTI_CONN holds because all
 * connections to an export share one backend object, whose flush makes every write completed
 * through any connection durable, and which every connection reads through.
 */
function transmissionFlags(b: BlockBackend): number {
  let f = NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.CAN_MULTI_CONN;
  if (b.readOnly) f |= NbdFlag.READ_ONLY;
  else {
    if (b.canTrim) f |= NbdFlag.SEND_TRIM;
    if (b.canWriteZeroes) f |= NbdFlag.SEND_WRITE_ZEROES;
  }
  return f;
}

export class ExportTable {
  readonly #byName = new Map<string, NbdExport>();
  readonly #default: NbdExport;

  constructor(backends: Map<string, BlockBackend>) {
    for (const [name, backend] of backends) {
      if (Buffer.byteLength(name) > MAX_STRING_LENGTH || name.includes('\0')) throw new Error(`invalid export name ${JSON.stringify(name.slice(0, 64))}`);
      if (!Number.isSafeInteger(backend.size) || backend.size < 0) throw new Error(`export "${name}": invalid size ${backend.size}`);
      const blockSizes = { ...backend.blockSizes };
      checkBlockSizes(name, blockSizes);
      this.#byName.set(name, { name, backend, size: backend.size, blockSizes, transmissionFlags: transmissionFlags(backend) });
    }
    const first = this.#byName.values().next();
    if (first.done) throw new Error('an NBD server needs at least one export');
    this.#default = first.value;
  }

  /** "" names the default export: an export literally called "" or else the first one. */
  lookup(name: string): NbdExport | undefined {
    return this.#byName.get(name) ?? (name === '' ? this.#default : undefined);
  }

  list(): NbdExport[] {
    return [...this.#byName.values()];
  }
}
