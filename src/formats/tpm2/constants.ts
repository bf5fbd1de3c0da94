// TPM 2.0 Part 2 constants (values as in TCG TPM 2.0 Library Part 2 and tpm2-tss tss2_tpm2_types.h).

/** TPM_ST: structure tags. */
export const TPM_ST = {
  RSP_COMMAND: 0x00c4, // TPM 1.2 style tag a TPM 2.0 answers TPM_RC_BAD_TAG with
  NULL: 0x8000,
  NO_SESSIONS: 0x8001,
  SESSIONS: 0x8002,
  ATTEST_NV: 0x8014,
  ATTEST_COMMAND_AUDIT: 0x8015,
  ATTEST_SESSION_AUDIT: 0x8016,
  ATTEST_CERTIFY: 0x8017,
  ATTEST_QUOTE: 0x8018,
  ATTEST_TIME: 0x8019,
  ATTEST_CREATION: 0x801a,
  ATTEST_NV_DIGEST: 0x801c,
  CREATION: 0x8021,
  VERIFIED: 0x8022,
  AUTH_SECRET: 0x8023,
  HASHCHECK: 0x8024,
  AUTH_SIGNED: 0x8025,
} as const;

/** TPM_SU: TPM2_Startup / TPM2_Shutdown types. */
export const TPM_SU = { CLEAR: 0x0000, STATE: 0x0001 } as const;

/** TPM_GENERATED_VALUE: first field of every TPMS_ATTEST the TPM signs ("\xffTCG"). */
export const TPM_GENERATED_VALUE = 0xff544347;

/** TPM_ALG_ID values this code names. */
export const TPM_ALG = {
  ERROR: 0x0000,
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  MGF1: 0x0007,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM3_256: 0x0012,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  SHA3_256: 0x0027,
  SHA3_384: 0x0028,
  SHA3_512: 0x0029,
  CMAC: 0x003f,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
} as const;

/** Hash algorithms: TPM_ALG_ID → node:crypto name and digest size. The only hashes this code accepts. */
export const HASH_ALGS: ReadonlyMap<number, { name: string; size: number }> = new Map([
  [TPM_ALG.SHA1, { name: 'sha1', size: 20 }],
  [TPM_ALG.SHA256, { name: 'sha256', size: 32 }],
  [TPM_ALG.SHA384, { name: 'sha384', size: 48 }],
  [TPM_ALG.SHA512, { name: 'sha512', size: 64 }],
  [TPM_ALG.SM3_256, { name: 'sm3', size: 32 }],
  [TPM_ALG.SHA3_256, { name: 'sha3-256', size: 32 }],
  [TPM_ALG.SHA3_384, { name: 'sha3-384', size: 48 }],
  [TPM_ALG.SHA3_512, { name: 'sha3-512', size: 64 }],
]);

/** TPM_ECC_CURVE values. */
export const TPM_ECC = { NONE: 0x0000, NIST_P192: 0x0001, NIST_P224: 0x0002, NIST_P256: 0x0003, NIST_P384: 0x0004, NIST_P521: 0x0005, BN_P256: 0x0010, BN_P638: 0x0011, SM2_P256: 0x0020 } as const;

/** Permanent and reserved handles (TPM_RH / TPM_RS). */
export const TPM_RH = {
  OWNER: 0x40000001,
  NULL: 0x40000007,
  UNASSIGNED: 0x40000008,
  PW: 0x40000009, // TPM_RS_PW: the password session
  LOCKOUT: 0x4000000a,
  ENDORSEMENT: 0x4000000b,
  PLATFORM: 0x4000000c,
  PLATFORM_NV: 0x4000000d,
} as const;

/** TPM_HT: the handle type is the top byte of a handle. */
export const TPM_HT = {
  PCR: 0x00,
  NV_INDEX: 0x01,
  HMAC_SESSION: 0x02,
  POLICY_SESSION: 0x03,
  PERMANENT: 0x40,
  TRANSIENT: 0x80,
  PERSISTENT: 0x81,
} as const;

export function handleType(handle: number): number {
  return handle >>> 24;
}

/**
 * TPM_RC response codes. Format-zero codes have TPM_RC_VER1 (0x100) set; format-one codes have
 * TPM_RC_FMT1 (0x080) set and carry, in bits 8..11, which handle, session or parameter they refer to
 * (see rcForHandle / rcForParameter / rcForSession).
 */
export const TPM_RC = {
  SUCCESS: 0x000,
  BAD_TAG: 0x01e,
  VER1: 0x100,
  INITIALIZE: 0x100,
  FAILURE: 0x101,
  SEQUENCE: 0x103,
  DISABLED: 0x120,
  EXCLUSIVE: 0x121,
  AUTH_TYPE: 0x124,
  AUTH_MISSING: 0x125,
  POLICY: 0x126,
  PCR: 0x127,
  PCR_CHANGED: 0x128,
  UPGRADE: 0x12d,
  TOO_MANY_CONTEXTS: 0x12e,
  AUTH_UNAVAILABLE: 0x12f,
  REBOOT: 0x130,
  UNBALANCED: 0x131,
  COMMAND_SIZE: 0x142,
  COMMAND_CODE: 0x143,
  AUTHSIZE: 0x144,
  AUTH_CONTEXT: 0x145,
  NV_RANGE: 0x146,
  NV_SIZE: 0x147,
  NV_LOCKED: 0x148,
  NV_AUTHORIZATION: 0x149,
  NV_UNINITIALIZED: 0x14a,
  NV_SPACE: 0x14b,
  NV_DEFINED: 0x14c,
  BAD_CONTEXT: 0x150,
  CPHASH: 0x151,
  PARENT: 0x152,
  NEEDS_TEST: 0x153,
  NO_RESULT: 0x154,
  SENSITIVE: 0x155,
  FMT1: 0x080,
  ASYMMETRIC: 0x081,
  ATTRIBUTES: 0x082,
  HASH: 0x083,
  VALUE: 0x084,
  HIERARCHY: 0x085,
  KEY_SIZE: 0x087,
  MGF: 0x088,
  MODE: 0x089,
  TYPE: 0x08a,
  HANDLE: 0x08b,
  KDF: 0x08c,
  RANGE: 0x08d,
  AUTH_FAIL: 0x08e,
  NONCE: 0x08f,
  PP: 0x090,
  SCHEME: 0x092,
  SIZE: 0x095,
  SYMMETRIC: 0x096,
  TAG: 0x097,
  SELECTOR: 0x098,
  INSUFFICIENT: 0x09a,
  SIGNATURE: 0x09b,
  KEY: 0x09c,
  POLICY_FAIL: 0x09d,
  INTEGRITY: 0x09f,
  TICKET: 0x0a0,
  RESERVED_BITS: 0x0a1,
  BAD_AUTH: 0x0a2,
  EXPIRED: 0x0a3,
  POLICY_CC: 0x0a4,
  BINDING: 0x0a5,
  CURVE: 0x0a6,
  ECC_POINT: 0x0a7,
  WARN: 0x900,
  CONTEXT_GAP: 0x901,
  OBJECT_MEMORY: 0x902,
  SESSION_MEMORY: 0x903,
  MEMORY: 0x904,
  SESSION_HANDLES: 0x905,
  OBJECT_HANDLES: 0x906,
  LOCALITY: 0x907,
  YIELDED: 0x908,
  CANCELED: 0x909,
  TESTING: 0x90a,
  NV_RATE: 0x920,
  LOCKOUT: 0x921,
  RETRY: 0x922,
  NV_UNAVAILABLE: 0x923,
} as const;

// Format-one modifiers (Part 2, TPM_RC): P (0x040) marks a parameter number, S (0x800) a session
// number; with neither it is a handle number. The number n (1..7 for handles and sessions, 1..15
// for parameters) sits in bits 8..11.
const RC_P = 0x040;
const RC_S = 0x800;

function fmt1(rc: number, what: string): void {
  if ((rc & TPM_RC.FMT1) === 0 || (rc & ~0x3f & ~TPM_RC.FMT1) !== 0) throw new RangeError(`${what}: 0x${rc.toString(16)} is not a bare format-one code`);
}

/** A format-one code about handle n (1-based), e.g. rcForHandle(TPM_RC.HANDLE, 1) = 0x18b. */
export function rcForHandle(rc: number, n: number): number {
  fmt1(rc, 'rcForHandle');
  if (!Number.isInteger(n) || n < 1 || n > 7) throw new RangeError(`handle number ${n} not in 1..7`);
  return rc | (n << 8);
}

/** A format-one code about parameter n (1-based), e.g. rcForParameter(TPM_RC.SIZE, 1) = 0x1d5. */
export function rcForParameter(rc: number, n: number): number {
  fmt1(rc, 'rcForParameter');
  if (!Number.isInteger(n) || n < 1 || n > 15) throw new RangeError(`parameter number ${n} not in 1..15`);
  return rc | RC_P | (n << 8);
}

/** A format-one code about session n (1-based), e.g. rcForSession(TPM_RC.AUTH_FAIL, 1) = 0x98e. */
export function rcForSession(rc: number, n: number): number {
  fmt1(rc, 'rcForSession');
  if (!Number.isInteger(n) || n < 1 || n > 7) throw new RangeError(`session number ${n} not in 1..7`);
  return rc | RC_S | (n << 8);
}

/** Splits a response code into its base code and what it refers to. */
export function decodeRc(rc: number): { base: number; handle?: number; parameter?: number; session?: number } {
  if ((rc & TPM_RC.FMT1) === 0) return { base: rc };
  const base = rc & 0xbf;
  if (rc & RC_P) return { base, parameter: (rc >> 8) & 0xf };
  const n = (rc >> 8) & 0x7;
  if (n === 0) return { base };
  return rc & RC_S ? { base, session: n } : { base, handle: n };
}
