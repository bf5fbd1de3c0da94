/**
 * The enclave loader: bundles the enclave program, measures bundle + static configuration (like
 * MRENCLAVE, see measurement.ts) and starts it in the sandbox. The enclave measures itself again from
 * the file it runs and the configuration it is given, and puts that value in its registration; the
 * loader's value is what a tenant puts in the launch policy and the authority approves.
 */
import { enclaveConfigSchema, type EnclaveConfig } from '../../formats/protocol/enclave-call.ts';
import { bundleProgram, type Bundle } from './bundle.ts';
import { parseEnabledChecks } from './check-registry.ts';
import { enclaveMeasurement } from './measurement.ts';
import { spawnSandboxed, type SandboxedProcess } from './sandbox.ts';

export interface LoaderOptions {
  /** vmseal's cache root (default $VMSEAL_CACHE or ~/.cache/vmseal). */
  cacheDir?: string;
  /** The program to bundle instead of the enclave (tests run probes in the same sandbox). */
  entry?: string;
  insecureNoNetns?: boolean;
}

export interface LoadedEnclave {
  child: SandboxedProcess;
  bundle: Bundle;
  measurement: string;
  /** Whether the process runs in its own network namespace. */
  netns: boolean;
}

/** Checks a configuration against the schema and each check's settings (the caller's file is hostile input too). */
export function parseEnclaveConfig(value: unknown): EnclaveConfig {
  const parsed = enclaveConfigSchema.safeParse(value);
  if (!parsed.success) throw new Error(`enclave configuration: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  // The enclave checks the settings again at init; checking here refuses a bad file before it is measured.
  parseEnabledChecks(parsed.data.checks);
  return parsed.data;
}

export async function measureEnclave(config: EnclaveConfig, opts: LoaderOptions = {}): Promise<string> {
  const bundle = await bundleProgram(opts);
  return enclaveMeasurement(bundle.bytes, parseEnclaveConfig(config));
}

export async function loadEnclave(config: EnclaveConfig, opts: LoaderOptions = {}): Promise<LoadedEnclave> {
  const checked = parseEnclaveConfig(config);
  const bundle = await bundleProgram(opts);
  const { child, netns } = spawnSandboxed(bundle.path, opts);
  return { child, bundle, measurement: enclaveMeasurement(bundle.bytes, checked), netns };
}
