// Conversions between the wire's bank-name maps (formats/protocol/attestation.ts) and the TPM codec's
// PcrSelection / PcrValues (formats/tpm2), so the verifier compares like with like.
import { TPM_ALG } from '../../formats/tpm2/constants.ts';
import type { PcrSelection, PcrValues } from '../../formats/tpm2/pcr.ts';
import { BANK_NAMES, type BankName, type PcrRequest, type PcrValuesWire } from '../../formats/protocol/attestation.ts';

export const BANK_ALG: Readonly<Record<BankName, number>> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384, sha512: TPM_ALG.SHA512 };

export function bankName(alg: number): BankName | undefined {
  return BANK_NAMES.find((b) => BANK_ALG[b] === alg);
}

/** The selection a request asks for: banks in BANK_NAMES order, PCRs ascending (the order a TPM reports). */
export function selectionOf(req: PcrRequest): PcrSelection[] {
  return BANK_NAMES.flatMap((b) => (req[b] ? [{ hashAlg: BANK_ALG[b], pcrs: [...req[b]].sort((x, y) => x - y) }] : []));
}

export function pcrValuesFromWire(w: PcrValuesWire): PcrValues {
  const out: PcrValues = new Map();
  for (const b of BANK_NAMES) {
    for (const [idx, hex] of Object.entries(w[b] ?? {})) {
      const p = Number(idx);
      let banks = out.get(p);
      if (!banks) out.set(p, (banks = new Map()));
      banks.set(BANK_ALG[b], Buffer.from(hex, 'hex'));
    }
  }
  return out;
}

export function pcrValuesToWire(v: PcrValues): PcrValuesWire {
  const out: Record<string, Record<string, string>> = {};
  for (const [p, banks] of [...v].sort((a, b) => a[0] - b[0])) {
    for (const [alg, value] of banks) {
      const name = bankName(alg);
      if (!name) continue;
      (out[name] ??= {})[String(p)] = value.toString('hex');
    }
  }
  return out as PcrValuesWire;
}

/** The value of one PCR in one bank, or undefined. */
export function pcrValue(v: PcrValues, pcr: number, alg: number): Buffer | undefined {
  return v.get(pcr)?.get(alg);
}
