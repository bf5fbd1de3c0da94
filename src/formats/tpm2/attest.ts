// TPMS_ATTEST (Part 2 §10.12) and TPMT_SIGNATURE (§11.3.4): what a quote carries and how it is signed.
import { TPM_ALG, TPM_GENERATED_VALUE, TPM_RC, TPM_ST } from './constants.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';
import { readPcrSelection, type PcrSelection } from './pcr.ts';

/** A Name is nameAlg ‖ digest or a 4-byte handle: at most 2 + 64 bytes. */
const MAX_NAME = 66;
const MAX_DIGEST = 64;
const MAX_SIG_BYTES = 512;

export interface ClockInfo {
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
}

export type Attested =
  | { type: typeof TPM_ST.ATTEST_QUOTE; pcrSelect: PcrSelection[]; pcrDigest: Buffer }
  | { type: typeof TPM_ST.ATTEST_CERTIFY; name: Buffer; qualifiedName: Buffer }
  | { type: typeof TPM_ST.ATTEST_NV; indexName: Buffer; offset: number; nvContents: Buffer }
  | { type: typeof TPM_ST.ATTEST_CREATION; objectName: Buffer; creationHash: Buffer }
  /** Other attestation types: their body unparsed. */
  | { type: number; body: Buffer };

export interface Attest {
  magic: number;
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clockInfo: ClockInfo;
  firmwareVersion: bigint;
  attested: Attested;
}

/**
 * Parses TPMS_ATTEST bytes (the content of TPM2B_ATTEST, which is what the TPM signs). Refuses a wrong
 * magic: a structure without TPM_GENERATED_VALUE was not made by the TPM.
 */
export function parseAttest(bytes: Buffer): Attest {
  const r = new TpmReader(bytes, 0, bytes.length, TPM_RC.SIZE);
  const magic = r.u32('magic');
  if (magic !== TPM_GENERATED_VALUE) throw new Tpm2FormatError(TPM_RC.VALUE, `TPMS_ATTEST magic 0x${magic.toString(16)} is not TPM_GENERATED_VALUE`);
  const type = r.u16('type');
  const qualifiedSigner = r.tpm2b('qualifiedSigner', MAX_NAME);
  const extraData = r.tpm2b('extraData', MAX_DIGEST);
  const clockInfo: ClockInfo = {
    clock: r.u64('clock'),
    resetCount: r.u32('resetCount'),
    restartCount: r.u32('restartCount'),
    safe: ((): boolean => {
      const s = r.u8('safe');
      if (s > 1) throw new Tpm2FormatError(TPM_RC.VALUE, `TPMI_YES_NO ${s}`);
      return s === 1;
    })(),
  };
  const firmwareVersion = r.u64('firmwareVersion');
  let attested: Attested;
  switch (type) {
    case TPM_ST.ATTEST_QUOTE:
      attested = { type, pcrSelect: readPcrSelection(r), pcrDigest: r.tpm2b('pcrDigest', MAX_DIGEST) };
      break;
    case TPM_ST.ATTEST_CERTIFY:
      attested = { type, name: r.tpm2b('name', MAX_NAME), qualifiedName: r.tpm2b('qualifiedName', MAX_NAME) };
      break;
    case TPM_ST.ATTEST_NV:
      attested = { type, indexName: r.tpm2b('indexName', MAX_NAME), offset: r.u16('offset'), nvContents: r.tpm2b('nvContents', 2048) };
      break;
    case TPM_ST.ATTEST_CREATION:
      attested = { type, objectName: r.tpm2b('objectName', MAX_NAME), creationHash: r.tpm2b('creationHash', MAX_DIGEST) };
      break;
    default:
      attested = { type, body: Buffer.from(r.rest()) };
  }
  r.done('TPMS_ATTEST');
  return { magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion, attested };
}

export type Signature =
  | { sigAlg: typeof TPM_ALG.RSASSA | typeof TPM_ALG.RSAPSS; hashAlg: number; sig: Buffer }
  | { sigAlg: typeof TPM_ALG.ECDSA | typeof TPM_ALG.SM2 | typeof TPM_ALG.ECSCHNORR | typeof TPM_ALG.ECDAA; hashAlg: number; r: Buffer; s: Buffer }
  | { sigAlg: typeof TPM_ALG.HMAC; hashAlg: number; digest: Buffer }
  | { sigAlg: typeof TPM_ALG.NULL };

export function readSignature(r: TpmReader): Signature {
  const sigAlg = r.u16('TPMT_SIGNATURE.sigAlg');
  switch (sigAlg) {
    case TPM_ALG.NULL:
      return { sigAlg };
    case TPM_ALG.RSASSA:
    case TPM_ALG.RSAPSS:
      return { sigAlg, hashAlg: r.u16('hash'), sig: r.tpm2b('sig', MAX_SIG_BYTES) };
    case TPM_ALG.ECDSA:
    case TPM_ALG.SM2:
    case TPM_ALG.ECSCHNORR:
    case TPM_ALG.ECDAA:
      return { sigAlg, hashAlg: r.u16('hash'), r: r.tpm2b('signatureR', 128), s: r.tpm2b('signatureS', 128) };
    case TPM_ALG.HMAC: {
      const hashAlg = r.u16('hash');
      const size = { [TPM_ALG.SHA1]: 20, [TPM_ALG.SHA256]: 32, [TPM_ALG.SHA384]: 48, [TPM_ALG.SHA512]: 64 }[hashAlg];
      if (size === undefined) throw new Tpm2FormatError(TPM_RC.HASH, `HMAC signature hash 0x${hashAlg.toString(16)}`);
      return { sigAlg, hashAlg, digest: r.bytes(size, 'hmac digest') };
    }
    default:
      throw new Tpm2FormatError(TPM_RC.SCHEME, `signature algorithm 0x${sigAlg.toString(16)}`);
  }
}

/** Parses a TPMT_SIGNATURE that fills `bytes` exactly. */
export function parseSignature(bytes: Buffer): Signature {
  const r = new TpmReader(bytes, 0, bytes.length, TPM_RC.SIZE);
  const s = readSignature(r);
  r.done('TPMT_SIGNATURE');
  return s;
}

export function encodeSignature(s: Signature): Buffer {
  const w = new TpmWriter().u16(s.sigAlg);
  if ('sig' in s) w.u16(s.hashAlg).tpm2b(s.sig);
  else if ('r' in s) w.u16(s.hashAlg).tpm2b(s.r).tpm2b(s.s);
  else if ('digest' in s) w.u16(s.hashAlg).bytes(s.digest);
  return w.finish();
}
