// TPM 2.0 command codes (Part 2 TPM_CC) with the size of each command's handle area and of its
// response's handle area (Part 3, the "Command" and "Response" tables of every command). The handle
// counts are what locate the authorization area: it follows the handle area. Commands not listed
// (newer than TPM 2.0 Library 1.83, or vendor commands other than vmseal's own in VENDOR_TABLE) are
// answered TPM_RC_COMMAND_CODE.

export interface CommandInfo {
  readonly name: string;
  readonly code: number;
  /** Handles in the command's handle area. */
  readonly handles: number;
  /** Handles in the response's handle area. */
  readonly responseHandles: number;
}

// [name, code, command handles, response handles]
const TABLE: ReadonlyArray<readonly [string, number, number, number]> = [
  ['NV_UndefineSpaceSpecial', 0x11f, 2, 0],
  ['EvictControl', 0x120, 2, 0],
  ['HierarchyControl', 0x121, 1, 0],
  ['NV_UndefineSpace', 0x122, 2, 0],
  ['ChangeEPS', 0x124, 1, 0],
  ['ChangePPS', 0x125, 1, 0],
  ['Clear', 0x126, 1, 0],
  ['ClearControl', 0x127, 1, 0],
  ['ClockSet', 0x128, 1, 0],
  ['HierarchyChangeAuth', 0x129, 1, 0],
  ['NV_DefineSpace', 0x12a, 1, 0],
  ['PCR_Allocate', 0x12b, 1, 0],
  ['PCR_SetAuthPolicy', 0x12c, 1, 0],
  ['PP_Commands', 0x12d, 1, 0],
  ['SetPrimaryPolicy', 0x12e, 1, 0],
  ['FieldUpgradeStart', 0x12f, 2, 0],
  ['ClockRateAdjust', 0x130, 1, 0],
  ['CreatePrimary', 0x131, 1, 1],
  ['NV_GlobalWriteLock', 0x132, 1, 0],
  ['GetCommandAuditDigest', 0x133, 2, 0],
  ['NV_Increment', 0x134, 2, 0],
  ['NV_SetBits', 0x135, 2, 0],
  ['NV_Extend', 0x136, 2, 0],
  ['NV_Write', 0x137, 2, 0],
  ['NV_WriteLock', 0x138, 2, 0],
  ['DictionaryAttackLockReset', 0x139, 1, 0],
  ['DictionaryAttackParameters', 0x13a, 1, 0],
  ['NV_ChangeAuth', 0x13b, 1, 0],
  ['PCR_Event', 0x13c, 1, 0],
  ['PCR_Reset', 0x13d, 1, 0],
  ['SequenceComplete', 0x13e, 1, 0],
  ['SetAlgorithmSet', 0x13f, 1, 0],
  ['SetCommandCodeAuditStatus', 0x140, 1, 0],
  ['FieldUpgradeData', 0x141, 0, 0],
  ['IncrementalSelfTest', 0x142, 0, 0],
  ['SelfTest', 0x143, 0, 0],
  ['Startup', 0x144, 0, 0],
  ['Shutdown', 0x145, 0, 0],
  ['StirRandom', 0x146, 0, 0],
  ['ActivateCredential', 0x147, 2, 0],
  ['Certify', 0x148, 2, 0],
  ['PolicyNV', 0x149, 3, 0],
  ['CertifyCreation', 0x14a, 2, 0],
  ['Duplicate', 0x14b, 2, 0],
  ['GetTime', 0x14c, 2, 0],
  ['GetSessionAuditDigest', 0x14d, 3, 0],
  ['NV_Read', 0x14e, 2, 0],
  ['NV_ReadLock', 0x14f, 2, 0],
  ['ObjectChangeAuth', 0x150, 2, 0],
  ['PolicySecret', 0x151, 2, 0],
  ['Rewrap', 0x152, 2, 0],
  ['Create', 0x153, 1, 0],
  ['ECDH_ZGen', 0x154, 1, 0],
  ['HMAC', 0x155, 1, 0],
  ['Import', 0x156, 1, 0],
  ['Load', 0x157, 1, 1],
  ['Quote', 0x158, 1, 0],
  ['RSA_Decrypt', 0x159, 1, 0],
  ['HMAC_Start', 0x15b, 1, 1],
  ['SequenceUpdate', 0x15c, 1, 0],
  ['Sign', 0x15d, 1, 0],
  ['Unseal', 0x15e, 1, 0],
  ['PolicySigned', 0x160, 2, 0],
  ['ContextLoad', 0x161, 0, 1],
  ['ContextSave', 0x162, 1, 0],
  ['ECDH_KeyGen', 0x163, 1, 0],
  ['EncryptDecrypt', 0x164, 1, 0],
  // flushHandle is a parameter, not a handle: FlushContext has no handle area.
  ['FlushContext', 0x165, 0, 0],
  ['LoadExternal', 0x167, 0, 1],
  ['MakeCredential', 0x168, 1, 0],
  ['NV_ReadPublic', 0x169, 1, 0],
  ['PolicyAuthorize', 0x16a, 1, 0],
  ['PolicyAuthValue', 0x16b, 1, 0],
  ['PolicyCommandCode', 0x16c, 1, 0],
  ['PolicyCounterTimer', 0x16d, 1, 0],
  ['PolicyCpHash', 0x16e, 1, 0],
  ['PolicyLocality', 0x16f, 1, 0],
  ['PolicyNameHash', 0x170, 1, 0],
  ['PolicyOR', 0x171, 1, 0],
  ['PolicyTicket', 0x172, 1, 0],
  ['ReadPublic', 0x173, 1, 0],
  ['RSA_Encrypt', 0x174, 1, 0],
  ['StartAuthSession', 0x176, 2, 1],
  ['VerifySignature', 0x177, 1, 0],
  ['ECC_Parameters', 0x178, 0, 0],
  ['FirmwareRead', 0x179, 0, 0],
  ['GetCapability', 0x17a, 0, 0],
  ['GetRandom', 0x17b, 0, 0],
  ['GetTestResult', 0x17c, 0, 0],
  ['Hash', 0x17d, 0, 0],
  ['PCR_Read', 0x17e, 0, 0],
  ['PolicyPCR', 0x17f, 1, 0],
  ['PolicyRestart', 0x180, 1, 0],
  ['ReadClock', 0x181, 0, 0],
  ['PCR_Extend', 0x182, 1, 0],
  ['PCR_SetAuthValue', 0x183, 1, 0],
  ['NV_Certify', 0x184, 3, 0],
  ['EventSequenceComplete', 0x185, 2, 0],
  ['HashSequenceStart', 0x186, 0, 1],
  ['PolicyPhysicalPresence', 0x187, 1, 0],
  ['PolicyDuplicationSelect', 0x188, 1, 0],
  ['PolicyGetDigest', 0x189, 1, 0],
  ['TestParms', 0x18a, 0, 0],
  ['Commit', 0x18b, 1, 0],
  ['PolicyPassword', 0x18c, 1, 0],
  ['ZGen_2Phase', 0x18d, 1, 0],
  ['EC_Ephemeral', 0x18e, 0, 0],
  ['PolicyNvWritten', 0x18f, 1, 0],
  ['PolicyTemplate', 0x190, 1, 0],
  ['CreateLoaded', 0x191, 1, 1],
  ['PolicyAuthorizeNV', 0x192, 3, 0],
  ['EncryptDecrypt2', 0x193, 1, 0],
  ['AC_GetCapability', 0x194, 1, 0],
  ['AC_Send', 0x195, 3, 0],
  ['Policy_AC_SendSelect', 0x196, 1, 0],
  ['CertifyX509', 0x197, 2, 0],
  ['ACT_SetTimeout', 0x198, 1, 0],
  ['ECC_Encrypt', 0x199, 1, 0],
  ['ECC_Decrypt', 0x19a, 1, 0],
  ['PolicyCapability', 0x19b, 1, 0],
  ['PolicyParameters', 0x19c, 1, 0],
  ['NV_DefineSpace2', 0x19d, 1, 0],
  ['NV_ReadPublic2', 0x19e, 1, 0],
  ['SetCapability', 0x19f, 1, 0],
  ['ReadOnlyControl', 0x1a0, 1, 0],
  ['PolicyTransportSPDM', 0x1a1, 1, 0],
];

/**
 * vmseal's vendor commands (TPMA_CC V bit, 0x20000000): a guest asks its monitor to share or revoke one of
 * its NV indices (vmseal-vendor.ts). No TPM runs them; the monitor's proxy answers them itself.
 */
const VENDOR_TABLE: ReadonlyArray<readonly [string, number, number, number]> = [
  ['Vmseal_NV_Share', 0x20005601, 1, 0],
  ['Vmseal_NV_Revoke', 0x20005602, 1, 0],
];

const entries = (t: typeof TABLE) => t.map(([name, code, handles, responseHandles]): [number, CommandInfo] => [code, Object.freeze({ name, code, handles, responseHandles })]);
const BY_CODE: ReadonlyMap<number, CommandInfo> = new Map(entries(TABLE));
const VENDOR_BY_CODE: ReadonlyMap<number, CommandInfo> = new Map(entries(VENDOR_TABLE));

/** The command's table entry, or undefined for a code this TPM model does not know. */
export function commandInfo(code: number): CommandInfo | undefined {
  return BY_CODE.get(code) ?? VENDOR_BY_CODE.get(code);
}

/** TPMA_CC.V: the command code is a vendor's, not the TCG's. */
export const TPM_CC_VENDOR_BIT = 0x20000000;

/** The TCG commands of the table (vendor commands excluded). */
export function allCommands(): CommandInfo[] {
  return [...BY_CODE.values()];
}

/** TPM_CC values by name, for code that sends or matches specific commands. */
export const TPM_CC = {
  NV_UndefineSpaceSpecial: 0x11f,
  EvictControl: 0x120,
  HierarchyControl: 0x121,
  NV_UndefineSpace: 0x122,
  Clear: 0x126,
  HierarchyChangeAuth: 0x129,
  NV_DefineSpace: 0x12a,
  CreatePrimary: 0x131,
  NV_GlobalWriteLock: 0x132,
  NV_Increment: 0x134,
  NV_SetBits: 0x135,
  NV_Extend: 0x136,
  NV_Write: 0x137,
  NV_WriteLock: 0x138,
  NV_ChangeAuth: 0x13b,
  PCR_Event: 0x13c,
  PCR_Reset: 0x13d,
  Startup: 0x144,
  Shutdown: 0x145,
  Certify: 0x148,
  PolicyNV: 0x149,
  NV_Read: 0x14e,
  NV_ReadLock: 0x14f,
  Create: 0x153,
  Load: 0x157,
  Quote: 0x158,
  Sign: 0x15d,
  ContextLoad: 0x161,
  ContextSave: 0x162,
  FlushContext: 0x165,
  LoadExternal: 0x167,
  NV_ReadPublic: 0x169,
  ReadPublic: 0x173,
  StartAuthSession: 0x176,
  GetCapability: 0x17a,
  GetRandom: 0x17b,
  PCR_Read: 0x17e,
  PCR_Extend: 0x182,
  NV_Certify: 0x184,
  CreateLoaded: 0x191,
  PolicyAuthorizeNV: 0x192,
  NV_DefineSpace2: 0x19d,
  NV_ReadPublic2: 0x19e,
  Vmseal_NV_Share: 0x20005601,
  Vmseal_NV_Revoke: 0x20005602,
} as const;
