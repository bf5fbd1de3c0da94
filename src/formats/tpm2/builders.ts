// Commands the monitor sends to a vTPM itself, and parsers for the parameters of their responses.
import { TPM_ALG, TPM_RC, TPM_RH, TPM_SU } from './constants.ts';
import { TPM_CC } from './command-codes.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';
import { buildCommand, passwordSession, type ParsedResponse } from './command.ts';
import { readPcrSelection, writeDigestValues, writePcrSelection, type PcrSelection, type PcrValues, type TaggedDigest } from './pcr.ts';
import { encodePublicArea, readPublic, type PublicArea, type Scheme } from './public.ts';
import { encodeNvPublic, readNvPublic, type NvPublic } from './nv.ts';
import { readSignature, type Signature } from './attest.ts';

export interface AuthOptions {
  /** Password for the authorizing handle (empty by default, as a freshly made vTPM has). */
  password?: Uint8Array;
}

const pw = (o: AuthOptions = {}) => [passwordSession(o.password)];

export function startupCommand(type: number = TPM_SU.CLEAR): Buffer {
  return buildCommand(TPM_CC.Startup, [], new TpmWriter().u16(type).finish());
}

/** TPM2_PCR_Extend of one PCR with one digest per bank, under a password session. */
export function pcrExtendCommand(pcr: number, digests: readonly TaggedDigest[], o: AuthOptions = {}): Buffer {
  if (!Number.isInteger(pcr) || pcr < 0 || pcr > 31) throw new RangeError(`PCR ${pcr}`);
  return buildCommand(TPM_CC.PCR_Extend, [pcr], writeDigestValues(new TpmWriter(), digests).finish(), pw(o));
}

export function pcrReadCommand(selection: readonly PcrSelection[]): Buffer {
  return buildCommand(TPM_CC.PCR_Read, [], writePcrSelection(new TpmWriter(), selection).finish());
}

export function nvReadPublicCommand(nvIndex: number): Buffer {
  return buildCommand(TPM_CC.NV_ReadPublic, [nvIndex], Buffer.alloc(0));
}

/** TPM2_NV_Read; authHandle defaults to the index itself (use TPM_RH.OWNER for an OWNERREAD index). */
export function nvReadCommand(nvIndex: number, size: number, offset = 0, o: AuthOptions & { authHandle?: number } = {}): Buffer {
  return buildCommand(TPM_CC.NV_Read, [o.authHandle ?? nvIndex, nvIndex], new TpmWriter().u16(size).u16(offset).finish(), pw(o));
}

export function nvWriteCommand(nvIndex: number, data: Uint8Array, offset = 0, o: AuthOptions & { authHandle?: number } = {}): Buffer {
  return buildCommand(TPM_CC.NV_Write, [o.authHandle ?? nvIndex, nvIndex], new TpmWriter().tpm2b(data).u16(offset).finish(), pw(o));
}

export function nvDefineSpaceCommand(publicInfo: NvPublic, auth: Uint8Array = Buffer.alloc(0), o: AuthOptions & { authHandle?: number } = {}): Buffer {
  return buildCommand(TPM_CC.NV_DefineSpace, [o.authHandle ?? TPM_RH.OWNER], new TpmWriter().tpm2b(auth).bytes(encodeNvPublic(publicInfo)).finish(), pw(o));
}

export function nvUndefineSpaceCommand(nvIndex: number, o: AuthOptions & { authHandle?: number } = {}): Buffer {
  return buildCommand(TPM_CC.NV_UndefineSpace, [o.authHandle ?? TPM_RH.OWNER, nvIndex], Buffer.alloc(0), pw(o));
}

function creationParams(template: PublicArea, userAuth: Uint8Array): Buffer {
  const sensitive = new TpmWriter().tpm2b(userAuth).tpm2b(Buffer.alloc(0)).finish();
  return new TpmWriter()
    .tpm2b(sensitive)
    .tpm2b(encodePublicArea(template))
    .tpm2b(Buffer.alloc(0)) // outsideInfo
    .u32(0) // creationPCR: none
    .finish();
}

/** TPM2_CreatePrimary under `hierarchy` (TPM_RH.OWNER / ENDORSEMENT / ...). */
export function createPrimaryCommand(hierarchy: number, template: PublicArea, o: AuthOptions & { userAuth?: Uint8Array } = {}): Buffer {
  return buildCommand(TPM_CC.CreatePrimary, [hierarchy], creationParams(template, o.userAuth ?? Buffer.alloc(0)), pw(o));
}

export function createCommand(parent: number, template: PublicArea, o: AuthOptions & { userAuth?: Uint8Array } = {}): Buffer {
  return buildCommand(TPM_CC.Create, [parent], creationParams(template, o.userAuth ?? Buffer.alloc(0)), pw(o));
}

/** TPM2_Load; `outPrivate` and `outPublic` are the TPM2B contents parseCreateResponse returns. */
export function loadCommand(parent: number, outPrivate: Uint8Array, outPublic: Uint8Array, o: AuthOptions = {}): Buffer {
  return buildCommand(TPM_CC.Load, [parent], new TpmWriter().tpm2b(outPrivate).tpm2b(outPublic).finish(), pw(o));
}

/** TPM2_Quote; scheme NULL lets the key's own scheme apply. */
export function quoteCommand(keyHandle: number, qualifyingData: Uint8Array, selection: readonly PcrSelection[], scheme: Scheme = { scheme: TPM_ALG.NULL }, o: AuthOptions = {}): Buffer {
  if (qualifyingData.length > 64) throw new RangeError('qualifyingData exceeds 64 bytes');
  const w = new TpmWriter().tpm2b(qualifyingData).u16(scheme.scheme);
  if (scheme.scheme !== TPM_ALG.NULL) w.u16(scheme.hashAlg ?? TPM_ALG.SHA256);
  if (scheme.scheme === TPM_ALG.ECDAA) w.u16(scheme.count ?? 0);
  writePcrSelection(w, selection);
  return buildCommand(TPM_CC.Quote, [keyHandle], w.finish(), pw(o));
}

export function getRandomCommand(bytes: number): Buffer {
  if (!Number.isInteger(bytes) || bytes < 0 || bytes > 64) throw new RangeError(`GetRandom of ${bytes} bytes`);
  return buildCommand(TPM_CC.GetRandom, [], new TpmWriter().u16(bytes).finish());
}

export function flushContextCommand(handle: number): Buffer {
  return buildCommand(TPM_CC.FlushContext, [], new TpmWriter().u32(handle).finish());
}

export function readPublicCommand(handle: number): Buffer {
  return buildCommand(TPM_CC.ReadPublic, [handle], Buffer.alloc(0));
}

/** Error unless the response succeeded; the error carries the TPM's response code. */
export function requireSuccess(rsp: ParsedResponse, what: string): void {
  if (rsp.responseCode !== TPM_RC.SUCCESS) throw new Tpm2FormatError(rsp.responseCode, `${what} failed`);
}

function params(rsp: ParsedResponse, what: string): TpmReader {
  requireSuccess(rsp, what);
  return new TpmReader(rsp.parameters, 0, rsp.parameters.length, TPM_RC.FAILURE);
}

export interface PcrReadResult {
  updateCounter: number;
  selection: PcrSelection[];
  /** PCR values in selection order (banks in order, PCRs ascending). */
  digests: Buffer[];
  /** The same values keyed by PCR and bank. */
  values: PcrValues;
}

export function parsePcrReadResponse(rsp: ParsedResponse): PcrReadResult {
  const r = params(rsp, 'PCR_Read');
  const updateCounter = r.u32('pcrUpdateCounter');
  const selection = readPcrSelection(r);
  const count = r.u32('pcrValues.count');
  if (count > 8) throw new Tpm2FormatError(TPM_RC.FAILURE, `TPML_DIGEST of ${count}`);
  const digests: Buffer[] = [];
  for (let i = 0; i < count; i++) digests.push(r.tpm2b('pcr value', 64));
  r.done('PCR_Read response', TPM_RC.FAILURE);
  const values: PcrValues = new Map();
  let k = 0;
  for (const s of selection) {
    for (const p of s.pcrs) {
      const d = digests[k++];
      if (!d) break;
      if (!values.has(p)) values.set(p, new Map());
      values.get(p)!.set(s.hashAlg, d);
    }
  }
  return { updateCounter, selection, digests, values };
}

export function parseNvReadPublicResponse(rsp: ParsedResponse): { nvPublic: NvPublic; nvName: Buffer } {
  const r = params(rsp, 'NV_ReadPublic');
  const nvPublic = readNvPublic(r);
  const nvName = r.tpm2b('nvName', 66);
  r.done('NV_ReadPublic response', TPM_RC.FAILURE);
  return { nvPublic, nvName };
}

export function parseNvReadResponse(rsp: ParsedResponse): Buffer {
  const r = params(rsp, 'NV_Read');
  const data = r.tpm2b('data', 2048);
  r.done('NV_Read response', TPM_RC.FAILURE);
  return data;
}

export function parseGetRandomResponse(rsp: ParsedResponse): Buffer {
  const r = params(rsp, 'GetRandom');
  const data = r.tpm2b('randomBytes', 64);
  r.done('GetRandom response', TPM_RC.FAILURE);
  return data;
}

export interface CreatedObject {
  outPublic: PublicArea;
  /** TPMT_PUBLIC bytes as the TPM returned them (the TPM2B_PUBLIC content). */
  outPublicBytes: Buffer;
}

function readCreated(r: TpmReader): CreatedObject {
  const start = r.offset;
  const outPublic = readPublic(r);
  const outPublicBytes = r.buf.subarray(start + 2, r.offset);
  r.tpm2b('creationData');
  r.tpm2b('creationHash', 64);
  r.u16('creationTicket.tag');
  r.u32('creationTicket.hierarchy');
  r.tpm2b('creationTicket.digest', 64);
  return { outPublic, outPublicBytes };
}

export function parseCreatePrimaryResponse(rsp: ParsedResponse): CreatedObject & { handle: number; name: Buffer } {
  const r = params(rsp, 'CreatePrimary');
  const created = readCreated(r);
  const name = r.tpm2b('name', 66);
  r.done('CreatePrimary response', TPM_RC.FAILURE);
  return { ...created, handle: rsp.handles[0]!, name };
}

export function parseCreateResponse(rsp: ParsedResponse): CreatedObject & { outPrivate: Buffer } {
  const r = params(rsp, 'Create');
  const outPrivate = r.tpm2b('outPrivate');
  const created = readCreated(r);
  r.done('Create response', TPM_RC.FAILURE);
  return { ...created, outPrivate };
}

export function parseLoadResponse(rsp: ParsedResponse): { handle: number; name: Buffer } {
  const r = params(rsp, 'Load');
  const name = r.tpm2b('name', 66);
  r.done('Load response', TPM_RC.FAILURE);
  return { handle: rsp.handles[0]!, name };
}

/** TPM2_Quote's outputs: `quoted` is the TPMS_ATTEST the signature covers (parseAttest it). */
export function parseQuoteResponse(rsp: ParsedResponse): { quoted: Buffer; signature: Signature } {
  const r = params(rsp, 'Quote');
  const quoted = r.tpm2b('quoted');
  const signature = readSignature(r);
  r.done('Quote response', TPM_RC.FAILURE);
  return { quoted, signature };
}

export function parseReadPublicResponse(rsp: ParsedResponse): CreatedObject & { name: Buffer; qualifiedName: Buffer } {
  const r = params(rsp, 'ReadPublic');
  const start = r.offset;
  const outPublic = readPublic(r);
  const outPublicBytes = r.buf.subarray(start + 2, r.offset);
  const name = r.tpm2b('name', 66);
  const qualifiedName = r.tpm2b('qualifiedName', 66);
  r.done('ReadPublic response', TPM_RC.FAILURE);
  return { outPublic, outPublicBytes, name, qualifiedName };
}
