/**
 * Decides whether a transmission request may reach the backend, and if not, which error
 * proto.md prescribes. Pure: no I/O, no state.
 */
import { NbdCmd, NbdCmdFlag, NbdErrno } from '../../formats/nbd/constants.ts';
import type { RequestHeader } from '../../formats/nbd/transmission.ts';
import type { NbdExport } from './nbd-exports.ts';

export interface Rejection {
  errno: number;
  message: string;
}

/** Flags each command accepts. FUA is valid on every command once SEND_FUA is advertised (always). */
const ALLOWED_FLAGS: Record<number, number> = {
  [NbdCmd.READ]: NbdCmdFlag.FUA,
  [NbdCmd.WRITE]: NbdCmdFlag.FUA,
  [NbdCmd.DISC]: NbdCmdFlag.FUA,
  [NbdCmd.FLUSH]: NbdCmdFlag.FUA,
  [NbdCmd.TRIM]: NbdCmdFlag.FUA,
  [NbdCmd.WRITE_ZEROES]: NbdCmdFlag.FUA | NbdCmdFlag.NO_HOLE,
};

const NAMES: Record<number, string> = {
  [NbdCmd.READ]: 'read',
  [NbdCmd.WRITE]: 'write',
  [NbdCmd.DISC]: 'disconnect',
  [NbdCmd.FLUSH]: 'flush',
  [NbdCmd.TRIM]: 'trim',
  [NbdCmd.WRITE_ZEROES]: 'write zeroes',
};

const reject = (errno: number, message: string): Rejection => ({ errno, message });

export function checkRequest(h: RequestHeader, exp: NbdExport, structuredReplies: boolean): Rejection | null {
  const allowed = ALLOWED_FLAGS[h.type];
  if (allowed === undefined) return reject(NbdErrno.EINVAL, `unknown or unsupported command ${h.type}`);
  const name = NAMES[h.type]!;
  if (h.flags & ~allowed) return reject(NbdErrno.EINVAL, `${name}: flags 0x${h.flags.toString(16)} not valid for this command`);
  if (h.type === NbdCmd.DISC || h.type === NbdCmd.READ || h.type === NbdCmd.FLUSH) {
    if (h.type === NbdCmd.FLUSH && (h.offset !== 0 || h.length !== 0)) return reject(NbdErrno.EINVAL, 'flush: offset and length must be zero');
  } else {
    const b = exp.backend;
    if (b.readOnly) return reject(NbdErrno.EPERM, `${name}: the export is read-only`);
    if ((h.type === NbdCmd.TRIM && !b.canTrim) || (h.type === NbdCmd.WRITE_ZEROES && !b.canWriteZeroes)) {
      return reject(NbdErrno.EINVAL, `${name}: not supported by this export`);
    }
  }
  if (h.type === NbdCmd.DISC || h.type === NbdCmd.FLUSH) return null;

  const { min, max } = exp.blockSizes;
  if (h.offset % min !== 0 || h.length % min !== 0) {
    return reject(NbdErrno.EINVAL, `${name}: offset ${h.offset} and length ${h.length} must be multiples of ${min}`);
  }
  if ((h.type === NbdCmd.READ || h.type === NbdCmd.WRITE) && h.length > max) {
    // A structured read may be refused up front with EOVERFLOW so the client retries smaller.
    const errno = h.type === NbdCmd.READ && structuredReplies ? NbdErrno.EOVERFLOW : NbdErrno.EINVAL;
    return reject(errno, `${name}: length ${h.length} exceeds the maximum payload ${max}`);
  }
  if (h.offset + h.length > exp.size) {
    // Writes past the end are "no space"; reads and trims past the end are invalid.
    const errno = h.type === NbdCmd.WRITE || h.type === NbdCmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
    return reject(errno, `${name}: ${h.offset}+${h.length} is beyond the export size ${exp.size}`);
  }
  return null;
}
