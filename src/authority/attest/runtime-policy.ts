// Keylime runtime policies (keylime/ima/types.py, ima.py, file_signatures.py): the JSON format and its
// evaluation against an IMA measurement list, with Keylime's semantics so existing policies behave the
// same here:
// - the excludes are joined into one Python regex "(a)|(b)|…" applied with re.match (anchored at the
//   start only) to the entry's path; an excluded entry is not checked;
// - ima / ima-ng: the file digest's hex must be listed under digests[path];
// - ima-sig: a non-empty signature that verifies with a key from verification-keys (or a key learned
//   from an ima-buf keyring entry) accepts the file; otherwise the ima-ng rule applies;
// - ima-buf: a buffer holding a key is checked against keyrings[name] unless the keyring is ignored
//   (then learned for ima-sig); any other buffer is checked against ima-buf[name];
// - boot_aggregate is an ordinary path: the verifier adds the values computed from the quoted PCRs to
//   digests.boot_aggregate before checking;
// - the template hash must match the entry; violations (ToMToU, open-writers) are reported, not failed.
import { createHash, createPublicKey, publicDecrypt, constants as cryptoConstants, X509Certificate, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { BOOT_AGGREGATE_NAME, IMA_PCR, templateHashMatches, type ImaEntry } from '../../formats/ima.ts';

const HexDigest = z.string().max(256);
const DigestMap = z.record(z.string().max(4096), z.array(HexDigest).max(100_000));

export const RuntimePolicySchema = z.object({
  meta: z.looseObject({ version: z.number().int().min(1), generator: z.number().int().optional(), timestamp: z.string().optional() }),
  release: z.number().int().optional(),
  digests: DigestMap,
  excludes: z.array(z.string().max(4096)).max(10_000),
  keyrings: DigestMap,
  ima: z.looseObject({
    ignored_keyrings: z.array(z.string().max(4096)),
    log_hash_alg: z.enum(['sha1', 'sha256', 'sha384', 'sha512']),
    dm_policy: z.unknown().nullable(),
  }),
  'ima-buf': DigestMap,
  'verification-keys': z.string().max(10_000_000),
  rules: z.string().optional(),
});
export type RuntimePolicy = z.infer<typeof RuntimePolicySchema>;

/** The version of the format this verifier implements (Keylime's RUNTIME_POLICY_CURRENT_VERSION). */
export const RUNTIME_POLICY_VERSION = 1;

export class RuntimePolicyError extends Error {
  override readonly name = 'RuntimePolicyError';
}

/** Parses and validates a policy (JSON text or value); the exclude regexes must compile. */
export function parseRuntimePolicy(input: string | unknown): RuntimePolicy {
  let value: unknown = input;
  if (typeof input === 'string') {
    try {
      value = JSON.parse(input);
    } catch {
      throw new RuntimePolicyError('runtime policy is not valid JSON');
    }
  }
  const r = RuntimePolicySchema.safeParse(value);
  if (!r.success) throw new RuntimePolicyError(`invalid runtime policy: ${z.prettifyError(r.error)}`);
  if (r.data.meta.version > RUNTIME_POLICY_VERSION) throw new RuntimePolicyError(`runtime policy version ${r.data.meta.version} is newer than ${RUNTIME_POLICY_VERSION}`);
  compileExcludes(r.data.excludes);
  parseVerificationKeys(r.data['verification-keys']);
  return r.data;
}

/** Keylime's EMPTY_RUNTIME_POLICY, as a base for generated policies. */
export function emptyRuntimePolicy(): RuntimePolicy {
  return {
    meta: { version: RUNTIME_POLICY_VERSION },
    release: 0,
    digests: {},
    excludes: [],
    keyrings: {},
    ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: null },
    'ima-buf': {},
    'verification-keys': '',
  };
}

/**
 * Translates Python `re` syntax that JavaScript spells differently; anything else Python-only (inline
 * flags, conditionals) fails to compile here with the regex named.
 */
function pythonToJsRegex(src: string): string {
  return src
    .replace(/\(\?P<([A-Za-z_]\w*)>/g, '(?<$1>')
    .replace(/\(\?P=([A-Za-z_]\w*)\)/g, '\\k<$1>')
    .replace(/\\A/g, '^')
    .replace(/\\Z/g, '$');
}

/** The combined exclude regex, anchored at the start as Python's re.match is; null for none. */
export function compileExcludes(excludes: readonly string[]): RegExp | null {
  if (excludes.length === 0) return null;
  for (const e of excludes) {
    try {
      new RegExp(pythonToJsRegex(e));
    } catch (err) {
      throw new RuntimePolicyError(`invalid exclude regex ${JSON.stringify(e)}: ${(err as Error).message}`);
    }
  }
  return new RegExp(`^(?:(${excludes.map(pythonToJsRegex).join(')|(')}))`);
}

interface ImaKey {
  key: KeyObject;
  keyId: number;
}

/** keyidv2: the last 4 bytes of SHA-1 over the PKCS#1 DER (RSA) or X9.62 point (EC) of the key. */
function keyIdV2(key: KeyObject): number {
  let bytes: Buffer;
  if (key.asymmetricKeyType === 'rsa') {
    bytes = key.export({ type: 'pkcs1', format: 'der' });
  } else {
    const jwk = key.export({ format: 'jwk' });
    bytes = Buffer.concat([Buffer.of(4), Buffer.from(jwk.x ?? '', 'base64url'), Buffer.from(jwk.y ?? '', 'base64url')]);
  }
  return createHash('sha1').update(bytes).digest().readUInt32BE(16);
}

/** verification-keys: JSON (possibly JSON-in-a-string) {keyring: "{\"pubkeys\": [b64 DER SPKI], \"keyids\": [n]}"}. */
export function parseVerificationKeys(text: string): Map<string, ImaKey[]> {
  const rings = new Map<string, ImaKey[]>();
  if (text === '') return rings;
  const fail = (why: string) => new RuntimePolicyError(`verification-keys: ${why}`);
  let obj: unknown;
  try {
    obj = JSON.parse(text);
    if (typeof obj === 'string') obj = JSON.parse(obj);
  } catch {
    throw fail('not JSON');
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw fail('not an object of keyrings');
  const Ring = z.object({ pubkeys: z.array(z.string().max(100_000)).max(10_000), keyids: z.array(z.number().int().min(0).max(0xffffffff)).optional() });
  for (const [name, ringText] of Object.entries(obj)) {
    let ringObj: unknown;
    try {
      ringObj = typeof ringText === 'string' ? JSON.parse(ringText) : ringText;
    } catch {
      throw fail(`keyring ${name} is not JSON`);
    }
    const ring = Ring.safeParse(ringObj);
    if (!ring.success) throw fail(`keyring ${name}: ${z.prettifyError(ring.error)}`);
    const keys = ring.data.pubkeys.map((b64, i) => {
      let key: KeyObject;
      try {
        key = createPublicKey({ key: Buffer.from(b64, 'base64'), format: 'der', type: 'spki' });
      } catch {
        throw fail(`keyring ${name}: key ${i} is not a DER public key`);
      }
      return { key, keyId: ring.data.keyids?.[i] ?? keyIdV2(key) };
    });
    rings.set(name, keys);
  }
  return rings;
}

/** A key in an ima-buf buffer: DER or PEM certificate or public key (file_signatures.get_pubkey). */
function keyFromBuffer(buf: Buffer): ImaKey | null {
  const attempts: Array<() => ImaKey> = [
    // Keylime prefers a certificate's SKID as keyid; kernel-generated SKIDs are this same SHA-1 value.
    () => ({ key: new X509Certificate(buf).publicKey, keyId: keyIdV2(new X509Certificate(buf).publicKey) }),
    () => {
      const key = createPublicKey({ key: buf, format: 'der', type: 'spki' });
      return { key, keyId: keyIdV2(key) };
    },
    () => {
      const key = createPublicKey(buf.toString('latin1'));
      return { key, keyId: keyIdV2(key) };
    },
  ];
  for (const a of attempts) {
    try {
      const k = a();
      if (k.key.asymmetricKeyType === 'rsa' || k.key.asymmetricKeyType === 'ec') return k;
    } catch {
      // not this encoding
    }
  }
  return null;
}

// DigestInfo prefixes of RFC 8017 §9.2 (note 1), keyed by the kernel's hash_algo numbers.
const DIGEST_INFO: Readonly<Record<number, { name: string; prefix: string }>> = {
  2: { name: 'sha1', prefix: '3021300906052b0e03021a05000414' },
  4: { name: 'sha256', prefix: '3031300d060960864801650304020105000420' },
  5: { name: 'sha384', prefix: '3041300d060960864801650304020205000430' },
  6: { name: 'sha512', prefix: '3051300d060960864801650304020305000440' },
  7: { name: 'sha224', prefix: '302d300d06096086480165030402040500041c' },
};

/**
 * IMA digital signature v2 (struct signature_v2_hdr, big-endian: type, version, hash_algo, keyid,
 * sig_size) over the file digest. RSA PKCS#1 v1.5 is verified; ECDSA over a prehashed digest is not
 * available in node:crypto, so EC signatures never verify here and the digest list decides (Keylime's
 * path for a signature that does not verify).
 */
export function verifyImaSignature(sig: Buffer, fileDigest: Buffer, digestAlg: string, keys: Iterable<ImaKey>): boolean {
  if (sig.length < 9) return false;
  const type = sig[0];
  if ((type !== 3 && type !== 5) || sig[1] !== 2) return false;
  const algo = DIGEST_INFO[sig[2] as number];
  const keyId = sig.readUInt32BE(3);
  const size = sig.readUInt16BE(7);
  if (!algo || size !== sig.length - 9 || algo.name !== digestAlg) return false;
  for (const k of keys) {
    if (k.keyId !== keyId || k.key.asymmetricKeyType !== 'rsa') continue;
    try {
      const info = publicDecrypt({ key: k.key, padding: cryptoConstants.RSA_PKCS1_PADDING }, sig.subarray(9));
      if (info.equals(Buffer.concat([Buffer.from(algo.prefix, 'hex'), fileDigest]))) return true;
    } catch {
      // wrong key size or padding: not this key
    }
  }
  return false;
}

export type PolicyFailureReason =
  | 'not_in_allowlist'
  | 'runtime_policy_hash'
  | 'invalid_signature'
  | 'invalid_key'
  | 'ima_pcr'
  | 'ima_hash'
  | 'dm_policy_unsupported';

export interface PolicyFailure {
  index: number;
  reason: PolicyFailureReason;
  template: string;
  path: string;
  /** "algo:hex" of the file digest. */
  digest: string;
  message: string;
}

export interface PolicyEvaluation {
  ok: boolean;
  failures: PolicyFailure[];
  /** Entries accepted by a verified signature rather than a digest. */
  signatureAccepted: number;
  excluded: number;
  /** Violation entries (ToMToU / open-writers), not checked. */
  violations: number;
}

export interface EvaluateOptions {
  /** boot_aggregate values computed from the quoted PCRs (hex), added to digests.boot_aggregate. */
  bootAggregates?: readonly string[];
  /** Stop at the first failure (a verifier that reports only the first one need not judge the rest). */
  firstFailureOnly?: boolean;
}

// Lists of a few digests are searched directly; longer ones get a Set, built when first needed, so a
// 10,000-path policy costs nothing per evaluation for the paths the list does not name.
const SMALL_LIST = 8;

/** The accepted hex digests per path of one policy map, looked up without copying the map. */
class AcceptLists {
  private readonly sets = new Map<string, Set<string>>();
  constructor(
    private readonly lists: Readonly<Record<string, readonly string[]>>,
    private readonly extra?: { path: string; digests: readonly string[] },
  ) {}

  /** undefined: the path is not listed; otherwise whether `hex` is accepted for it. */
  accepts(path: string, hex: string): boolean | undefined {
    const extra = this.extra?.path === path ? this.extra.digests : undefined;
    const list = Object.hasOwn(this.lists, path) ? this.lists[path] : undefined;
    if (!list) return extra ? extra.includes(hex) : undefined;
    if (extra?.includes(hex)) return true;
    if (list.length <= SMALL_LIST) return list.includes(hex);
    let set = this.sets.get(path);
    if (!set) this.sets.set(path, (set = new Set(list)));
    return set.has(hex);
  }
}

// Device-mapper measurements (drivers/md/dm-ima.c), judged by Keylime's dm_policy, which is not implemented.
const DM_EVENTS = new Set(['dm_table_load', 'dm_device_resume', 'dm_device_remove', 'dm_table_clear', 'dm_device_rename', 'dm_target_update']);

/** Evaluates a measurement list against a policy exactly as Keylime's verifier does (see header). */
export function evaluateRuntimePolicy(entries: readonly ImaEntry[], policy: RuntimePolicy, opts: EvaluateOptions = {}): PolicyEvaluation {
  const exclude = compileExcludes(policy.excludes);
  const rings = parseVerificationKeys(policy['verification-keys']);
  const keys: ImaKey[] = [...rings.values()].flat();
  const boot = opts.bootAggregates?.length ? { path: BOOT_AGGREGATE_NAME, digests: opts.bootAggregates } : undefined;
  const digests = new AcceptLists(policy.digests, boot);
  const keyrings = new AcceptLists(policy.keyrings);
  const imaBuf = new AcceptLists(policy['ima-buf']);
  const ignored = new Set(policy.ima.ignored_keyrings);
  const out: PolicyEvaluation = { ok: true, failures: [], signatureAccepted: 0, excluded: 0, violations: 0 };

  const fail = (e: ImaEntry, index: number, reason: PolicyFailureReason, message: (digest: string) => string) => {
    const digest = `${e.fileDigest.algorithm}:${e.fileDigest.digest.toString('hex')}`;
    out.failures.push({ index, reason, template: e.template, path: e.path, digest, message: message(digest) });
  };
  const checkList = (e: ImaEntry, index: number, lists: AcceptLists, hex: string) => {
    if (exclude?.test(e.path)) {
      out.excluded++;
      return true;
    }
    const accepted = lists.accepts(e.path, hex);
    if (accepted === undefined) fail(e, index, 'not_in_allowlist', (d) => `File not found in allowlist: ${e.path} (${d})`);
    else if (!accepted) fail(e, index, 'runtime_policy_hash', (d) => `Hash not found in runtime policy: ${e.path} has ${d}`);
    return accepted === true;
  };
  const judge = (e: ImaEntry, index: number): void => {
    if (e.pcr !== IMA_PCR) return fail(e, index, 'ima_pcr', () => `entry for ${e.path} is in PCR ${e.pcr}, not ${IMA_PCR}`);
    if (e.violation) {
      out.violations++;
      return;
    }
    if (!templateHashMatches(e)) return fail(e, index, 'ima_hash', () => `template hash of ${e.path} does not match its data`);
    const hex = e.fileDigest.digest.toString('hex');
    switch (e.template) {
      case 'ima-sig':
      case 'ima-sigv2':
      case 'ima-modsig':
        if (keys.length > 0 && e.signature && e.signature.length > 0) {
          if (exclude?.test(e.path)) {
            out.excluded++;
            return;
          }
          if (verifyImaSignature(e.signature, e.fileDigest.digest, e.fileDigest.algorithm, keys)) {
            out.signatureAccepted++;
            return;
          }
        }
        checkList(e, index, digests, hex);
        return;
      case 'ima-buf': {
        const key = keyFromBuffer(e.buf ?? Buffer.alloc(0));
        if (key) {
          if (!ignored.has('*') && !ignored.has(e.path) && checkList(e, index, keyrings, hex)) keys.push(key);
          return;
        }
        if (policy.ima.dm_policy !== null && DM_EVENTS.has(e.path)) {
          return fail(e, index, 'dm_policy_unsupported', () => `device-mapper entry ${e.path}: dm_policy is not supported by this verifier`);
        }
        checkList(e, index, imaBuf, hex);
        return;
      }
      default:
        checkList(e, index, digests, hex);
    }
  };
  for (let i = 0; i < entries.length; i++) {
    judge(entries[i] as ImaEntry, i);
    if (opts.firstFailureOnly && out.failures.length > 0) break;
  }
  out.ok = out.failures.length === 0;
  return out;
}
