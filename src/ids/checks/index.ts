/** The checks by name. Each factory takes that check's settings; instances keep per-scan state. */
import { allowlistCheck, type AllowlistOptions } from './allowlist.ts';
import type { Check } from './check.ts';
import { hiddenProcessCheck } from './hidden-process.ts';
import { imaLogCheck } from './ima-log.ts';
import { modulesCheck } from './modules.ts';
import { privescCheck } from './privesc.ts';
import { pslistCheck } from './pslist.ts';
import { syscallHooksCheck, type SyscallHookOptions } from './syscall-hooks.ts';

export interface CheckSettings {
  allowlist?: AllowlistOptions;
  'syscall-hooks'?: SyscallHookOptions;
}

export const CHECKS = {
  pslist: () => pslistCheck(),
  allowlist: (s: CheckSettings) => {
    if (!s.allowlist) throw new Error('the allowlist check needs an allowlist');
    return allowlistCheck(s.allowlist);
  },
  'hidden-process': () => hiddenProcessCheck(),
  modules: () => modulesCheck(),
  'syscall-hooks': (s: CheckSettings) => syscallHooksCheck(s['syscall-hooks']),
  privesc: () => privescCheck(),
  'ima-log': () => imaLogCheck(),
} as const satisfies Record<string, (s: CheckSettings) => Check>;

export type CheckName = keyof typeof CHECKS;

export const CHECK_NAMES = Object.keys(CHECKS) as CheckName[];

export function isCheckName(name: string): name is CheckName {
  return Object.hasOwn(CHECKS, name);
}

export function createCheck(name: CheckName, settings: CheckSettings = {}): Check {
  return CHECKS[name](settings);
}

export type { Alert, Check, Evidence, ScanResult } from './check.ts';
