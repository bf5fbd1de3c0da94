/**
 * The monitor's attestation key (AK) in a VM's vTPM, and its certificate.
 *
 * The AK is a primary key under the endorsement hierarchy made from akTemplate('ecc') (ECC P-256, ECDSA-
 * SHA256, restricted signing, fixedTPM/fixedParent, empty auth). A primary is derived from the hierarchy's
 * seed and the template, so re-creating it gives the same key every time: nothing of the monitor's stays
 * loaded in the guest's TPM, and there is no handle for the guest to reach. It is created, used and flushed
 * inside one exclusive section of the TPM channel (tpm-channel.ts), so no guest command runs in between.
 * A guest that makes the same primary gains nothing: a restricted key signs only what the TPM itself
 * generated (quotes of the real PCRs), never data that mimics it.
 *
 * The certificate: X.509, issued by the host's vTPM CA (which the provider CA certifies at enrollment),
 * subject "vmseal AK <vm>", for exactly the TPM's public key. It is issued once per public key and reused.
 */
import 'reflect-metadata'; // @peculiar/x509 resolves its internals through tsyringe, which needs it first.
import * as x509 from '@peculiar/x509';
import { createHash, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { tpmPublicKey } from '../../crypto/tpm2-key.ts';
import { TPM_CC, TPM_RH, akTemplate, createPrimaryCommand, encodePublic, flushContextCommand, parseCreatePrimaryResponse, parseResponse, type PublicArea } from '../../formats/tpm2/index.ts';
import type { TpmEndpoint } from './tpm-channel.ts';
import type { VtpmCa } from './vtpm-ca.ts';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export const AK_HIERARCHY = TPM_RH.ENDORSEMENT;
export const AK_TEMPLATE: PublicArea = akTemplate('ecc');
const AK_VALIDITY_MS = 365 * 86_400_000;
const BACKDATE_MS = 5 * 60_000;

export interface LoadedAk {
  handle: number;
  publicArea: PublicArea;
  /** TPM2B_PUBLIC bytes (what the evidence carries as akPublic). */
  publicBytes: Buffer;
}

/** Creates the AK (a transient primary). Call inside TpmChannel.exclusive and flush it with flushAk. */
export async function loadAk(tpm: TpmEndpoint): Promise<LoadedAk> {
  const rsp = parseResponse(await tpm.transact(createPrimaryCommand(AK_HIERARCHY, AK_TEMPLATE)), TPM_CC.CreatePrimary);
  const created = parseCreatePrimaryResponse(rsp);
  return { handle: created.handle, publicArea: created.outPublic, publicBytes: encodePublic(created.outPublic) };
}

export async function flushAk(tpm: TpmEndpoint, ak: LoadedAk): Promise<void> {
  await tpm.transact(flushContextCommand(ak.handle));
}

/** Issues (and caches) AK certificates signed by the host's vTPM CA. */
export class AkCertifier {
  readonly #cache = new Map<string, Buffer>();
  #issuer: Promise<{ cert: x509.X509Certificate; certDer: Buffer; signingKey: CryptoKey }> | undefined;

  constructor(private readonly ca: VtpmCa) {}

  /** [AK certificate, vTPM CA certificate], DER. */
  async chain(ak: LoadedAk, vmName: string): Promise<Buffer[]> {
    const issuer = await (this.#issuer ??= this.#loadIssuer());
    const id = createHash('sha256').update(ak.publicBytes).update(vmName).digest('hex');
    let der = this.#cache.get(id);
    if (!der) {
      der = await this.#issue(ak.publicArea, vmName, issuer);
      this.#cache.set(id, der);
    }
    return [der, issuer.certDer];
  }

  async #loadIssuer() {
    const cert = new x509.X509Certificate(await readFile(this.ca.certPath, 'utf8'));
    const pkcs8 = createPrivateKey(await readFile(this.ca.keyPath, 'utf8')).export({ format: 'der', type: 'pkcs8' });
    const signingKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, ['sign']);
    return { cert, certDer: Buffer.from(cert.rawData), signingKey: signingKey as CryptoKey };
  }

  async #issue(ak: PublicArea, vmName: string, issuer: { cert: x509.X509Certificate; signingKey: CryptoKey }): Promise<Buffer> {
    const spki = tpmPublicKey(ak).export({ format: 'der', type: 'spki' });
    const publicKey = await webcrypto.subtle.importKey('spki', spki, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
    const now = Date.now();
    const serial = randomBytes(16);
    serial[0] = (serial[0]! & 0x7f) | 0x40;
    const notAfter = new Date(Math.min(now + AK_VALIDITY_MS, issuer.cert.notAfter.getTime()));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial.toString('hex'),
      subject: [{ CN: [`vmseal AK ${vmName}`] }],
      issuer: issuer.cert.subjectName,
      publicKey: publicKey as CryptoKey,
      signingKey: issuer.signingKey,
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      notBefore: new Date(now - BACKDATE_MS),
      notAfter,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        await x509.AuthorityKeyIdentifierExtension.create(issuer.cert),
        await x509.SubjectKeyIdentifierExtension.create(publicKey as CryptoKey),
      ],
    });
    return Buffer.from(cert.rawData);
  }
}
