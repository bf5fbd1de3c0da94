// NV indices: TPMS_NV_PUBLIC, the index Name, and which index each NV command touches and how
// (Part 3 §31). The proxy's NV access control is built on nvAccess().
import { createHash } from 'node:crypto';
import { TPM_ALG, TPM_HT, TPM_RC, handleType, rcForParameter } from './constants.ts';
import { TPM_CC } from './command-codes.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';
import { hashInfo } from './pcr.ts';
import type { ParsedCommand } from './command.ts';

/** TPMA_NV bits (TPM_NT is the 4-bit field at bit 4). */
export const TPMA_NV = {
  PPWRITE: 1 << 0,
  OWNERWRITE: 1 << 1,
  AUTHWRITE: 1 << 2,
  POLICYWRITE: 1 << 3,
  POLICY_DELETE: 1 << 10,
  WRITELOCKED: 1 << 11,
  WRITEALL: 1 << 12,
  WRITEDEFINE: 1 << 13,
  WRITE_STCLEAR: 1 << 14,
  GLOBALLOCK: 1 << 15,
  PPREAD: 1 << 16,
  OWNERREAD: 1 << 17,
  AUTHREAD: 1 << 18,
  POLICYREAD: 1 << 19,
  NO_DA: 1 << 25,
  ORDERLY: 1 << 26,
  CLEAR_STCLEAR: 1 << 27,
  READLOCKED: 1 << 28,
  WRITTEN: 1 << 29,
  PLATFORMCREATE: 1 << 30,
  READ_STCLEAR: 2 ** 31,
} as const;

/** TPM_NT: the index type in TPMA_NV bits 4..7. */
export const TPM_NT = { ORDINARY: 0, COUNTER: 1, BITS: 2, EXTEND: 4, PIN_FAIL: 8, PIN_PASS: 9 } as const;

export function nvType(attributes: number): number {
  return (attributes >>> 4) & 0xf;
}

/** MAX_NV_INDEX_SIZE bound we accept in a definition; libtpms allows 2048. */
export const MAX_NV_DATA_SIZE = 2048;
/** TPM2B_MAX_NV_BUFFER (MAX_NV_BUFFER_SIZE in tss2_tpm2_types.h). */
export const MAX_NV_BUFFER = 2048;

export interface NvPublic {
  nvIndex: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  dataSize: number;
}

export function readNvPublicArea(r: TpmReader): NvPublic {
  const nvIndex = r.u32('nvIndex');
  if (handleType(nvIndex) !== TPM_HT.NV_INDEX) throw new Tpm2FormatError(TPM_RC.HANDLE, `0x${nvIndex.toString(16)} is not an NV index handle`);
  const nameAlg = r.u16('nameAlg');
  hashInfo(nameAlg);
  const attributes = r.u32('attributes');
  const authPolicy = r.tpm2b('authPolicy', 64);
  const dataSize = r.u16('dataSize');
  return { nvIndex, nameAlg, attributes, authPolicy, dataSize };
}

/** Reads a TPM2B_NV_PUBLIC; the inner structure must fill its size exactly. */
export function readNvPublic(r: TpmReader): NvPublic {
  const size = r.u16('TPM2B_NV_PUBLIC.size');
  if (size === 0) throw new Tpm2FormatError(TPM_RC.SIZE, 'TPM2B_NV_PUBLIC is empty');
  const inner = r.sub(size, 'TPM2B_NV_PUBLIC');
  const p = readNvPublicArea(inner);
  inner.done('TPMS_NV_PUBLIC');
  return p;
}

export function encodeNvPublicArea(p: NvPublic): Buffer {
  return new TpmWriter().u32(p.nvIndex).u16(p.nameAlg).u32(p.attributes).tpm2b(p.authPolicy).u16(p.dataSize).finish();
}

/** TPM2B_NV_PUBLIC encoding. */
export function encodeNvPublic(p: NvPublic): Buffer {
  return new TpmWriter().tpm2b(encodeNvPublicArea(p)).finish();
}

/** The index's Name: nameAlg ‖ H_nameAlg(TPMS_NV_PUBLIC). It changes when attributes do (e.g. WRITTEN). */
export function nvName(p: NvPublic): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(p.nameAlg);
  return Buffer.concat([alg, createHash(hashInfo(p.nameAlg).name).update(encodeNvPublicArea(p)).digest()]);
}

export type NvOperation =
  | 'define'
  | 'undefine'
  | 'undefineSpecial'
  | 'write'
  | 'increment'
  | 'extend'
  | 'setBits'
  | 'writeLock'
  | 'globalWriteLock'
  | 'read'
  | 'readLock'
  | 'readPublic'
  | 'changeAuth'
  | 'certify'
  | 'policyNv'
  | 'policyAuthorizeNv';

export interface NvAccess {
  op: NvOperation;
  /** The index touched; absent only for globalWriteLock, which locks every GLOBALLOCK index. */
  nvIndex?: number;
  /** Position of nvIndex in the handle area (0-based), so a proxy can rewrite it or answer rcForHandle(.., pos + 1). */
  handlePosition?: number;
  /** The handle authorizing the command (hierarchy or the index itself). */
  authHandle?: number;
  /** 'read': reveals contents or metadata; 'write': changes contents, state, auth or existence. */
  kind: 'read' | 'write';
  /** NV_DefineSpace: the definition requested. */
  publicInfo?: NvPublic;
  /** NV_DefineSpace / NV_ChangeAuth: the new auth value. */
  auth?: Buffer;
  /** NV_Write / NV_Extend: data; NV_Write also offset. NV_Read / NV_Certify: size and offset. */
  data?: Buffer;
  offset?: number;
  size?: number;
  /** NV_SetBits. */
  bits?: bigint;
}

/**
 * What an NV command does to which index, with its parameters parsed; undefined for commands that are
 * not NV commands (use nvHandlesOf for other commands that name an index as a handle). Malformed
 * parameters throw Tpm2FormatError with the parameter-numbered RC a TPM answers.
 * NV_DefineSpace2 / NV_ReadPublic2 are not modelled: a proxy must refuse them.
 */
export function nvAccess(cmd: ParsedCommand): NvAccess | undefined {
  const h = cmd.handles;
  const p = new TpmReader(cmd.parameters, 0, cmd.parameters.length);
  const param = (n: number): TpmReader => {
    p.shortRc = rcForParameter(TPM_RC.INSUFFICIENT, n);
    return p;
  };
  const end = (a: NvAccess): NvAccess => {
    if (p.remaining !== 0) throw new Tpm2FormatError(TPM_RC.SIZE, `${cmd.name}: ${p.remaining} bytes after the parameters`);
    return a;
  };
  const sized = (n: number, what: string, max: number): Buffer => {
    const r = param(n);
    const size = r.u16(`${what}.size`);
    if (size > max) throw new Tpm2FormatError(rcForParameter(TPM_RC.SIZE, n), `${cmd.name}: ${what} of ${size} bytes exceeds ${max}`);
    return r.bytes(size, what);
  };
  const idx = (pos: number, authPos: number | undefined, op: NvOperation, kind: 'read' | 'write'): NvAccess => {
    const a: NvAccess = { op, kind, nvIndex: h[pos]!, handlePosition: pos };
    if (authPos !== undefined) a.authHandle = h[authPos]!;
    return a;
  };
  switch (cmd.commandCode) {
    case TPM_CC.NV_DefineSpace: {
      const auth = sized(1, 'auth', 64);
      param(2);
      let publicInfo: NvPublic;
      try {
        publicInfo = readNvPublic(p);
      } catch (e) {
        if (e instanceof Tpm2FormatError && e.rc < 0x100 && (e.rc & 0x80)) throw new Tpm2FormatError(rcForParameter(e.rc & 0xbf, 2), `${cmd.name}: ${e.message}`);
        throw e;
      }
      if (publicInfo.dataSize > MAX_NV_DATA_SIZE) throw new Tpm2FormatError(TPM_RC.NV_SIZE, `${cmd.name}: dataSize ${publicInfo.dataSize}`);
      return end({ op: 'define', kind: 'write', nvIndex: publicInfo.nvIndex, authHandle: h[0]!, publicInfo, auth });
    }
    case TPM_CC.NV_UndefineSpace:
      return end(idx(1, 0, 'undefine', 'write'));
    case TPM_CC.NV_UndefineSpaceSpecial:
      return end(idx(0, 1, 'undefineSpecial', 'write'));
    case TPM_CC.NV_Write: {
      const data = sized(1, 'data', MAX_NV_BUFFER);
      const offset = param(2).u16('offset');
      return end({ ...idx(1, 0, 'write', 'write'), data, offset });
    }
    case TPM_CC.NV_Increment:
      return end(idx(1, 0, 'increment', 'write'));
    case TPM_CC.NV_Extend:
      return end({ ...idx(1, 0, 'extend', 'write'), data: sized(1, 'data', MAX_NV_BUFFER) });
    case TPM_CC.NV_SetBits:
      return end({ ...idx(1, 0, 'setBits', 'write'), bits: param(1).u64('bits') });
    case TPM_CC.NV_WriteLock:
      return end(idx(1, 0, 'writeLock', 'write'));
    case TPM_CC.NV_GlobalWriteLock:
      return end({ op: 'globalWriteLock', kind: 'write', authHandle: h[0]! });
    case TPM_CC.NV_Read: {
      const size = param(1).u16('size');
      const offset = param(2).u16('offset');
      return end({ ...idx(1, 0, 'read', 'read'), size, offset });
    }
    case TPM_CC.NV_ReadLock:
      // Locks reading until the next Startup(CLEAR): it changes the index's state, so it counts as a write.
      return end(idx(1, 0, 'readLock', 'write'));
    case TPM_CC.NV_ReadPublic:
      return end(idx(0, undefined, 'readPublic', 'read'));
    case TPM_CC.NV_ChangeAuth:
      return end({ ...idx(0, 0, 'changeAuth', 'write'), auth: sized(1, 'newAuth', 64) });
    case TPM_CC.NV_Certify: {
      // Parameters: qualifyingData, inScheme, size, offset; only size and offset matter for access.
      sized(1, 'qualifyingData', 64);
      const r = param(2);
      const scheme = r.u16('inScheme.scheme');
      if (scheme !== TPM_ALG.NULL) r.u16('inScheme.hashAlg');
      if (scheme === TPM_ALG.ECDAA) r.u16('inScheme.count');
      const size = param(3).u16('size');
      const offset = param(4).u16('offset');
      return end({ ...idx(2, 1, 'certify', 'read'), size, offset });
    }
    case TPM_CC.PolicyNV:
      // Compares the index contents with operandB: a read of the index (the parameters are not needed).
      return idx(1, 0, 'policyNv', 'read');
    case TPM_CC.PolicyAuthorizeNV:
      return idx(1, 0, 'policyAuthorizeNv', 'read');
    default:
      return undefined;
  }
}

/** Every NV index handle in a command's handle area with its 0-based position. */
export function nvHandlesOf(cmd: ParsedCommand): Array<{ handle: number; position: number }> {
  const out: Array<{ handle: number; position: number }> = [];
  cmd.handles.forEach((handle, position) => {
    if (handleType(handle) === TPM_HT.NV_INDEX) out.push({ handle, position });
  });
  return out;
}
