/**
 * `vmseal ids config | measure | run | pslist`: the IDS enclave from the host's side. The enclave's
 * static configuration is a JSON file (config → measure → the tenant's launch policy and
 * `vmseal authority ids approve`); run and pslist start the enclave with it through the host library.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { checkNameField, type EnclaveConfig } from '../../formats/protocol/enclave-call.ts';
import { measureEnclave, parseEnclaveConfig } from '../../ids/enclave/loader.ts';
import { fetchEnclaveConfig } from '../../ids/host/enclave-config.ts';
import { startIdsSession, type IdsSession } from '../../ids/host/sgmonitor.ts';
import { untilStopSignal } from '../until-signal.ts';

const MAX_PROFILE_BYTES = 15 << 20;

function authorityUrl(text: string): URL {
  const url = new URL(text);
  if (url.protocol !== 'http:') throw new Error('the IDS host library speaks plain http to the authority (its messages are sealed or signed)');
  return url;
}

async function readConfig(path: string): Promise<EnclaveConfig> {
  return parseEnclaveConfig(JSON.parse(await readFile(path, 'utf8')));
}

async function readProfile(path: string, config: EnclaveConfig): Promise<string> {
  const text = await readFile(path, 'utf8');
  if (text.length > MAX_PROFILE_BYTES) throw new Error(`${path} is over ${MAX_PROFILE_BYTES} bytes`);
  const hash = createHash('sha256').update(text, 'utf8').digest('hex');
  if (hash !== config.profileSha256) throw new Error(`${path} hashes to ${hash}, but the enclave configuration names ${config.profileSha256}`);
  return text;
}

interface SessionOpts {
  vm: string;
  monitor: string;
  authority: string;
  config: string;
  profile: string;
  insecureNoNetns?: boolean;
}

function sessionOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--vm <vmId>', 'the VM id (32 hex digits)')
    .requiredOption('--monitor <socket>', "the monitor's API socket")
    .requiredOption('--authority <url>', 'the authority URL')
    .requiredOption('--config <file>', 'the enclave configuration (vmseal ids config)')
    .requiredOption('--profile <file>', 'the kernel profile (vmseal ids profile)')
    .option('--insecure-no-netns', 'run the enclave even if it cannot get its own network namespace');
}

async function openSession(opts: SessionOpts): Promise<IdsSession> {
  const config = await readConfig(opts.config);
  return startIdsSession({
    vmId: opts.vm,
    monitorSocket: opts.monitor,
    authorityUrl: authorityUrl(opts.authority),
    config,
    profile: await readProfile(opts.profile, config),
    insecureNoNetns: opts.insecureNoNetns === true,
    onStderr: (line) => process.stderr.write(`enclave: ${line}\n`),
    onHeartbeatError: (err) => process.stderr.write(`heartbeat: ${err.message}\n`),
  });
}

function parseChecks(text: string): string[] {
  return text.split(',').map((name) => checkNameField.parse(name.trim()));
}

export function registerIdsEnclaveCommands(ids: Command): void {
  ids
    .command('config')
    .description("write an enclave configuration: the authority's CA and IDS key, the profile's hash, the checks")
    .requiredOption('--authority <url>', 'the authority URL (its CA certificate must match --ca-fingerprint)')
    .requiredOption('--ca-fingerprint <fp>', "the authority CA's SHA-256 fingerprint, as `vmseal authority init` printed it")
    .requiredOption('--profile <file>', 'the kernel profile')
    .option('--checks <list>', 'comma-separated checks', 'pslist')
    .option('--allow <comms>', 'comma-separated allowed process names (enables the allowlist check)')
    .option('--allow-exe <paths>', 'comma-separated allowed executable paths (with --allow: a process must match both)')
    .requiredOption('--out <file>', 'where to write the configuration')
    .action(async (opts: { authority: string; caFingerprint: string; profile: string; checks: string; allow?: string; allowExe?: string; out: string }) => {
      const checks: Record<string, Record<string, unknown>> = {};
      for (const name of parseChecks(opts.checks)) checks[name] = {};
      const list = (text: string) => text.split(',').map((c) => c.trim()).filter((c) => c.length > 0);
      if (opts.allowExe !== undefined && opts.allow === undefined) throw new Error('--allow-exe needs --allow');
      if (opts.allow !== undefined) checks.allowlist = { comms: list(opts.allow), ...(opts.allowExe !== undefined ? { exes: list(opts.allowExe) } : {}) };
      const config = await fetchEnclaveConfig({
        authorityUrl: authorityUrl(opts.authority),
        caFingerprint: opts.caFingerprint,
        profileText: await readFile(opts.profile, 'utf8'),
        checks,
      });
      await writeFile(opts.out, `${JSON.stringify(config, null, 2)}\n`);
      process.stdout.write(`${await measureEnclave(config)}\n`);
    });

  ids
    .command('measure')
    .description('print the enclave measurement (SHA-256 of the bundled enclave and its configuration)')
    .requiredOption('--config <file>', 'the enclave configuration')
    .action(async (opts: { config: string }) => {
      process.stdout.write(`${await measureEnclave(await readConfig(opts.config))}\n`);
    });

  sessionOptions(ids.command('pslist').description('list the guest processes through the sealed channel'))
    .option('--json', 'print JSON')
    .action(async (opts: SessionOpts & { json?: boolean }) => {
      const session = await openSession(opts);
      try {
        const rows = (await session.enclave.pslist()) as Array<Record<string, unknown>>;
        if (opts.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
        else for (const r of rows) process.stdout.write(`${String(r.pid).padStart(6)} ${String(r.ppid).padStart(6)} ${String(r.uid).padStart(5)} ${String(r.state)} ${String(r.threads).padStart(3)} ${String(r.comm)}\n`);
      } finally {
        await session.close();
      }
    });

  sessionOptions(ids.command('run').description('run the enabled checks every interval and stream their alerts'))
    .option('--checks <list>', 'comma-separated checks (default: every check the configuration enables)')
    .option('--interval <seconds>', 'seconds between scans', '5')
    .option('--json', 'one JSON alert per line')
    .action(async (opts: SessionOpts & { checks?: string; interval: string; json?: boolean }) => {
      const seconds = Number(opts.interval);
      if (!Number.isFinite(seconds) || seconds < 0.1 || seconds > 86_400) throw new Error('--interval must be 0.1 .. 86400 seconds');
      const config = await readConfig(opts.config);
      const names = opts.checks ? parseChecks(opts.checks) : Object.keys(config.checks);
      const session = await openSession(opts);
      process.stderr.write(`IDS session ${session.sessionId}, measurement ${session.measurement}\n`);
      let stop = false;
      void untilStopSignal().then(() => (stop = true));
      try {
        while (!stop) {
          for (const name of names) {
            const result = await session.enclave.runCheck(name);
            for (const alert of result.alerts) {
              const a = alert as { kind?: unknown; message?: unknown };
              process.stdout.write(opts.json ? `${JSON.stringify({ at: new Date().toISOString(), ...(alert as object) })}\n` : `${new Date().toISOString()}  ${name}  ${String(a.kind)}  ${String(a.message)}\n`);
            }
          }
          await new Promise((r) => setTimeout(r, seconds * 1000));
        }
      } finally {
        await session.close();
      }
    });
}
