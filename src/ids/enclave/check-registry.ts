/**
 * The enclave's view of the check registry (src/ids/checks/index.ts): every check's settings are
 * validated here from the measured configuration, and one instance per check lives for the whole
 * session, because some checks remember what earlier scans saw (privesc keeps uids, the allowlist
 * alerts once per process). Settings come only from the measured configuration: a host that could
 * pass its own (a zero-length syscall table, a wider allowlist) would blind the IDS.
 */
import { z } from 'zod';
import type { MemorySource } from '../../formats/protocol/ids-read.ts';
import { CHECK_NAMES, createCheck, isCheckName, type Check, type CheckName, type CheckSettings } from '../checks/index.ts';
import type { PsRow } from '../checks/pslist.ts';
import { pslistCheck } from '../checks/pslist.ts';
import { KernelView } from '../kernel/kernel-view.ts';
import type { IsfLike } from '../kernel/type-model.ts';

export class CheckError extends Error {
  override name = 'CheckError';
}

const noSettings = z.strictObject({});

/** Settings per check, as the measured configuration holds them. */
const SETTINGS = {
  pslist: noSettings,
  allowlist: z.strictObject({
    comms: z.array(z.string().min(1).max(15)).max(10_000),
    exes: z.array(z.string().min(1).max(4096)).max(10_000).optional(),
  }),
  'hidden-process': noSettings,
  modules: noSettings,
  // The x86-64 table has a few hundred entries; an upper bound keeps a bad config from asking for megabytes.
  'syscall-hooks': z.strictObject({ entries: z.number().int().min(1).max(4096).optional() }),
  privesc: noSettings,
  'ima-log': noSettings,
} as const satisfies Record<CheckName, z.ZodType>;

/** Validated settings of the enabled checks, in configuration order. */
export type EnabledChecks = ReadonlyMap<CheckName, CheckSettings>;

/** Validates the configuration's `checks`; any unknown name or bad setting is a CheckError naming it. */
export function parseEnabledChecks(checks: Record<string, unknown>): EnabledChecks {
  const enabled = new Map<CheckName, CheckSettings>();
  for (const [name, value] of Object.entries(checks)) {
    if (!isCheckName(name)) throw new CheckError(`unknown check: ${name} (known: ${CHECK_NAMES.join(', ')})`);
    const parsed = SETTINGS[name].safeParse(value);
    if (!parsed.success) throw new CheckError(`settings of check ${name}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
    enabled.set(name, { [name]: parsed.data } as CheckSettings);
  }
  return enabled;
}

export interface CheckContext {
  kernel: KernelView;
  instances: Map<CheckName, Check>;
}

export async function openCheckContext(source: MemorySource, profile: IsfLike): Promise<CheckContext> {
  return { kernel: await KernelView.open(source, profile), instances: new Map() };
}

export interface CheckRun {
  name: string;
  alerts: unknown[];
  summary?: unknown;
}

/** Scans with the session's instance of an enabled check (made on its first run). */
export async function runCheck(name: string, ctx: CheckContext, enabled: EnabledChecks): Promise<CheckRun> {
  if (!isCheckName(name)) throw new CheckError(`unknown check: ${name}`);
  const settings = enabled.get(name);
  if (settings === undefined) throw new CheckError(`check ${name} is not enabled in the measured configuration`);
  let check = ctx.instances.get(name);
  if (!check) {
    check = createCheck(name, settings);
    ctx.instances.set(name, check);
  }
  const result = await check.scan(ctx.kernel);
  return result.data === undefined ? { name, alerts: result.alerts } : { name, alerts: result.alerts, summary: result.data };
}

/** The process list, whether or not pslist is among the enabled checks: it shows, it never alerts. */
export async function processList(ctx: CheckContext): Promise<PsRow[]> {
  return (await pslistCheck().scan(ctx.kernel)).data ?? [];
}
