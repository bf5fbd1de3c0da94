/**
 * The checks the enclave can run, by name, each built from its settings in the measured configuration.
 * An unknown name or bad settings is an error result for that ECALL, never a crash of the enclave.
 * Check instances are kept per session because some remember what they saw (privilege escalation).
 */
import { z } from 'zod';
import type { MemorySource } from '../../formats/protocol/ids-read.ts';
import { allowlistCheck } from '../checks/allowlist.ts';
import type { Check, ScanResult } from '../checks/check.ts';
import { pslistCheck } from '../checks/pslist.ts';
import { KernelView } from '../kernel/kernel-view.ts';
import type { IsfLike } from '../kernel/type-model.ts';

export class CheckError extends Error {
  override name = 'CheckError';
}

type Factory = (settings: Record<string, unknown>) => Check;

const noSettings = z.strictObject({});
const allowlistSettings = z.strictObject({
  comms: z.array(z.string().min(1).max(15)).max(10_000),
  exes: z.array(z.string().min(1).max(4096)).max(10_000).optional(),
});

function settingsOf<S extends z.ZodType>(name: string, schema: S, value: unknown): z.output<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new CheckError(`settings of check ${name}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return parsed.data;
}

const FACTORIES: Readonly<Record<string, Factory>> = {
  pslist: (s) => (settingsOf('pslist', noSettings, s), pslistCheck()),
  allowlist: (s) => allowlistCheck(settingsOf('allowlist', allowlistSettings, s)),
};

export function checkKnown(name: string): boolean {
  return Object.hasOwn(FACTORIES, name);
}

export interface CheckContext {
  kernel: KernelView;
  instances: Map<string, Check>;
}

export async function openCheckContext(source: MemorySource, profile: unknown): Promise<CheckContext> {
  return { kernel: await KernelView.open(source, profile as IsfLike), instances: new Map() };
}

function instance(ctx: CheckContext, name: string, settings: Record<string, unknown>): Check {
  const existing = ctx.instances.get(name);
  if (existing) return existing;
  const factory = FACTORIES[name];
  if (!factory) throw new CheckError(`no check named ${name}`);
  const made = factory(settings);
  ctx.instances.set(name, made);
  return made;
}

export async function runCheck(name: string, ctx: CheckContext, settings: Record<string, unknown>): Promise<{ name: string; alerts: unknown[]; summary?: unknown }> {
  const result: ScanResult = await instance(ctx, name, settings).scan(ctx.kernel);
  return result.data === undefined ? { name, alerts: result.alerts } : { name, alerts: result.alerts, summary: result.data };
}

export async function processList(ctx: CheckContext): Promise<unknown[]> {
  const result = await pslistCheck().scan(ctx.kernel);
  return result.data ?? [];
}
