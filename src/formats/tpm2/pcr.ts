// PCR selections (TPML_PCR_SELECTION), digest lists (TPML_DIGEST_VALUES) and the quote's pcrDigest.
import { createHash } from 'node:crypto';
import { HASH_ALGS, TPM_RC } from './constants.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';

/** TPM2_NUM_PCR_BANKS / HASH_COUNT: a TPML_PCR_SELECTION or TPML_DIGEST_VALUES holds at most 16 entries. */
export const MAX_PCR_BANKS = 16;
/** PCR_SELECT_MAX: 32 PCRs, 4 bytes of bitmap. */
export const MAX_PCRS = 32;
/** The bitmap size PC Client TPMs use (24 PCRs). */
export const PCR_SELECT_SIZE = 3;

export interface PcrSelection {
  /** TPM_ALG_ID of the bank. */
  hashAlg: number;
  /** Selected PCR indices, ascending. */
  pcrs: number[];
}

/** PCR values: pcr index → (TPM_ALG_ID → digest). The shape replay() returns. */
export type PcrValues = Map<number, Map<number, Buffer>>;

export function hashInfo(alg: number): { name: string; size: number } {
  const h = HASH_ALGS.get(alg);
  if (!h) throw new Tpm2FormatError(TPM_RC.HASH, `hash algorithm 0x${alg.toString(16)} not supported`);
  return h;
}

export function readPcrSelection(r: TpmReader): PcrSelection[] {
  const count = r.u32('TPML_PCR_SELECTION.count');
  if (count > MAX_PCR_BANKS) throw new Tpm2FormatError(TPM_RC.SIZE, `TPML_PCR_SELECTION.count ${count} exceeds ${MAX_PCR_BANKS}`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16('TPMS_PCR_SELECTION.hash');
    const sizeofSelect = r.u8('sizeofSelect');
    if (sizeofSelect > MAX_PCRS / 8) throw new Tpm2FormatError(TPM_RC.VALUE, `sizeofSelect ${sizeofSelect} exceeds ${MAX_PCRS / 8}`);
    const bitmap = r.bytes(sizeofSelect, 'pcrSelect');
    const pcrs: number[] = [];
    for (let p = 0; p < sizeofSelect * 8; p++) if (bitmap[p >> 3]! & (1 << (p & 7))) pcrs.push(p);
    out.push({ hashAlg, pcrs });
  }
  return out;
}

export function writePcrSelection(w: TpmWriter, selection: readonly PcrSelection[]): TpmWriter {
  if (selection.length > MAX_PCR_BANKS) throw new RangeError(`${selection.length} PCR banks`);
  w.u32(selection.length);
  for (const s of selection) {
    const bitmap = Buffer.alloc(Math.max(PCR_SELECT_SIZE, Math.ceil((Math.max(-1, ...s.pcrs) + 1) / 8)));
    for (const p of s.pcrs) {
      if (!Number.isInteger(p) || p < 0 || p >= MAX_PCRS) throw new RangeError(`PCR ${p}`);
      bitmap[p >> 3]! |= 1 << (p & 7);
    }
    w.u16(s.hashAlg).u8(bitmap.length).bytes(bitmap);
  }
  return w;
}

export function encodePcrSelection(selection: readonly PcrSelection[]): Buffer {
  return writePcrSelection(new TpmWriter(), selection).finish();
}

export function decodePcrSelection(bytes: Buffer): PcrSelection[] {
  const r = new TpmReader(bytes);
  const s = readPcrSelection(r);
  r.done('TPML_PCR_SELECTION');
  return s;
}

/** One TPMT_HA: algorithm and digest of that algorithm's size. */
export interface TaggedDigest {
  hashAlg: number;
  digest: Buffer;
}

export function readTaggedDigest(r: TpmReader): TaggedDigest {
  const hashAlg = r.u16('TPMT_HA.hashAlg');
  return { hashAlg, digest: r.bytes(hashInfo(hashAlg).size, 'TPMT_HA.digest') };
}

export function writeDigestValues(w: TpmWriter, digests: readonly TaggedDigest[]): TpmWriter {
  w.u32(digests.length);
  for (const d of digests) {
    if (d.digest.length !== hashInfo(d.hashAlg).size) throw new RangeError(`digest of ${d.digest.length} bytes for alg 0x${d.hashAlg.toString(16)}`);
    w.u16(d.hashAlg).bytes(d.digest);
  }
  return w;
}

export function readDigestValues(r: TpmReader): TaggedDigest[] {
  const count = r.u32('TPML_DIGEST_VALUES.count');
  if (count > MAX_PCR_BANKS) throw new Tpm2FormatError(TPM_RC.SIZE, `TPML_DIGEST_VALUES.count ${count}`);
  const out: TaggedDigest[] = [];
  for (let i = 0; i < count; i++) out.push(readTaggedDigest(r));
  return out;
}

/**
 * The quote's pcrDigest: hashAlg over the selected PCR values concatenated, banks in selection order and
 * PCRs ascending within a bank (Part 3 TPM2_Quote, PCRComputeCurrentDigest). A value missing from
 * `values` is an error, not a zero PCR.
 */
export function pcrDigest(hashAlg: number, selection: readonly PcrSelection[], values: PcrValues): Buffer {
  const h = createHash(hashInfo(hashAlg).name);
  for (const s of selection) {
    for (const p of [...s.pcrs].sort((a, b) => a - b)) {
      const v = values.get(p)?.get(s.hashAlg);
      if (!v) throw new RangeError(`no value for PCR ${p} in bank 0x${s.hashAlg.toString(16)}`);
      h.update(v);
    }
  }
  return h.digest();
}

/** PCR extend: new = H(old ‖ digest). */
export function extendPcr(hashAlg: number, old: Buffer, digest: Buffer): Buffer {
  return createHash(hashInfo(hashAlg).name).update(old).update(digest).digest();
}
