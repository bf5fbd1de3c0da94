/**
 * Who owns each vmseal-managed NV index and who may read it, in the monitor's SQLite state (tables
 * nv_owners and nv_grants, migration 3 of state/monitor-db.ts). Every answer comes from opening the row's
 * token with the manager key (nv-token.ts), never from the plain columns: a forged token, or one copied
 * to another index, owner or grantee, is reported as tampering and counts as no claim at all. Every
 * change is one committed transaction (synchronous=FULL) before the caller answers the guest.
 */
import type Database from 'better-sqlite3';
import { NvPeers } from './nv-peers.ts';
import { grantTokenValid, INSTANCE_ID, NvTokenError, openOwnerToken, sealGrantToken, sealOwnerToken, sealOwnerTokenWith, type OwnerClaim } from './nv-token.ts';

export interface NvQuota {
  /** Managed indices one vTPM instance may own. */
  indices: number;
  /** Sum of their data sizes, bytes. */
  bytes: number;
}

export const DEFAULT_NV_QUOTA: NvQuota = { indices: 16, bytes: 16384 };
/** Grants per index: bounds the table an owner can grow. */
export const MAX_GRANTS_PER_INDEX = 16;

/** The state of an index's ownership row. */
export type OwnerState = { kind: 'none' } | { kind: 'owned'; claim: OwnerClaim } | { kind: 'tampered'; detail: string };

export class NvOwnershipError extends Error {
  override readonly name = 'NvOwnershipError';
}

interface OwnerRow {
  owner: string;
  token: Buffer;
}

export class NvOwnership {
  /** Which VMs each owner's guest may share with by itself (nv-peers.ts); same database, key and tamper callback. */
  readonly peers: NvPeers;
  readonly #db: Database.Database;
  readonly #key: Buffer;
  readonly #onTamper: (detail: string) => void;
  /**
   * The last token opened per index and what it said. Every access still reads the row; a token byte-equal
   * to one this process opened under the same key says the same, so only a changed token is opened again.
   */
  readonly #opened = new Map<number, { token: Buffer; claim: OwnerClaim }>();
  /** Likewise the grant tokens found valid, by index and grantee, with the owner token nonce they were valid for. */
  readonly #grantsSeen = new Map<string, { token: Buffer; owner: string; nonce: Buffer }>();
  readonly #sql: { grantees: Database.Statement; grantRow: Database.Statement; ownerRow: Database.Statement; usage: Database.Statement; dropGrants: Database.Statement; upsertOwner: Database.Statement; dropOwner: Database.Statement };

  constructor(db: Database.Database, managerKey: Buffer, onTamper: (detail: string) => void = () => undefined) {
    this.#db = db;
    this.#key = managerKey;
    this.#onTamper = onTamper;
    this.peers = new NvPeers(db, managerKey, onTamper);
    this.#sql = {
      grantees: db.prepare('SELECT grantee FROM nv_grants WHERE nv_index = ?'),
      grantRow: db.prepare('SELECT token FROM nv_grants WHERE nv_index = ? AND grantee = ?'),
      ownerRow: db.prepare('SELECT owner, token FROM nv_owners WHERE nv_index = ?'),
      usage: db.prepare('SELECT count(*) AS n, coalesce(sum(data_size), 0) AS b FROM nv_owners WHERE owner = ?'),
      dropGrants: db.prepare('DELETE FROM nv_grants WHERE nv_index = ?'),
      upsertOwner: db.prepare('INSERT INTO nv_owners (nv_index, owner, data_size, token, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (nv_index) DO UPDATE SET owner = excluded.owner, data_size = excluded.data_size, token = excluded.token, created_at = excluded.created_at'),
      dropOwner: db.prepare('DELETE FROM nv_owners WHERE nv_index = ?'),
    };
  }

  ownerState(nvIndex: number): OwnerState {
    const row = this.#sql.ownerRow.get(nvIndex) as OwnerRow | undefined;
    if (!row) return { kind: 'none' };
    const seen = this.#opened.get(nvIndex);
    let claim: OwnerClaim;
    if (seen?.token.equals(row.token)) {
      claim = seen.claim;
    } else {
      try {
        claim = openOwnerToken(this.#key, row.token, nvIndex);
      } catch (err) {
        if (!(err instanceof NvTokenError)) throw err;
        return this.#tampered(`NV index 0x${nvIndex.toString(16)}: ${err.message}`);
      }
      this.#opened.set(nvIndex, { token: Buffer.from(row.token), claim });
    }
    if (claim.owner !== row.owner) return this.#tampered(`NV index 0x${nvIndex.toString(16)}: row names owner ${row.owner}, its token ${claim.owner}`);
    return { kind: 'owned', claim };
  }

  #tampered(detail: string): OwnerState {
    this.#onTamper(detail);
    return { kind: 'tampered', detail };
  }

  /** Indices and bytes `owner` holds (by its rows; a tampered row still counts against it). */
  usage(owner: string): { indices: number; bytes: number } {
    const r = this.#sql.usage.get(owner) as { n: number; b: number };
    return { indices: r.n, bytes: r.b };
  }

  /** Records `owner` as the owner of a fresh definition of `nvIndex` (new token, new nonce: old grants die). */
  claim(owner: string, nvIndex: number, dataSize: number, auth?: Buffer): OwnerClaim {
    if (!INSTANCE_ID.test(owner)) throw new NvOwnershipError(`bad instance id ${owner}`);
    const { token, nonce } = sealOwnerToken(this.#key, { owner, nvIndex, dataSize, ...(auth ? { auth } : {}) });
    this.#db.transaction(() => {
      this.#sql.dropGrants.run(nvIndex);
      this.#sql.upsertOwner.run(nvIndex, owner, dataSize, token, Date.now());
    })();
    this.#forgetGrants(nvIndex);
    const claim: OwnerClaim = { owner, nvIndex, dataSize, nonce, ...(auth ? { auth } : {}) };
    // What was just sealed need not be opened again at the next command.
    this.#opened.set(nvIndex, { token, claim });
    return claim;
  }

  /** Records the index's new authValue (undefined: not known) for the same definition: nonce and grants stay. */
  setAuth(claim: OwnerClaim, auth: Buffer | undefined): void {
    const { auth: _old, ...rest } = claim;
    const token = sealOwnerTokenWith(this.#key, { ...rest, ...(auth ? { auth } : {}) }, claim.nonce);
    this.#db.prepare('UPDATE nv_owners SET token = ? WHERE nv_index = ? AND owner = ?').run(token, claim.nvIndex, claim.owner);
  }

  /** Drops the index and its grants (after the owner's swtpm undefined it). */
  release(nvIndex: number): void {
    this.#db.transaction(() => {
      this.#sql.dropGrants.run(nvIndex);
      this.#sql.dropOwner.run(nvIndex);
    })();
    this.#opened.delete(nvIndex);
    this.#forgetGrants(nvIndex);
  }

  /** Puts back the row of `claim` (same nonce) after swtpm refused the undefine that released it. */
  reinstate(claim: OwnerClaim): void {
    const { nonce, ...rest } = claim;
    this.#db
      .prepare('INSERT INTO nv_owners (nv_index, owner, data_size, token, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (nv_index) DO NOTHING')
      .run(claim.nvIndex, claim.owner, claim.dataSize, sealOwnerTokenWith(this.#key, rest, nonce), Date.now());
  }

  /** Whether `grantee` holds a genuine read grant from the current definition of the index. */
  hasGrant(claim: OwnerClaim, grantee: string): boolean {
    const row = this.#sql.grantRow.get(claim.nvIndex, grantee) as { token: Buffer } | undefined;
    if (!row) return false;
    // Checked on every command (a revoke takes effect at once); only the decryption of an unchanged token is saved.
    const key = `${claim.nvIndex}:${grantee}`;
    const seen = this.#grantsSeen.get(key);
    if (seen && seen.token.equals(row.token) && seen.owner === claim.owner && seen.nonce.equals(claim.nonce)) return true;
    if (grantTokenValid(this.#key, row.token, claim, grantee)) {
      this.#grantsSeen.set(key, { token: Buffer.from(row.token), owner: claim.owner, nonce: claim.nonce });
      return true;
    }
    this.#onTamper(`NV index 0x${claim.nvIndex.toString(16)}: grant row for ${grantee} does not verify`);
    return false;
  }

  /** Whether any genuine grant exists (a shared index is read-only for everyone, the owner included: seed 002). */
  isShared(claim: OwnerClaim): boolean {
    const rows = this.#sql.grantees.all(claim.nvIndex) as Array<{ grantee: string }>;
    return rows.some((r) => this.hasGrant(claim, r.grantee));
  }

  grantees(claim: OwnerClaim): Array<{ grantee: string; granteeVmId: string }> {
    const rows = this.#db.prepare('SELECT grantee, grantee_vm_id FROM nv_grants WHERE nv_index = ? ORDER BY created_at').all(claim.nvIndex) as Array<{ grantee: string; grantee_vm_id: string }>;
    return rows.filter((r) => this.hasGrant(claim, r.grantee)).map((r) => ({ grantee: r.grantee, granteeVmId: r.grantee_vm_id }));
  }

  grant(claim: OwnerClaim, grantee: string, granteeVmId: string): void {
    if (!INSTANCE_ID.test(grantee)) throw new NvOwnershipError(`bad instance id ${grantee}`);
    if (grantee === claim.owner) throw new NvOwnershipError('an index cannot be shared with its owner');
    const token = sealGrantToken(this.#key, claim, grantee);
    this.#db.transaction(() => {
      const n = (this.#db.prepare('SELECT count(*) AS n FROM nv_grants WHERE nv_index = ? AND grantee != ?').get(claim.nvIndex, grantee) as { n: number }).n;
      if (n >= MAX_GRANTS_PER_INDEX) throw new NvOwnershipError(`NV index 0x${claim.nvIndex.toString(16)} already has ${n} grants`);
      this.#db
        .prepare('INSERT INTO nv_grants (nv_index, grantee, grantee_vm_id, token, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (nv_index, grantee) DO UPDATE SET grantee_vm_id = excluded.grantee_vm_id, token = excluded.token')
        .run(claim.nvIndex, grantee, granteeVmId, token, Date.now());
    })();
  }

  /**
   * Removes the grants of `nvIndex` to the grantee named by instance (when it is running) or by the VM id
   * it had when granted; returns how many went.
   */
  revoke(nvIndex: number, grantee: { instance?: string; vmId: string }): number {
    const n = this.#db.prepare('DELETE FROM nv_grants WHERE nv_index = ? AND (grantee = ? OR grantee_vm_id = ?)').run(nvIndex, grantee.instance ?? '', grantee.vmId).changes;
    this.#forgetGrants(nvIndex);
    return n;
  }

  /** Drops the memo of an index's grants whose rows went (it is checked against the rows anyway; this bounds it). */
  #forgetGrants(nvIndex: number): void {
    for (const key of this.#grantsSeen.keys()) if (key.startsWith(`${nvIndex}:`)) this.#grantsSeen.delete(key);
  }
}
