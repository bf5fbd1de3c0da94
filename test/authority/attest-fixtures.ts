// A fake monitor-side evidence producer for attestation tests: a real swtpm with an AK (ECC or RSA)
// certified through a test chain (provider CA (Ed25519) → vTPM CA (RSA) → AK), the measured launch and
// IMA extends made on it, and quotes answered the way the monitor's POST /v1/vms/:vmId/attest would.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash, createPrivateKey, webcrypto } from 'node:crypto';
import {
  TPM_ALG,
  TPM_RH,
  TPMA_OBJECT,
  akTemplate,
  createCommand,
  createPrimaryCommand,
  encodeSignature,
  loadCommand,
  parseCommand,
  parseCreatePrimaryResponse,
  parseCreateResponse,
  parseLoadResponse,
  parsePcrReadResponse,
  parseQuoteResponse,
  parseResponse,
  pcrExtendCommand,
  pcrReadCommand,
  quoteCommand,
  storageTemplate,
  type ParsedResponse,
  type PublicArea,
} from '../../src/formats/tpm2/index.ts';
import { encodeEventLog, EV, measuredLaunchLog, type LaunchMeasurements } from '../../src/formats/tcg-eventlog.ts';
import { parseImaBinary, imaExtendValue } from '../../src/formats/ima.ts';
import { tpmPublicKey } from '../../src/crypto/tpm2-key.ts';
import { createCa, type CaMaterial } from '../../src/authority/ca.ts';
import type { AttestRequest, AttestationEvidence } from '../../src/formats/protocol/attestation.ts';
import { pcrValuesToWire, selectionOf } from '../../src/authority/attest/pcr-wire.ts';
import { startSwtpm, transact, type Swtpm } from '../formats/tpm2-fixtures/swtpm.ts';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

/** One binary_runtime_measurements entry of template ima-ng (formats/ima.ts header describes the layout). */
export function imaNgEntry(path: string, fileDigest: Buffer, algorithm = 'sha256'): Buffer {
  const field = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return Buffer.concat([len, b]);
  };
  const data = Buffer.concat([field(Buffer.concat([Buffer.from(`${algorithm}:\0`), fileDigest])), field(Buffer.from(`${path}\0`))]);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(10);
  const name = Buffer.from('ima-ng');
  const nameLen = Buffer.alloc(4);
  nameLen.writeUInt32LE(name.length);
  const dataLen = Buffer.alloc(4);
  dataLen.writeUInt32LE(data.length);
  return Buffer.concat([head, createHash('sha1').update(data).digest(), nameLen, name, dataLen, data]);
}

export const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest();

export interface TestChain {
  root: CaMaterial;
  /** DER: AK certificate, vTPM CA certificate. */
  chain: Buffer[];
}

const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;

/** Certifies `ak` through a fresh provider CA and vTPM CA. */
export async function certifyAk(ak: PublicArea, root?: CaMaterial): Promise<TestChain> {
  const provider = root ?? (await createCa({ commonName: 'test provider CA' }));
  const rootCert = new x509.X509Certificate(provider.certPem);
  const rootKey = await webcrypto.subtle.importKey('pkcs8', createPrivateKey(provider.privateKeyPem).export({ format: 'der', type: 'pkcs8' }), { name: 'Ed25519' }, false, ['sign']);
  const vtpmKeys = (await webcrypto.subtle.generateKey({ ...RSA, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, true, ['sign', 'verify'])) as CryptoKeyPair;
  const now = Date.now();
  const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000) };
  const vtpmCa = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    issuer: rootCert.subject,
    subject: 'CN=test vTPM CA',
    publicKey: vtpmKeys.publicKey,
    signingKey: rootKey,
    signingAlgorithm: { name: 'Ed25519' },
    ...validity,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const spki = tpmPublicKey(ak).export({ format: 'der', type: 'spki' });
  const alg = ak.type === TPM_ALG.ECC ? { name: 'ECDSA', namedCurve: 'P-256' } : RSA;
  const akKey = await webcrypto.subtle.importKey('spki', spki, alg, true, ['verify']);
  const akCert = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    issuer: vtpmCa.subject,
    subject: 'CN=test AK',
    publicKey: akKey,
    signingKey: vtpmKeys.privateKey,
    signingAlgorithm: RSA,
    ...validity,
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
  });
  return { root: provider, chain: [Buffer.from(akCert.rawData), Buffer.from(vtpmCa.rawData)] };
}

export class EvidenceTpm {
  eventLog: Buffer = Buffer.alloc(0);
  imaLog: Buffer = Buffer.alloc(0);
  private constructor(
    readonly tpm: Swtpm,
    readonly akHandle: number,
    readonly akPublic: PublicArea,
    /** TPM2B_PUBLIC of the AK. */
    readonly akPublicBytes: Buffer,
    readonly chain: TestChain,
  ) {}

  static async start(kind: 'ecc' | 'rsa', root?: CaMaterial): Promise<EvidenceTpm> {
    const tpm = await startSwtpm();
    const send = async (cmd: Buffer): Promise<ParsedResponse> => parseResponse(await transact(tpm.port, cmd), parseCommand(cmd).commandCode);
    const prim = parseCreatePrimaryResponse(await send(createPrimaryCommand(TPM_RH.OWNER, storageTemplate('ecc'))));
    // noDA: the AK has an empty auth, and a fresh swtpm may still count a non-orderly start as a DA failure.
    const template = akTemplate(kind);
    const created = parseCreateResponse(await send(createCommand(prim.handle, { ...template, objectAttributes: template.objectAttributes | TPMA_OBJECT.noDA })));
    const loaded = parseLoadResponse(await send(loadCommand(prim.handle, created.outPrivate, created.outPublicBytes)));
    const size = Buffer.alloc(2);
    size.writeUInt16BE(created.outPublicBytes.length);
    const chain = await certifyAk(created.outPublic, root);
    return new EvidenceTpm(tpm, loaded.handle, created.outPublic, Buffer.concat([size, created.outPublicBytes]), chain);
  }

  async send(cmd: Buffer): Promise<ParsedResponse> {
    return parseResponse(await transact(this.tpm.port, cmd), parseCommand(cmd).commandCode);
  }

  /** Extends the measured launch (sha256 bank) into PCRs 8/9 and keeps its log, as the monitor does. */
  async measureLaunch(m: LaunchMeasurements, logged: LaunchMeasurements = m): Promise<void> {
    const extended = measuredLaunchLog(m).events.filter((e) => e.pcrIndex >= 8);
    for (const e of extended) {
      if (e.eventType === EV.NO_ACTION) continue;
      await this.send(pcrExtendCommand(e.pcrIndex, [{ hashAlg: TPM_ALG.SHA256, digest: e.digests.get(TPM_ALG.SHA256)! }]));
    }
    const log = measuredLaunchLog(logged);
    this.eventLog = encodeEventLog({ ...log, events: log.events.filter((e) => e.pcrIndex >= 8) });
  }

  /** Appends IMA entries (binary form) to the list and extends PCR 10's sha256 bank with them. */
  async measureIma(entries: Buffer[], extend = true): Promise<void> {
    const bin = Buffer.concat(entries);
    if (extend) for (const e of parseImaBinary(bin)) await this.send(pcrExtendCommand(10, [{ hashAlg: TPM_ALG.SHA256, digest: imaExtendValue(e, 'sha256') }]));
    this.imaLog = Buffer.concat([this.imaLog, bin]);
  }

  /** PCR values of a selection, read 8 at a time (TPM2_PCR_Read returns at most 8 digests). */
  async readPcrs(req: AttestRequest['pcrs']) {
    const values = new Map<number, Map<number, Buffer>>();
    for (const s of selectionOf(req)) {
      for (let i = 0; i < s.pcrs.length; i += 8) {
        const read = parsePcrReadResponse(await this.send(pcrReadCommand([{ hashAlg: s.hashAlg, pcrs: s.pcrs.slice(i, i + 8) }])));
        for (const [p, banks] of read.values) for (const [alg, v] of banks) (values.get(p) ?? values.set(p, new Map()).get(p)!).set(alg, v);
      }
    }
    return values;
  }

  /** What the monitor answers to POST /v1/vms/:vmId/attest. */
  async produce(req: AttestRequest): Promise<AttestationEvidence> {
    const { quoted, signature } = parseQuoteResponse(await this.send(quoteCommand(this.akHandle, req.nonce, selectionOf(req.pcrs))));
    const values = await this.readPcrs(req.pcrs);
    return {
      quote: quoted,
      signature: encodeSignature(signature),
      akPublic: this.akPublicBytes,
      akCertChain: this.chain.chain,
      pcrValues: pcrValuesToWire(values),
      eventLog: this.eventLog,
      ...(this.imaLog.length > 0 ? { imaLog: this.imaLog } : {}),
    };
  }

  stop(): Promise<void> {
    return this.tpm.stop();
  }
}
