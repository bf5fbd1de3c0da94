// TPM2_GetCapability (Part 3 §30.2) and the structures its answer carries (Part 2): TPMS_CAPABILITY_DATA
// for TPM_CAP_COMMANDS (TPML_CCA of TPMA_CC) and TPM_CAP_TPM_PROPERTIES (TPML_TAGGED_TPM_PROPERTY); other
// capabilities are kept as opaque bytes. Used to advertise vmseal's vendor commands to the guest's kernel.
import { TPM_RC } from './constants.ts';
import { TPM_CC } from './command-codes.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';
import { buildCommand } from './command.ts';

/** TPM_CAP values this code reads. */
export const TPM_CAP = { ALGS: 0, HANDLES: 1, COMMANDS: 2, PP_COMMANDS: 3, AUDIT_COMMANDS: 4, PCRS: 5, TPM_PROPERTIES: 6, PCR_PROPERTIES: 7 } as const;

/** TPM_PT values (PT_FIXED = 0x100): the command counts and the capability buffer size. */
export const TPM_PT = {
  TOTAL_COMMANDS: 0x129,
  LIBRARY_COMMANDS: 0x12a,
  VENDOR_COMMANDS: 0x12b,
  MAX_CAP_BUFFER: 0x12e,
} as const;

/**
 * The list limits of a TPM whose TPM_PT_MAX_CAP_BUFFER is 1024 (libtpms, and tpm2-tss's TPM2_MAX_CAP_*):
 * MAX_CAP_DATA = 1024 - sizeof(TPM_CAP) - sizeof(UINT32) = 1016 bytes of list entries.
 */
export const MAX_CAP_CC = 254;
export const MAX_TPM_PROPERTIES = 127;

/** TPMA_CC (Part 2 §8.9) as fields. */
export interface TpmaCc {
  /** Bits 0-15: the command code's low 16 bits. */
  commandIndex: number;
  /** Bit 22: the command may write to NV. */
  nv: boolean;
  /** Bit 23: the command may flush many objects. */
  extensive: boolean;
  /** Bit 24: the command flushes the context of any transient handle it names. */
  flushed: boolean;
  /** Bits 25-27: handles in the command's handle area (what a resource manager maps). */
  cHandles: number;
  /** Bit 28: the response has a handle. */
  rHandle: boolean;
  /** Bit 29: a vendor command. */
  vendor: boolean;
}


export function decodeTpmaCc(v: number): TpmaCc {
  return {
    commandIndex: v & 0xffff,
    nv: Boolean(v & (1 << 22)),
    extensive: Boolean(v & (1 << 23)),
    flushed: Boolean(v & (1 << 24)),
    cHandles: (v >>> 25) & 7,
    rHandle: Boolean(v & (1 << 28)),
    vendor: Boolean(v & (1 << 29)),
  };
}

export function encodeTpmaCc(a: TpmaCc): number {
  if (!Number.isInteger(a.commandIndex) || a.commandIndex < 0 || a.commandIndex > 0xffff) throw new RangeError(`commandIndex ${a.commandIndex}`);
  if (!Number.isInteger(a.cHandles) || a.cHandles < 0 || a.cHandles > 7) throw new RangeError(`cHandles ${a.cHandles}`);
  const bit = (b: boolean, n: number) => (b ? 1 << n : 0);
  return (a.commandIndex | bit(a.nv, 22) | bit(a.extensive, 23) | bit(a.flushed, 24) | (a.cHandles << 25) | bit(a.rHandle, 28) | bit(a.vendor, 29)) >>> 0;
}

/** The command code a TPMA_CC entry stands for: commandIndex, plus the V bit for a vendor command. */
export function tpmaCcCommandCode(v: number): number {
  return (v & 0x2000ffff) >>> 0;
}

export interface GetCapabilityRequest {
  capability: number;
  property: number;
  propertyCount: number;
}

/** The parameters of a TPM2_GetCapability command; throws Tpm2FormatError with the rc a TPM answers. */
export function parseGetCapabilityParameters(parameters: Buffer): GetCapabilityRequest {
  const r = new TpmReader(parameters, 0, parameters.length, TPM_RC.INSUFFICIENT);
  const request = { capability: r.u32('capability'), property: r.u32('property'), propertyCount: r.u32('propertyCount') };
  r.done('GetCapability parameters');
  return request;
}

export function getCapabilityCommand(capability: number, property: number, propertyCount: number): Buffer {
  return buildCommand(TPM_CC.GetCapability, [], new TpmWriter().u32(capability).u32(property).u32(propertyCount).finish());
}

export interface TaggedProperty {
  property: number;
  value: number;
}

export type CapabilityData =
  | { capability: typeof TPM_CAP.COMMANDS; commands: number[] }
  | { capability: typeof TPM_CAP.TPM_PROPERTIES; properties: TaggedProperty[] }
  /** Any other capability: its union member, not interpreted. */
  | { capability: number; raw: Buffer };

export interface GetCapabilityResult {
  moreData: boolean;
  data: CapabilityData;
}

/**
 * The response parameters of TPM2_GetCapability (moreData, TPMS_CAPABILITY_DATA). Hostile input gives a
 * Tpm2FormatError: moreData other than YES/NO, a list count above the limit, bytes missing or left over.
 */
export function parseGetCapabilityResult(parameters: Buffer): GetCapabilityResult {
  const r = new TpmReader(parameters, 0, parameters.length, TPM_RC.INSUFFICIENT);
  const more = r.u8('moreData');
  if (more > 1) throw new Tpm2FormatError(TPM_RC.VALUE, `moreData ${more} is not a TPMI_YES_NO`);
  const capability = r.u32('capability');
  let data: CapabilityData;
  if (capability === TPM_CAP.COMMANDS) {
    const count = r.u32('TPML_CCA.count');
    if (count > MAX_CAP_CC) throw new Tpm2FormatError(TPM_RC.SIZE, `TPML_CCA of ${count} entries exceeds ${MAX_CAP_CC}`);
    const commands: number[] = [];
    for (let i = 0; i < count; i++) commands.push(r.u32('TPMA_CC'));
    data = { capability, commands };
  } else if (capability === TPM_CAP.TPM_PROPERTIES) {
    const count = r.u32('TPML_TAGGED_TPM_PROPERTY.count');
    if (count > MAX_TPM_PROPERTIES) throw new Tpm2FormatError(TPM_RC.SIZE, `TPML_TAGGED_TPM_PROPERTY of ${count} entries exceeds ${MAX_TPM_PROPERTIES}`);
    const properties: TaggedProperty[] = [];
    for (let i = 0; i < count; i++) properties.push({ property: r.u32('property'), value: r.u32('value') });
    data = { capability, properties };
  } else {
    data = { capability, raw: Buffer.from(r.rest()) };
  }
  r.done('GetCapability response parameters');
  return { moreData: more === 1, data };
}

export function encodeGetCapabilityResult(result: GetCapabilityResult): Buffer {
  const w = new TpmWriter().u8(result.moreData ? 1 : 0).u32(result.data.capability);
  const d = result.data;
  if ('commands' in d) {
    if (d.commands.length > MAX_CAP_CC) throw new RangeError(`TPML_CCA of ${d.commands.length} entries`);
    w.u32(d.commands.length);
    for (const c of d.commands) w.u32(c);
  } else if ('properties' in d) {
    if (d.properties.length > MAX_TPM_PROPERTIES) throw new RangeError(`TPML_TAGGED_TPM_PROPERTY of ${d.properties.length} entries`);
    w.u32(d.properties.length);
    for (const p of d.properties) w.u32(p.property).u32(p.value);
  } else {
    w.bytes(d.raw);
  }
  return w.finish();
}
