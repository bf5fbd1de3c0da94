/**
 * The tenant's local state: one versioned JSON document, `tenant.json` (0600) in a 0700 directory,
 * validated with zod on every load and before every write, replaced atomically.
 *
 * It holds the authority's CA certificate pinned at `vmseal tenant init`: the root every host
 * certificate must chain to before the client seals anything to a host key. A certificate that
 * arrives through the management plane goes through verifyHostForTenant, never around it.
 *
 * Read-modify-write goes through updateTenantState, which holds `tenant.lock` (O_EXCL, with the
 * holder's pid) so two vmseal commands on one tenant cannot lose each other's updates (VM command
 * counters live here). A lock whose holder has died is broken; the state file itself is never torn.
 */
import { X509Certificate } from 'node:crypto';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { HOST_ID_PATTERN } from '../formats/protocol/host-certificate.ts';
import { caFingerprint } from './ca-fingerprint.ts';
import { verifyHostCertificate, type VerifiedHostCertificate } from './host-cert.ts';
import { ensurePrivateDir, writePrivateFileAtomic } from '../util/durable-file.ts';

export const TENANT_STATE_FILE = 'tenant.json';
export const TENANT_LOCK_FILE = 'tenant.lock';
export const TENANT_STATE_VERSION = 1;
const LOCK_WAIT_MS = 10_000;
const MAX_STATE_BYTES = 16 * 1024 * 1024;

/** Names the tenant gives its VMs: same alphabet as host ids. */
export const VM_NAME_PATTERN = HOST_ID_PATTERN;

const isoTime = z.iso.datetime();

const vmRecordSchema = z.strictObject({
  /** The 128-bit VM id the monitor proved at launch, lower-case hex. */
  vmId: z.string().regex(/^[0-9a-f]{32}$/),
  hostId: z.string().regex(HOST_ID_PATTERN),
  launchedAt: isoTime,
  /** The last sealed-command counter used; the next command uses a larger one. */
  commandCounter: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** Where the VM's management plane listens; sealed commands go through it. */
  mgmtUrl: z.url({ protocol: /^https?$/ }),
  /** The image's name in the management plane's storage (for a relaunch). */
  image: z.string().max(64),
  /**
   * The VM's command and console keys (base64 of 32 bytes), derived from the volume key at launch.
   * The volume key itself is not kept: these keys can manage the VM but not read its disk.
   */
  commandKey: z.base64().length(44),
  consoleKey: z.base64().length(44),
});

const tenantStateSchema = z
  .strictObject({
    version: z.literal(TENANT_STATE_VERSION),
    authority: z.strictObject({
      url: z.url({ protocol: /^https?$/ }),
      caCertificatePem: z.string().min(1).max(16_384),
      caFingerprint: z.string().regex(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/),
      pinnedAt: isoTime,
    }),
    vms: z.record(z.string().regex(VM_NAME_PATTERN), vmRecordSchema),
  })
  .superRefine((state, ctx) => {
    let actual: string | undefined;
    try {
      actual = caFingerprint(state.authority.caCertificatePem);
    } catch {
      actual = undefined;
    }
    if (actual !== state.authority.caFingerprint) {
      ctx.addIssue({ code: 'custom', path: ['authority', 'caFingerprint'], message: 'does not match the pinned CA certificate' });
    }
  });

export type TenantState = z.infer<typeof tenantStateSchema>;
export type TenantVmRecord = z.infer<typeof vmRecordSchema>;

export type TenantStateErrorCode = 'NO_STATE' | 'EXISTS' | 'CORRUPT' | 'INSECURE' | 'LOCKED' | 'BAD_CA';

export class TenantStateError extends Error {
  readonly code: TenantStateErrorCode;
  constructor(code: TenantStateErrorCode, message: string) {
    super(message);
    this.name = 'TenantStateError';
    this.code = code;
  }
}

function statePath(dir: string): string {
  return join(dir, TENANT_STATE_FILE);
}

/**
 * Checks that a fetched certificate can serve as the pinned root: a self-signed, currently valid CA
 * with an Ed25519 key (the profile of src/authority/ca.ts). Host certificates are checked against it later.
 */
function checkPinnableCa(certificatePem: string, now: Date): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certificatePem);
  } catch (err) {
    throw new TenantStateError('BAD_CA', `the authority's CA certificate is unreadable: ${(err as Error).message}`);
  }
  const bad = (why: string): never => {
    throw new TenantStateError('BAD_CA', `the authority's CA certificate ${why}`);
  };
  if (!cert.ca) bad('is not a CA certificate');
  if (cert.publicKey.asymmetricKeyType !== 'ed25519') bad('does not have an Ed25519 key');
  if (!cert.checkIssued(cert) || !cert.verify(cert.publicKey)) bad('is not validly self-signed');
  if (now < new Date(cert.validFrom) || now > new Date(cert.validTo)) bad(`is outside its validity period (${cert.validFrom} .. ${cert.validTo})`);
}

function serialize(state: TenantState): string {
  return `${JSON.stringify(tenantStateSchema.parse(state), null, 2)}\n`;
}

export async function tenantStateExists(dir: string): Promise<boolean> {
  return (await stat(statePath(dir)).catch(() => undefined)) !== undefined;
}

/**
 * Starts a tenant's state by pinning the authority's CA. Refuses to replace existing state (and so an
 * existing pin) unless `force`.
 */
export async function createTenantState(
  dir: string,
  opts: { authorityUrl: string; caCertificatePem: string; force?: boolean; now?: Date },
): Promise<TenantState> {
  const now = opts.now ?? new Date();
  checkPinnableCa(opts.caCertificatePem, now);
  if (!opts.force && (await tenantStateExists(dir))) {
    throw new TenantStateError('EXISTS', `${dir} already holds tenant state with a pinned CA; use --force to replace it`);
  }
  const state: TenantState = {
    version: TENANT_STATE_VERSION,
    authority: {
      url: opts.authorityUrl,
      caCertificatePem: opts.caCertificatePem,
      caFingerprint: caFingerprint(opts.caCertificatePem),
      pinnedAt: now.toISOString(),
    },
    vms: {},
  };
  const text = serialize(state);
  await ensurePrivateDir(dir);
  await writePrivateFileAtomic(statePath(dir), text);
  return state;
}

export async function loadTenantState(dir: string): Promise<TenantState> {
  const path = statePath(dir);
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new TenantStateError('NO_STATE', `${dir} holds no tenant state; run \`vmseal tenant init --dir ${dir} --authority URL\` first`);
    throw err;
  }
  // Others must not be able to swap the pinned CA or read VM records.
  const dirMode = (await stat(dir)).mode;
  if ((st.mode & 0o077) !== 0 || (dirMode & 0o077) !== 0) {
    throw new TenantStateError('INSECURE', `${dir} or its ${TENANT_STATE_FILE} is accessible to other users; they must be 0700 and 0600`);
  }
  if (!st.isFile() || st.size > MAX_STATE_BYTES) throw new TenantStateError('CORRUPT', `${path} is not a tenant state file`);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new TenantStateError('CORRUPT', `${path} is not valid JSON: ${(err as Error).message}`);
  }
  const parsed = tenantStateSchema.safeParse(json);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new TenantStateError('CORRUPT', `${path} is not a valid tenant state: ${first ? `${first.path.join('.') || 'document'}: ${first.message}` : 'invalid'}`);
  }
  return parsed.data;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function acquireLock(dir: string): Promise<() => Promise<void>> {
  const path = join(dir, TENANT_LOCK_FILE);
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const file = await open(path, 'wx', 0o600);
      try {
        await file.writeFile(`${process.pid}\n`);
      } finally {
        await file.close();
      }
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    // A lock being written has no pid yet; only a dead holder's lock is broken.
    if (Number.isInteger(holder) && holder > 0 && !processAlive(holder)) {
      await rm(path, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new TenantStateError('LOCKED', `tenant state in ${dir} is locked by ${Number.isInteger(holder) ? `process ${holder}` : 'another process'}`);
    }
    await sleep(20);
  }
}

/**
 * Loads the state, applies `mutate` (which edits the document in place or returns a new one) and
 * writes the result atomically, all under the tenant lock. An invalid result is refused unwritten.
 */
export async function updateTenantState(dir: string, mutate: (state: TenantState) => TenantState | void | Promise<TenantState | void>): Promise<TenantState> {
  await loadTenantState(dir); // a clear NO_STATE/INSECURE error before any lock file is created
  const release = await acquireLock(dir);
  try {
    const state = await loadTenantState(dir);
    const next = (await mutate(state)) ?? state;
    const parsed = tenantStateSchema.safeParse(next);
    if (!parsed.success) throw new TenantStateError('CORRUPT', `refusing to write an invalid tenant state: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
    await writePrivateFileAtomic(statePath(dir), serialize(parsed.data));
    return parsed.data;
  } finally {
    await release();
  }
}

/**
 * Verifies a host certificate, from wherever it came (typically the untrusted management plane),
 * against the CA this tenant pinned. Throws HostCertificateError when it does not chain to the pin or
 * names another host.
 */
export async function verifyHostForTenant(tenantDir: string, certificatePem: string, expectedHostId?: string): Promise<VerifiedHostCertificate> {
  const state = await loadTenantState(tenantDir);
  return verifyHostCertificate(certificatePem, state.authority.caCertificatePem, expectedHostId === undefined ? {} : { expectedHostId });
}
