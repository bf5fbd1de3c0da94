/**
 * Attestation evidence from a VM's vTPM (ARCHITECTURE.md protocol 10): TPM2_PCR_Read of the requested
 * PCRs and TPM2_Quote over them with the verifier's nonce, signed by the monitor's AK, plus the AK's
 * certificate chain and the measured-launch event log. The AK is made, the PCRs read, the quote taken and
 * the AK flushed in one exclusive section of the TPM channel, so no guest command (an IMA extend, a flush
 * of a guessed handle) lands in between and the PCR values are exactly those the quote's digest covers.
 */
import { readFile } from 'node:fs/promises';
import { BANK_NAMES, ATTEST_LIMITS, type AttestRequest, type AttestationEvidenceWire, type BankName, type PcrValuesWire } from '../../formats/protocol/attestation.ts';
import { TPM_ALG, TPM_CC, encodeSignature, parsePcrReadResponse, parseQuoteResponse, parseResponse, pcrReadCommand, quoteCommand, type PcrSelection, type PcrValues } from '../../formats/tpm2/index.ts';
import { AkCertifier, flushAk, loadAk } from './attestation-key.ts';
import type { TpmEndpoint } from './tpm-channel.ts';

/** TPM_RC_YIELDED, TPM_RC_TESTING, TPM_RC_RETRY: warnings after which a TPM command is simply sent again (Part 2 §6.6). */
const RETRY_RCS = new Set([0x908, 0x90a, 0x922]);
const MAX_TRIES = 8;

/** Sends `command` until it is answered with something other than a retry warning. */
async function transactRetrying(tpm: TpmEndpoint, command: Buffer): Promise<Buffer> {
  for (let i = 1; ; i++) {
    const rsp = await tpm.transact(command);
    if (i >= MAX_TRIES || rsp.length < 10 || !RETRY_RCS.has(rsp.readUInt32BE(6))) return rsp;
  }
}

const BANK_ALG: Record<BankName, number> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384, sha512: TPM_ALG.SHA512 };

export interface EvidenceTpm {
  exclusive<T>(fn: (tpm: TpmEndpoint) => Promise<T>): Promise<T>;
}

export interface EvidenceSource {
  tpm: EvidenceTpm;
  eventLogPath: string;
  /** Named in the AK certificate's subject (the VM id). */
  vmName: string;
  certifier: AkCertifier;
}

/** The request's selection in the order a TPM reports it: banks in BANK_NAMES order, PCRs ascending. */
export function requestedSelection(req: AttestRequest['pcrs']): PcrSelection[] {
  return BANK_NAMES.flatMap((b) => (req[b] ? [{ hashAlg: BANK_ALG[b], pcrs: [...req[b]].sort((x, y) => x - y) }] : []));
}

/** Reads every PCR of `selection` (a PCR_Read returns at most 8 digests, so it may take several). */
async function readPcrs(tpm: TpmEndpoint, selection: readonly PcrSelection[]): Promise<PcrValues> {
  const values: PcrValues = new Map();
  const has = (p: number, alg: number) => values.get(p)?.has(alg) === true;
  for (let round = 0; round < 32; round++) {
    const missing = selection.map((s) => ({ hashAlg: s.hashAlg, pcrs: s.pcrs.filter((p) => !has(p, s.hashAlg)) })).filter((s) => s.pcrs.length > 0);
    if (missing.length === 0) return values;
    const r = parsePcrReadResponse(parseResponse(await tpm.transact(pcrReadCommand(missing)), TPM_CC.PCR_Read));
    let got = 0;
    for (const [p, banks] of r.values) {
      for (const [alg, v] of banks) {
        if (!missing.some((s) => s.hashAlg === alg && s.pcrs.includes(p))) continue;
        if (!values.has(p)) values.set(p, new Map());
        values.get(p)!.set(alg, v);
        got++;
      }
    }
    if (got === 0) throw new Error(`the vTPM does not have PCRs ${JSON.stringify(missing)} (bank not active?)`);
  }
  throw new Error('PCR_Read did not converge');
}

function toWire(values: PcrValues, selection: readonly PcrSelection[]): PcrValuesWire {
  const out: Record<string, Record<string, string>> = {};
  for (const s of selection) {
    const bank = BANK_NAMES.find((b) => BANK_ALG[b] === s.hashAlg)!;
    for (const p of s.pcrs) (out[bank] ??= {})[String(p)] = values.get(p)!.get(s.hashAlg)!.toString('hex');
  }
  return out as PcrValuesWire;
}

/** Quotes the requested PCRs with the request's nonce; the evidence as it goes on the wire. */
export async function collectEvidence(src: EvidenceSource, req: AttestRequest): Promise<AttestationEvidenceWire> {
  const selection = requestedSelection(req.pcrs);
  const eventLog = await readFile(src.eventLogPath).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw new Error('no measured launch yet: the guest firmware has not started the TPM');
    throw e;
  });
  if (eventLog.length > ATTEST_LIMITS.maxEventLogBytes) throw new Error(`event log of ${eventLog.length} bytes`);
  const { ak, values, quote } = await src.tpm.exclusive(async (tpm) => {
    const ak = await loadAk(tpm);
    try {
      const values = await readPcrs(tpm, selection);
      const quote = parseQuoteResponse(parseResponse(await transactRetrying(tpm, quoteCommand(ak.handle, req.nonce, selection)), TPM_CC.Quote));
      return { ak, values, quote };
    } finally {
      await flushAk(tpm, ak);
    }
  });
  const chain = await src.certifier.chain(ak, src.vmName);
  return {
    quote: quote.quoted.toString('base64'),
    signature: encodeSignature(quote.signature).toString('base64'),
    akPublic: ak.publicBytes.toString('base64'),
    akCertChain: chain.map((c) => c.toString('base64')),
    pcrValues: toWire(values, selection),
    eventLog: eventLog.toString('base64'),
  };
}
