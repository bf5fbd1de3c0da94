// Turns a TPM public area (src/formats/tpm2) into a node:crypto key and checks TPM signatures with it.
import { createPublicKey, constants, verify, type KeyObject } from 'node:crypto';
import { HASH_ALGS, TPM_ALG, TPM_ECC } from '../formats/tpm2/constants.ts';
import type { PublicArea } from '../formats/tpm2/public.ts';
import type { Signature } from '../formats/tpm2/attest.ts';

const CURVES = new Map<number, { crv: string; size: number }>([
  [TPM_ECC.NIST_P256, { crv: 'P-256', size: 32 }],
  [TPM_ECC.NIST_P384, { crv: 'P-384', size: 48 }],
  [TPM_ECC.NIST_P521, { crv: 'P-521', size: 66 }],
]);

function leftPad(b: Buffer, size: number, what: string): Buffer {
  if (b.length > size) throw new Error(`${what} of ${b.length} bytes exceeds ${size}`);
  return Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** A node:crypto public key from an RSA or ECC (NIST P-256/384/521) TPM public area. */
export function tpmPublicKey(pub: PublicArea): KeyObject {
  if (pub.type === TPM_ALG.RSA) {
    // exponent 0 means the default 2^16+1 (Part 2, TPMS_RSA_PARMS).
    const e = Buffer.alloc(4);
    e.writeUInt32BE(pub.exponent === 0 ? 65537 : pub.exponent);
    const exp = e.subarray(e.findIndex((x) => x !== 0));
    if (pub.modulus.length * 8 !== pub.keyBits) throw new Error(`RSA modulus of ${pub.modulus.length} bytes for keyBits ${pub.keyBits}`);
    return createPublicKey({ key: { kty: 'RSA', n: pub.modulus.toString('base64url'), e: exp.toString('base64url') }, format: 'jwk' });
  }
  if (pub.type === TPM_ALG.ECC) {
    const c = CURVES.get(pub.curveId);
    if (!c) throw new Error(`ECC curve 0x${pub.curveId.toString(16)} not supported`);
    return createPublicKey({
      key: { kty: 'EC', crv: c.crv, x: leftPad(pub.x, c.size, 'x').toString('base64url'), y: leftPad(pub.y, c.size, 'y').toString('base64url') },
      format: 'jwk',
    });
  }
  throw new Error(`public area type 0x${pub.type.toString(16)} is not an asymmetric key`);
}

/**
 * Verifies a TPM signature over `message` (e.g. the TPMS_ATTEST bytes of a quote) with the key of `pub`.
 * RSASSA, RSAPSS and ECDSA; anything else, or a scheme that does not fit the key, is false.
 */
export function verifyTpmSignature(pub: PublicArea, message: Buffer, sig: Signature): boolean {
  if (sig.sigAlg === TPM_ALG.NULL || sig.sigAlg === TPM_ALG.HMAC) return false;
  const hash = HASH_ALGS.get(sig.hashAlg);
  if (!hash || hash.name === 'sm3') return false;
  const key = tpmPublicKey(pub);
  if ('sig' in sig) {
    if (pub.type !== TPM_ALG.RSA) return false;
    const padding = sig.sigAlg === TPM_ALG.RSASSA ? constants.RSA_PKCS1_PADDING : constants.RSA_PKCS1_PSS_PADDING;
    return verify(hash.name, message, { key, padding, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, sig.sig);
  }
  if (sig.sigAlg !== TPM_ALG.ECDSA || pub.type !== TPM_ALG.ECC) return false;
  const size = CURVES.get(pub.curveId)!.size;
  if (sig.r.length > size || sig.s.length > size) return false;
  const rs = Buffer.concat([leftPad(sig.r, size, 'r'), leftPad(sig.s, size, 's')]);
  return verify(hash.name, message, { key, dsaEncoding: 'ieee-p1363' }, rs);
}
