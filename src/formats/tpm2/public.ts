// TPMT_PUBLIC / TPM2B_PUBLIC (Part 2 §12.2): parse and encode, object Names, and the templates the
// monitor uses for its storage primary and attestation key. Raw key material only; src/crypto turns it
// into a KeyObject.
import { createHash } from 'node:crypto';
import { TPM_ALG, TPM_ECC, TPM_RC } from './constants.ts';
import { TpmReader, TpmWriter, Tpm2FormatError } from './bytes.ts';
import { hashInfo } from './pcr.ts';

/** TPMA_OBJECT bits. */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** TPMT_SYM_DEF_OBJECT; keyBits/mode are absent when algorithm is TPM_ALG_NULL. */
export interface SymDef {
  algorithm: number;
  keyBits?: number;
  mode?: number;
}

/** A signing/encryption scheme: scheme alg and, unless NULL (or RSAES), its hash. ECDAA adds a count. */
export interface Scheme {
  scheme: number;
  hashAlg?: number;
  count?: number;
}

export type PublicArea =
  | { type: typeof TPM_ALG.RSA; nameAlg: number; objectAttributes: number; authPolicy: Buffer; symmetric: SymDef; scheme: Scheme; keyBits: number; exponent: number; modulus: Buffer }
  | { type: typeof TPM_ALG.ECC; nameAlg: number; objectAttributes: number; authPolicy: Buffer; symmetric: SymDef; scheme: Scheme; curveId: number; kdf: Scheme; x: Buffer; y: Buffer }
  | { type: typeof TPM_ALG.KEYEDHASH; nameAlg: number; objectAttributes: number; authPolicy: Buffer; scheme: Scheme; kdf?: number; unique: Buffer }
  | { type: typeof TPM_ALG.SYMCIPHER; nameAlg: number; objectAttributes: number; authPolicy: Buffer; symmetric: SymDef; unique: Buffer };

/** The largest RSA modulus / ECC coordinate a TPM2B in a public area may carry (MAX_RSA_KEY_BYTES, MAX_ECC_KEY_BYTES). */
const MAX_RSA_BYTES = 512;
const MAX_ECC_BYTES = 128;

function readSymDef(r: TpmReader): SymDef {
  const algorithm = r.u16('symmetric.algorithm');
  if (algorithm === TPM_ALG.NULL) return { algorithm };
  return { algorithm, keyBits: r.u16('symmetric.keyBits'), mode: r.u16('symmetric.mode') };
}

function writeSymDef(w: TpmWriter, s: SymDef): void {
  w.u16(s.algorithm);
  if (s.algorithm !== TPM_ALG.NULL) w.u16(s.keyBits ?? 0).u16(s.mode ?? TPM_ALG.NULL);
}

function readScheme(r: TpmReader, what: string): Scheme {
  const scheme = r.u16(`${what}.scheme`);
  if (scheme === TPM_ALG.NULL || scheme === TPM_ALG.RSAES) return { scheme };
  const hashAlg = r.u16(`${what}.hashAlg`);
  if (scheme === TPM_ALG.ECDAA) return { scheme, hashAlg, count: r.u16(`${what}.count`) };
  return { scheme, hashAlg };
}

function writeScheme(w: TpmWriter, s: Scheme): void {
  w.u16(s.scheme);
  if (s.scheme === TPM_ALG.NULL || s.scheme === TPM_ALG.RSAES) return;
  w.u16(s.hashAlg ?? TPM_ALG.NULL);
  if (s.scheme === TPM_ALG.ECDAA) w.u16(s.count ?? 0);
}

/** Reads a TPMT_PUBLIC (no size prefix). */
export function readPublicArea(r: TpmReader): PublicArea {
  const type = r.u16('TPMT_PUBLIC.type');
  const nameAlg = r.u16('nameAlg');
  const objectAttributes = r.u32('objectAttributes');
  const authPolicy = r.tpm2b('authPolicy', 64);
  const base = { nameAlg, objectAttributes, authPolicy };
  switch (type) {
    case TPM_ALG.RSA: {
      const symmetric = readSymDef(r);
      const scheme = readScheme(r, 'rsa scheme');
      const keyBits = r.u16('keyBits');
      const exponent = r.u32('exponent');
      const modulus = r.tpm2b('unique.rsa', MAX_RSA_BYTES);
      return { type, ...base, symmetric, scheme, keyBits, exponent, modulus };
    }
    case TPM_ALG.ECC: {
      const symmetric = readSymDef(r);
      const scheme = readScheme(r, 'ecc scheme');
      const curveId = r.u16('curveID');
      const kdf = readScheme(r, 'kdf');
      const x = r.tpm2b('unique.ecc.x', MAX_ECC_BYTES);
      const y = r.tpm2b('unique.ecc.y', MAX_ECC_BYTES);
      return { type, ...base, symmetric, scheme, curveId, kdf, x, y };
    }
    case TPM_ALG.KEYEDHASH: {
      const schemeAlg = r.u16('keyedhash scheme');
      if (schemeAlg === TPM_ALG.NULL) return { type, ...base, scheme: { scheme: schemeAlg }, unique: r.tpm2b('unique.keyedHash', 64) };
      const hashAlg = r.u16('keyedhash hashAlg');
      if (schemeAlg === TPM_ALG.XOR) {
        const kdf = r.u16('xor kdf');
        return { type, ...base, scheme: { scheme: schemeAlg, hashAlg }, kdf, unique: r.tpm2b('unique.keyedHash', 64) };
      }
      return { type, ...base, scheme: { scheme: schemeAlg, hashAlg }, unique: r.tpm2b('unique.keyedHash', 64) };
    }
    case TPM_ALG.SYMCIPHER: {
      const symmetric = readSymDef(r);
      return { type, ...base, symmetric, unique: r.tpm2b('unique.sym', 64) };
    }
    default:
      throw new Tpm2FormatError(TPM_RC.TYPE, `public area type 0x${type.toString(16)}`);
  }
}

export function writePublicArea(w: TpmWriter, p: PublicArea): TpmWriter {
  w.u16(p.type).u16(p.nameAlg).u32(p.objectAttributes).tpm2b(p.authPolicy);
  switch (p.type) {
    case TPM_ALG.RSA:
      writeSymDef(w, p.symmetric);
      writeScheme(w, p.scheme);
      return w.u16(p.keyBits).u32(p.exponent).tpm2b(p.modulus);
    case TPM_ALG.ECC:
      writeSymDef(w, p.symmetric);
      writeScheme(w, p.scheme);
      w.u16(p.curveId);
      writeScheme(w, p.kdf);
      return w.tpm2b(p.x).tpm2b(p.y);
    case TPM_ALG.KEYEDHASH:
      w.u16(p.scheme.scheme);
      if (p.scheme.scheme !== TPM_ALG.NULL) w.u16(p.scheme.hashAlg ?? TPM_ALG.NULL);
      if (p.scheme.scheme === TPM_ALG.XOR) w.u16(p.kdf ?? TPM_ALG.NULL);
      return w.tpm2b(p.unique);
    case TPM_ALG.SYMCIPHER:
      writeSymDef(w, p.symmetric);
      return w.tpm2b(p.unique);
  }
}

export function encodePublicArea(p: PublicArea): Buffer {
  return writePublicArea(new TpmWriter(), p).finish();
}

/** Parses a TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC) that must fill `bytes` exactly. */
export function parsePublic(bytes: Buffer): PublicArea {
  const r = new TpmReader(bytes);
  const p = readPublic(r);
  r.done('TPM2B_PUBLIC');
  return p;
}

/** Reads a TPM2B_PUBLIC from a stream; the inner TPMT_PUBLIC must fill its size exactly. */
export function readPublic(r: TpmReader): PublicArea {
  const size = r.u16('TPM2B_PUBLIC.size');
  if (size === 0) throw new Tpm2FormatError(TPM_RC.SIZE, 'TPM2B_PUBLIC is empty');
  const inner = r.sub(size, 'TPM2B_PUBLIC');
  const p = readPublicArea(inner);
  inner.done('TPMT_PUBLIC');
  return p;
}

/** TPM2B_PUBLIC encoding of a public area. */
export function encodePublic(p: PublicArea): Buffer {
  return new TpmWriter().tpm2b(encodePublicArea(p)).finish();
}

/** An object's Name: nameAlg ‖ H_nameAlg(TPMT_PUBLIC) (Part 1 §16). */
export function objectName(p: PublicArea): Buffer {
  const area = encodePublicArea(p);
  const n = Buffer.alloc(2);
  n.writeUInt16BE(p.nameAlg);
  return Buffer.concat([n, createHash(hashInfo(p.nameAlg).name).update(area).digest()]);
}

const AK_ATTRIBUTES = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;
const STORAGE_ATTRIBUTES = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.noDA | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
const NULL_SYM: SymDef = { algorithm: TPM_ALG.NULL };
const AES128_CFB: SymDef = { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB };

/** A restricted signing key (AK) template: ECC P-256 with ECDSA-SHA256, or RSA-2048 with RSASSA-SHA256. */
export function akTemplate(kind: 'ecc' | 'rsa'): PublicArea {
  const base = { nameAlg: TPM_ALG.SHA256, objectAttributes: AK_ATTRIBUTES, authPolicy: Buffer.alloc(0), symmetric: NULL_SYM };
  if (kind === 'ecc') {
    return { type: TPM_ALG.ECC, ...base, scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 }, curveId: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x: Buffer.alloc(0), y: Buffer.alloc(0) };
  }
  return { type: TPM_ALG.RSA, ...base, scheme: { scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 }, keyBits: 2048, exponent: 0, modulus: Buffer.alloc(0) };
}

/** A storage primary (SRK) template: ECC P-256 or RSA-2048 with AES-128-CFB, as tpm2_createprimary's defaults. */
export function storageTemplate(kind: 'ecc' | 'rsa'): PublicArea {
  const base = { nameAlg: TPM_ALG.SHA256, objectAttributes: STORAGE_ATTRIBUTES, authPolicy: Buffer.alloc(0), symmetric: AES128_CFB };
  if (kind === 'ecc') {
    return { type: TPM_ALG.ECC, ...base, scheme: { scheme: TPM_ALG.NULL }, curveId: TPM_ECC.NIST_P256, kdf: { scheme: TPM_ALG.NULL }, x: Buffer.alloc(0), y: Buffer.alloc(0) };
  }
  return { type: TPM_ALG.RSA, ...base, scheme: { scheme: TPM_ALG.NULL }, keyBits: 2048, exponent: 0, modulus: Buffer.alloc(0) };
}
