/**
 * The authority's list of approved IDS enclaves: which measurements it will sign registrations for,
 * optionally only for one VM id and/or one host id. One small JSON file per approval (like the rest of
 * the authority directory), so `vmseal authority ids approve` and `authority run` share it without
 * locks; revoking deletes the file, and the next registration sees it gone.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import type { AuthorityPaths } from './authority-dir.ts';
import { HOST_ID_PATTERN } from './ca.ts';
import { createPrivateFile } from '../util/durable-file.ts';

const MEASUREMENT = /^[0-9a-f]{64}$/;
const VM_ID = /^[0-9a-f]{32}$/;
const APPROVAL_ID = /^[0-9a-f]{16}$/;
const RECORD_FILE = /^([0-9a-f]{16})\.json$/;

const approvalSchema = z.strictObject({
  version: z.literal(1),
  id: z.string().regex(APPROVAL_ID),
  measurement: z.string().regex(MEASUREMENT),
  vmId: z.string().regex(VM_ID).optional(),
  hostId: z.string().regex(HOST_ID_PATTERN).optional(),
  note: z.string().max(200).optional(),
  createdAt: z.iso.datetime(),
});
export type IdsApproval = z.infer<typeof approvalSchema>;

export interface ApproveOptions {
  vmId?: string;
  hostId?: string;
  note?: string;
  now?: Date;
}

/** A request to approve or revoke that makes no sense; nothing was written. */
export class IdsApprovalError extends Error {
  override name = 'IdsApprovalError';
}

export async function approveIdsMeasurement(paths: AuthorityPaths, measurement: string, opts: ApproveOptions = {}): Promise<IdsApproval> {
  const m = measurement.toLowerCase();
  if (!MEASUREMENT.test(m)) throw new IdsApprovalError('measurement must be 64 hex digits (SHA-256)');
  if (opts.vmId !== undefined && !VM_ID.test(opts.vmId)) throw new IdsApprovalError('VM id must be 32 lower-case hex digits');
  if (opts.hostId !== undefined && !HOST_ID_PATTERN.test(opts.hostId)) throw new IdsApprovalError(`host id must match ${HOST_ID_PATTERN}`);
  if (opts.note !== undefined && (opts.note.length > 200 || /\p{Cc}/u.test(opts.note))) throw new IdsApprovalError('note must be at most 200 characters without control characters');
  const approval: IdsApproval = {
    version: 1,
    id: randomBytes(8).toString('hex'),
    measurement: m,
    ...(opts.vmId !== undefined ? { vmId: opts.vmId } : {}),
    ...(opts.hostId !== undefined ? { hostId: opts.hostId } : {}),
    ...(opts.note !== undefined ? { note: opts.note } : {}),
    createdAt: (opts.now ?? new Date()).toISOString(),
  };
  await createPrivateFile(join(paths.idsApprovals, `${approval.id}.json`), `${JSON.stringify(approval, null, 2)}\n`);
  return approval;
}

/** Every approval, oldest first. A record that does not parse is an error, never silently an approval. */
export async function listIdsApprovals(paths: AuthorityPaths): Promise<IdsApproval[]> {
  const out: IdsApproval[] = [];
  for (const name of await readdir(paths.idsApprovals)) {
    const m = RECORD_FILE.exec(name);
    if (!m) continue;
    let text: string;
    try {
      text = await readFile(join(paths.idsApprovals, name), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // revoked meanwhile
      throw err;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const parsed = approvalSchema.safeParse(json);
    if (!parsed.success || parsed.data.id !== m[1]) throw new Error(`corrupt IDS approval record ${name}`);
    out.push(parsed.data);
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
}

/**
 * Removes approvals: `target` is an approval id (16 hex) or a measurement (64 hex, every approval of
 * it). Returns what was removed; an unknown target is an error.
 */
export async function revokeIdsApproval(paths: AuthorityPaths, target: string): Promise<IdsApproval[]> {
  const t = target.toLowerCase();
  if (!APPROVAL_ID.test(t) && !MEASUREMENT.test(t)) throw new IdsApprovalError('give an approval id (16 hex digits) or a measurement (64 hex digits)');
  const hits = (await listIdsApprovals(paths)).filter((a) => a.id === t || a.measurement === t);
  if (hits.length === 0) throw new IdsApprovalError(`no approval matches ${t}`);
  for (const a of hits) await rm(join(paths.idsApprovals, `${a.id}.json`), { force: true });
  return hits;
}

/** The approval that lets `measurement` run for this VM on this host, if any. */
export async function findIdsApproval(paths: AuthorityPaths, measurement: string, vmId: string, hostId: string): Promise<IdsApproval | undefined> {
  return (await listIdsApprovals(paths)).find(
    (a) => a.measurement === measurement && (a.vmId === undefined || a.vmId === vmId) && (a.hostId === undefined || a.hostId === hostId),
  );
}
