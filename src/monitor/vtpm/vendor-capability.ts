/**
 * vmseal's vendor commands (Vmseal_NV_Share/Revoke, answered by nv-guest-grant.ts) advertised as the vTPM's
 * own in TPM2_GetCapability answers, so the guest kernel's resource manager (/dev/tpmrm0) passes them: it
 * reads TPM_PT_TOTAL_COMMANDS, then that many TPMA_CC from TPM_CAP_COMMANDS, and refuses any code not listed
 * (drivers/char/tpm/tpm2-space.c, tpm2_get_cc_attrs_tbl / tpm2_find_cc). Only Linux >= 6.3 matches a listed
 * code with its V bit; older kernels read the table but compare 16 bits and refuse every vendor code anyway.
 *
 * The rewrite answers as a TPM that implements the two vendor commands would (Part 3 GetCapability, the
 * reference code's CommandCapGetCCList): vendor commands follow all library commands; a TPM_CAP_COMMANDS page
 * lists those whose code is ≥ `property`, at most `propertyCount` (and MAX_CAP_CC) entries, with moreData YES
 * when some are left for a later page. Anything it cannot judge goes to the guest exactly as swtpm said it:
 * commands with sessions (an audit or HMAC session's response authorization covers the parameters), errors,
 * and answers that do not parse or break a TPM's rules (more entries than asked for, a count that would
 * overflow, codes at or above vmseal's already listed): swtpm is the monitor's own, and its fault is neither
 * hidden nor made worse. Never throws.
 */
import {
  HEADER_SIZE,
  MAX_CAP_CC,
  TPM_CAP,
  TPM_CC,
  TPM_PT,
  TPM_RC,
  TPM_ST,
  Tpm2FormatError,
  encodeGetCapabilityResult,
  encodeTpmaCc,
  parseGetCapabilityParameters,
  parseGetCapabilityResult,
  parseResponse,
  tpmaCcCommandCode,
  type GetCapabilityRequest,
  type GetCapabilityResult,
  type ParsedCommand,
} from '../../formats/tpm2/index.ts';

/**
 * TPMA_CC of the vendor commands, in code order. cHandles = 1 (@nvIndex: the kernel maps that many handles);
 * nv set because a success persists a grant (committed before the answer), which is what the bit tells a caller.
 */
export const VMSEAL_VENDOR_TPMA_CC: readonly number[] = [TPM_CC.Vmseal_NV_Share, TPM_CC.Vmseal_NV_Revoke].map((code) =>
  encodeTpmaCc({ commandIndex: code & 0xffff, nv: true, extensive: false, flushed: false, cHandles: 1, rHandle: false, vendor: true }),
);

/** A start code with bits outside V|commandIndex names no command; a TPM lists nothing from it. */
const CC_CODE_BITS = 0x2000ffff;

/** `response` (swtpm's answer to the guest's GetCapability `cmd`) with the vendor commands added where they belong. */
export function advertiseVendorCommands(cmd: ParsedCommand, response: Buffer): Buffer {
  if (cmd.commandCode !== TPM_CC.GetCapability || cmd.tag !== TPM_ST.NO_SESSIONS) return response;
  if (response.length < HEADER_SIZE || response.readUInt16BE(0) !== TPM_ST.NO_SESSIONS || response.readUInt32BE(6) !== TPM_RC.SUCCESS) return response;
  let result: GetCapabilityResult;
  let request: GetCapabilityRequest;
  try {
    request = parseGetCapabilityParameters(cmd.parameters);
    result = parseGetCapabilityResult(parseResponse(response, TPM_CC.GetCapability).parameters);
  } catch (err) {
    if (err instanceof Tpm2FormatError) return response;
    throw err;
  }
  if (result.data.capability !== request.capability) return response;
  const rewritten = 'properties' in result.data ? withVendorCounts(result) : 'commands' in result.data ? withVendorCommands(result, request.property, request.propertyCount) : undefined;
  if (!rewritten) return response;
  const parameters = encodeGetCapabilityResult(rewritten);
  const out = Buffer.alloc(HEADER_SIZE + parameters.length);
  out.writeUInt16BE(TPM_ST.NO_SESSIONS, 0);
  out.writeUInt32BE(out.length, 2);
  out.writeUInt32BE(TPM_RC.SUCCESS, 6);
  parameters.copy(out, HEADER_SIZE);
  return out;
}

/** TPM_PT_TOTAL_COMMANDS and TPM_PT_VENDOR_COMMANDS count the vendor commands too (TOTAL = LIBRARY + VENDOR). */
function withVendorCounts(result: GetCapabilityResult): GetCapabilityResult | undefined {
  if (!('properties' in result.data)) return undefined;
  const n = VMSEAL_VENDOR_TPMA_CC.length;
  let changed = false;
  const properties = result.data.properties.map((p) => {
    if (p.property !== TPM_PT.TOTAL_COMMANDS && p.property !== TPM_PT.VENDOR_COMMANDS) return p;
    if (p.value > 0xffffffff - n) return p;
    changed = true;
    return { property: p.property, value: p.value + n };
  });
  return changed ? { moreData: result.moreData, data: { capability: TPM_CAP.TPM_PROPERTIES, properties } } : undefined;
}

function withVendorCommands(result: GetCapabilityResult, property: number, propertyCount: number): GetCapabilityResult | undefined {
  if (!('commands' in result.data)) return undefined;
  // swtpm has more library commands to list: the vendor commands come in a later page.
  if (result.moreData) return undefined;
  if ((property & ~CC_CODE_BITS) !== 0) return undefined;
  const listed = result.data.commands;
  const due = VMSEAL_VENDOR_TPMA_CC.filter((a) => tpmaCcCommandCode(a) >= property);
  if (due.length === 0) return undefined;
  // A list that already reaches vendor codes is not one this rewrite understands; appending could misorder it.
  const first = tpmaCcCommandCode(due[0]!);
  if (listed.some((a) => tpmaCcCommandCode(a) >= first)) return undefined;
  const room = Math.min(propertyCount, MAX_CAP_CC) - listed.length;
  if (room < 0) return undefined;
  const added = due.slice(0, room);
  return { moreData: added.length < due.length, data: { capability: TPM_CAP.COMMANDS, commands: [...listed, ...added] } };
}
