/**
 * Verifies a TPM2_Quote as the authority receives it through the untrusted relay. Order matters: the
 * AK is trusted first (certificate chain), then the signature over the raw TPMS_ATTEST bytes, and only
 * then is anything inside those bytes believed (magic, type, nonce, selection, PCR digest).
 */
import { TPM_GENERATED_VALUE, TPM_ST } from '../../formats/tpm2/constants.ts';
import { parseAttest, parseSignature, type Attest } from '../../formats/tpm2/attest.ts';
import { parsePublic, TPMA_OBJECT, type PublicArea } from '../../formats/tpm2/public.ts';
import { pcrDigest, type PcrSelection, type PcrValues } from '../../formats/tpm2/pcr.ts';
import { verifyTpmSignature } from '../../crypto/tpm2-key.ts';

export type QuoteFailureCode =
  | 'MALFORMED'
  | 'AK_UNTRUSTED'
  | 'BAD_SIGNATURE'
  | 'BAD_MAGIC'
  | 'NOT_A_QUOTE'
  | 'NONCE_MISMATCH'
  | 'PCR_SELECTION_MISMATCH'
  | 'PCR_VALUES_MISMATCH'
  | 'PCR_DIGEST_MISMATCH';

export type QuoteVerdict =
  | { ok: true; attest: Attest; akPublic: PublicArea; pcrValues: PcrValues }
  | { ok: false; code: QuoteFailureCode; reason: string };

/** Decides whether the AK is one the host's vTPM CA certified (see ak-chain.ts for the X.509 one). */
export type AkChainVerifier = (akPublic: PublicArea, chain: readonly Buffer[]) => Promise<{ ok: true } | { ok: false; reason: string }>;

export interface QuoteInput {
  /** TPM2B_PUBLIC of the AK. */
  akPublic: Buffer;
  /** DER certificates, AK certificate first. */
  akCertChain: readonly Buffer[];
  /** The nonce the verifier sent. */
  nonce: Buffer;
  /** The selection the verifier asked for. */
  selection: readonly PcrSelection[];
  /** TPMS_ATTEST bytes. */
  quote: Buffer;
  /** TPMT_SIGNATURE bytes. */
  signature: Buffer;
  /** The PCR values reported with the quote. */
  pcrValues: PcrValues;
}

// An AK must be a restricted signing key that never leaves its TPM: only such a key refuses to sign
// data that starts with TPM_GENERATED_VALUE, which is what makes a signed TPMS_ATTEST trustworthy.
const REQUIRED_AK_ATTRIBUTES = TPMA_OBJECT.restricted | TPMA_OBJECT.sign | TPMA_OBJECT.fixedTPM;

const fail = (code: QuoteFailureCode, reason: string): QuoteVerdict => ({ ok: false, code, reason });

function sameSelection(a: readonly PcrSelection[], b: readonly PcrSelection[]): boolean {
  const norm = (s: readonly PcrSelection[]) => s.filter((x) => x.pcrs.length > 0).map((x) => `${x.hashAlg}:${[...x.pcrs].sort((p, q) => p - q).join(',')}`);
  const x = norm(a);
  const y = norm(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function describe(s: readonly PcrSelection[]): string {
  return s.map((x) => `0x${x.hashAlg.toString(16)}:[${x.pcrs.join(',')}]`).join(' ');
}

export async function verifyQuote(input: QuoteInput, verifyChain: AkChainVerifier): Promise<QuoteVerdict> {
  let ak: PublicArea;
  try {
    ak = parsePublic(input.akPublic);
  } catch (e) {
    return fail('MALFORMED', `AK public area: ${(e as Error).message}`);
  }
  if ((ak.objectAttributes & REQUIRED_AK_ATTRIBUTES) !== REQUIRED_AK_ATTRIBUTES) {
    return fail('AK_UNTRUSTED', 'the AK is not a fixedTPM restricted signing key');
  }
  const chain = await verifyChain(ak, input.akCertChain);
  if (!chain.ok) return fail('AK_UNTRUSTED', chain.reason);

  let sigOk: boolean;
  try {
    sigOk = verifyTpmSignature(ak, input.quote, parseSignature(input.signature));
  } catch (e) {
    return fail('MALFORMED', `signature: ${(e as Error).message}`);
  }
  if (!sigOk) return fail('BAD_SIGNATURE', 'the quote signature does not verify with the AK');

  if (input.quote.length < 4 || input.quote.readUInt32BE(0) !== TPM_GENERATED_VALUE) return fail('BAD_MAGIC', 'TPMS_ATTEST magic is not TPM_GENERATED_VALUE');
  let attest: Attest;
  try {
    attest = parseAttest(input.quote);
  } catch (e) {
    return fail('MALFORMED', `TPMS_ATTEST: ${(e as Error).message}`);
  }
  if (attest.type !== TPM_ST.ATTEST_QUOTE || !('pcrSelect' in attest.attested)) return fail('NOT_A_QUOTE', `attestation type 0x${attest.type.toString(16)} is not TPM_ST_ATTEST_QUOTE`);
  if (!attest.extraData.equals(input.nonce)) return fail('NONCE_MISMATCH', 'the quote is not over the nonce this verifier sent (replayed or redirected)');
  const { pcrSelect, pcrDigest: quoted } = attest.attested;
  if (!sameSelection(pcrSelect, input.selection)) return fail('PCR_SELECTION_MISMATCH', `quoted PCRs ${describe(pcrSelect)}, asked for ${describe(input.selection)}`);

  // The reported values must be exactly the quoted PCRs: an extra value would be believed unsigned.
  const reported = new Set<string>();
  for (const [p, banks] of input.pcrValues) for (const alg of banks.keys()) reported.add(`${alg}:${p}`);
  const quotedSet = new Set(pcrSelect.flatMap((s) => s.pcrs.map((p) => `${s.hashAlg}:${p}`)));
  if (reported.size !== quotedSet.size || [...reported].some((k) => !quotedSet.has(k))) {
    return fail('PCR_VALUES_MISMATCH', 'the reported PCR values are not exactly the quoted PCRs');
  }
  // TPM2_Quote hashes the PCRs with the signing scheme's hash (Part 3 §18.4).
  const sig = parseSignature(input.signature);
  let computed: Buffer;
  try {
    computed = pcrDigest('hashAlg' in sig ? sig.hashAlg : 0, pcrSelect, input.pcrValues);
  } catch (e) {
    return fail('PCR_VALUES_MISMATCH', (e as Error).message);
  }
  if (!computed.equals(quoted)) return fail('PCR_DIGEST_MISMATCH', 'the reported PCR values do not hash to the quoted pcrDigest');
  return { ok: true, attest, akPublic: ak, pcrValues: input.pcrValues };
}
