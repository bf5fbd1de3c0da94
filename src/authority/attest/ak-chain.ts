/**
 * The AK certificate chain as X.509: AK certificate ← host vTPM CA certificate ← provider CA (pinned by
 * the authority, not taken from the evidence). Each link must be issued and signed by the next, every
 * issuer must be a CA, every certificate valid now, and the AK certificate must certify exactly the key
 * in the AK public area the quote is checked with.
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import type { PublicArea } from '../../formats/tpm2/public.ts';
import { tpmPublicKey } from '../../crypto/tpm2-key.ts';
import type { AkChainVerifier } from './quote-verify.ts';

function spki(k: KeyObject): Buffer {
  return k.export({ format: 'der', type: 'spki' });
}

export function x509AkChainVerifier(opts: { rootPem: string; now?: () => Date }): AkChainVerifier {
  const root = new X509Certificate(opts.rootPem);
  const now = opts.now ?? (() => new Date());
  return async (ak: PublicArea, chainDer: readonly Buffer[]) => {
    if (chainDer.length < 2) return { ok: false, reason: 'the AK certificate chain needs the AK and vTPM CA certificates' };
    let certs: X509Certificate[];
    try {
      certs = chainDer.map((d) => new X509Certificate(d));
    } catch (e) {
      return { ok: false, reason: `unreadable certificate in the AK chain: ${(e as Error).message}` };
    }
    const t = now().getTime();
    const all = [...certs, root];
    for (let i = 0; i < all.length; i++) {
      const c = all[i]!;
      if (t < Date.parse(c.validFrom) || t > Date.parse(c.validTo)) return { ok: false, reason: `certificate ${i} (${c.subject.replace(/\n/g, ', ')}) is not valid now` };
      if (i === 0) continue;
      const child = all[i - 1]!;
      if (!c.ca) return { ok: false, reason: `certificate ${i} (${c.subject.replace(/\n/g, ', ')}) is not a CA` };
      if (!child.checkIssued(c) || !child.verify(c.publicKey)) return { ok: false, reason: `certificate ${i - 1} is not issued by certificate ${i}` };
    }
    if (certs[0]!.ca) return { ok: false, reason: 'the AK certificate is a CA certificate' };
    let akKey: KeyObject;
    try {
      akKey = tpmPublicKey(ak);
    } catch (e) {
      return { ok: false, reason: (e as Error).message };
    }
    if (!spki(certs[0]!.publicKey).equals(spki(akKey))) return { ok: false, reason: 'the AK certificate certifies another key' };
    return { ok: true };
  };
}
