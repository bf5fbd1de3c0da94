/**
 * Peers (docs/vtpm-nv.md "Grants from inside the owner guest"): the tenant's approval, given by a sealed
 * tpm-peer command proven under both VMs' keys, that the OWNER VM's guest may itself share its NV indices
 * read-only with the PEER VM. Directional (A→B lets A's guest grant to B, not B's to A) and bound to vTPM
 * instance ids, so it survives relaunches as ownership does.
 *
 * Rows live in table nv_peers (migration 5 of state/monitor-db.ts) with a token, as grants do:
 *   token = AES-256-GCM(K_manager, owner instance (16) ‖ peer instance (16), aad = "vmseal/v1/nv-peer" ‖ owner ‖ peer)
 * A row whose token does not open for its own owner and peer columns is tampering: no peer, TAMPER raised.
 */
import type Database from 'better-sqlite3';
import { AeadError, open, seal } from '../../crypto/aead.ts';
import { INSTANCE_ID } from './nv-token.ts';

export const NV_PEER_AAD = 'vmseal/v1/nv-peer';
/** Peers per owner: bounds the table one VM's tenant can grow. */
export const MAX_PEERS_PER_OWNER = 64;

export class NvPeerError extends Error {
  override readonly name = 'NvPeerError';
}

function pair(owner: string, peer: string): Buffer {
  for (const id of [owner, peer]) if (!INSTANCE_ID.test(id)) throw new NvPeerError(`bad vTPM instance id ${JSON.stringify(id.slice(0, 40))}`);
  return Buffer.from(owner + peer, 'hex');
}

const aad = (p: Buffer) => Buffer.concat([Buffer.from(NV_PEER_AAD, 'ascii'), p]);

export class NvPeers {
  readonly #db: Database.Database;
  readonly #key: Buffer;
  readonly #onTamper: (detail: string) => void;
  readonly #sql: { row: Database.Statement; count: Database.Statement; upsert: Database.Statement; remove: Database.Statement };

  constructor(db: Database.Database, managerKey: Buffer, onTamper: (detail: string) => void = () => undefined) {
    this.#db = db;
    this.#key = managerKey;
    this.#onTamper = onTamper;
    this.#sql = {
      row: db.prepare('SELECT token FROM nv_peers WHERE owner = ? AND peer = ?'),
      count: db.prepare('SELECT count(*) AS n FROM nv_peers WHERE owner = ? AND peer != ?'),
      upsert: db.prepare('INSERT INTO nv_peers (owner, peer, peer_vm_id, token, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, peer) DO UPDATE SET peer_vm_id = excluded.peer_vm_id, token = excluded.token'),
      remove: db.prepare('DELETE FROM nv_peers WHERE owner = ? AND (peer = ? OR peer_vm_id = ?)'),
    };
  }

  /** Records that `owner`'s guest may share with `peer` (its VM id now, kept for unpeer when it is not running). */
  add(owner: string, peer: string, peerVmId: string): void {
    const p = pair(owner, peer);
    if (owner === peer) throw new NvPeerError('a VM cannot be its own peer');
    if (!INSTANCE_ID.test(peerVmId)) throw new NvPeerError('bad VM id');
    const token = seal(this.#key, p, aad(p));
    this.#db.transaction(() => {
      const n = (this.#sql.count.get(owner, peer) as { n: number }).n;
      if (n >= MAX_PEERS_PER_OWNER) throw new NvPeerError(`this VM already has ${n} peers`);
      this.#sql.upsert.run(owner, peer, peerVmId, token, Date.now());
    })();
  }

  /** Whether a genuine row says `owner`'s guest may share with `peer`. */
  isPeer(owner: string, peer: string): boolean {
    const row = this.#sql.row.get(owner, peer) as { token: Buffer } | undefined;
    if (!row) return false;
    const p = pair(owner, peer);
    try {
      if (open(this.#key, row.token, aad(p)).equals(p)) return true;
    } catch (err) {
      if (!(err instanceof AeadError)) throw err;
    }
    this.#onTamper(`vTPM peer row ${owner} → ${peer} does not verify`);
    return false;
  }

  /** Removes `owner`'s peer named by instance (when running) or by the VM id it had when peered; returns how many went. */
  remove(owner: string, peer: { instance?: string; vmId: string }): number {
    return this.#sql.remove.run(owner, peer.instance ?? '', peer.vmId).changes;
  }
}
