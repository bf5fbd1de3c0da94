/**
 * One-time host enrollment tokens. The operator issues a token for one host id out of band
 * (`vmseal authority enroll-host`); the host presents it once to have its HPKE key certified. The
 * authority keeps only the token's SHA-256 (the token is 256 random bits, so no salt or slow hash is
 * needed) as the name of a small record file.
 *
 * Redeeming moves the record from pending/ to used/ with one rename: of two concurrent redemptions,
 * even in two processes, exactly one rename succeeds. Records are immutable while pending, so what
 * was checked before the rename is what was claimed. Issuing a new token for a host revokes its older
 * pending ones.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import type { AuthorityPaths } from './authority-dir.ts';
import { HOST_ID_PATTERN } from './ca.ts';
import { createPrivateFile, renameDurable, writePrivateFileAtomic } from '../util/durable-file.ts';

/** 32 random bytes, base64url without padding. */
export const ENROLLMENT_TOKEN_PATTERN = /^[A-Za-z0-9_-]{43}$/;
export const DEFAULT_ENROLLMENT_TTL_MS = 24 * 3_600_000;
export const MAX_ENROLLMENT_TTL_MS = 30 * 24 * 3_600_000;
const MIN_ENROLLMENT_TTL_MS = 1_000;

const RECORD_FILE = /^[0-9a-f]{64}\.json$/;

const tokenRecordSchema = z.strictObject({
  version: z.literal(1),
  hostId: z.string().regex(HOST_ID_PATTERN),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  usedAt: z.iso.datetime().optional(),
  certificateSerial: z.string().regex(/^[0-9a-f]{1,40}$/).optional(),
});
type TokenRecord = z.infer<typeof tokenRecordSchema>;

export type EnrollmentRefusalCode = 'TOKEN_UNKNOWN' | 'TOKEN_USED' | 'TOKEN_EXPIRED' | 'TOKEN_HOST_MISMATCH';

/** A token the authority will not honour; nothing was consumed unless the code is TOKEN_EXPIRED. */
export class EnrollmentRefusal extends Error {
  readonly code: EnrollmentRefusalCode;
  constructor(code: EnrollmentRefusalCode, message: string) {
    super(message);
    this.name = 'EnrollmentRefusal';
    this.code = code;
  }
}

export interface IssuedEnrollmentToken {
  token: string;
  hostId: string;
  expiresAt: Date;
}

/** A redeemed token: finish() records the issued certificate, release() hands the token back. */
export interface EnrollmentClaim {
  hostId: string;
  finish(certificateSerial: string, now: Date): Promise<void>;
  release(): Promise<void>;
}

function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

async function readRecord(path: string): Promise<TokenRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = tokenRecordSchema.safeParse(json);
  if (!parsed.success) throw new Error(`corrupt enrollment record ${path}`);
  return parsed.data;
}

function serialize(record: TokenRecord): string {
  return `${JSON.stringify(record, null, 2)}\n`;
}

export async function createEnrollmentToken(
  paths: AuthorityPaths,
  hostId: string,
  opts: { ttlMs?: number; now?: Date } = {},
): Promise<IssuedEnrollmentToken> {
  if (typeof hostId !== 'string' || !HOST_ID_PATTERN.test(hostId)) throw new Error(`host id must match ${HOST_ID_PATTERN}`);
  const ttlMs = opts.ttlMs ?? DEFAULT_ENROLLMENT_TTL_MS;
  if (!Number.isInteger(ttlMs) || ttlMs < MIN_ENROLLMENT_TTL_MS || ttlMs > MAX_ENROLLMENT_TTL_MS) {
    throw new Error(`token lifetime must be between 1 second and ${MAX_ENROLLMENT_TTL_MS / 86_400_000} days`);
  }
  const now = opts.now ?? new Date();
  for (const name of await readdir(paths.pendingTokens)) {
    if (!RECORD_FILE.test(name)) continue;
    const path = join(paths.pendingTokens, name);
    if ((await readRecord(path))?.hostId === hostId) await rm(path, { force: true });
  }
  const token = randomBytes(32).toString('base64url');
  const expiresAt = new Date(now.getTime() + ttlMs);
  const record: TokenRecord = { version: 1, hostId, createdAt: now.toISOString(), expiresAt: expiresAt.toISOString() };
  await createPrivateFile(join(paths.pendingTokens, `${tokenHash(token)}.json`), serialize(record));
  return { token, hostId, expiresAt };
}

/** Checks `token` for `hostId` and consumes it; throws EnrollmentRefusal when it cannot be honoured. */
export async function claimEnrollmentToken(paths: AuthorityPaths, token: string, hostId: string, now: Date): Promise<EnrollmentClaim> {
  if (typeof token !== 'string' || !ENROLLMENT_TOKEN_PATTERN.test(token)) {
    throw new EnrollmentRefusal('TOKEN_UNKNOWN', 'enrollment token is malformed');
  }
  const name = `${tokenHash(token)}.json`;
  const pending = join(paths.pendingTokens, name);
  const used = join(paths.usedTokens, name);
  const alreadyUsed = async (): Promise<boolean> => (await stat(used).catch(() => undefined)) !== undefined;

  const record = await readRecord(pending);
  if (!record) {
    if (await alreadyUsed()) throw new EnrollmentRefusal('TOKEN_USED', 'enrollment token has already been used');
    throw new EnrollmentRefusal('TOKEN_UNKNOWN', 'enrollment token is unknown or was revoked');
  }
  if (record.hostId !== hostId) {
    throw new EnrollmentRefusal('TOKEN_HOST_MISMATCH', `enrollment token was issued for another host, not ${JSON.stringify(hostId)}`);
  }
  if (now.getTime() >= Date.parse(record.expiresAt)) {
    await rm(pending, { force: true });
    throw new EnrollmentRefusal('TOKEN_EXPIRED', `enrollment token expired at ${record.expiresAt}`);
  }
  try {
    await renameDurable(pending, used);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new EnrollmentRefusal('TOKEN_USED', 'enrollment token has already been used');
    throw err;
  }
  return {
    hostId,
    finish: async (certificateSerial, when) => {
      await writePrivateFileAtomic(used, serialize({ ...record, usedAt: when.toISOString(), certificateSerial }));
    },
    release: async () => {
      await renameDurable(used, pending);
    },
  };
}
