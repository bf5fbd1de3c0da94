/**
 * The monitor's end of the IDS channel (docs/ids.md). Registration: a session key is accepted only
 * under the authority's signature (checked with the CA pinned at `vmseal host init`), for this VM on
 * this host, for a measurement the tenant's launch policy allows, and with a session id never seen
 * before (kept in the monitor DB for good). Reads: each request frame must open under the session's
 * request key with seq = last + 1; only then does the seq advance, the reads run on the session's VM,
 * and the results go back sealed and bound to that exact request.
 */
import type Database from 'better-sqlite3';
import { HpkeError, openCompact } from '../../crypto/hpke.ts';
import { IdsChannelError, deriveIdsChannelKeys, openIdsRequest, sealIdsResponse, type IdsChannelKeys, type IdsChannelMode } from '../../crypto/ids-channel.ts';
import { ed25519Verify } from '../../crypto/sign.ts';
import { ProtocolError } from '../../formats/protocol/fields.ts';
import { decodeReadOps, encodeReadResults } from '../../formats/protocol/ids-channel.ts';
import type { MemorySource, ReadOp, ReadResult } from '../../formats/protocol/ids-read.ts';
import {
  IDS_SESSION_KEY_INFO,
  decodeIdsRegistrationBlobs,
  decodeIdsSignature,
  idsRegistrationSignedMessage,
  type IdsRegisterRequestWire,
} from '../../formats/protocol/ids-registration.ts';
import { RefusalError } from '../identity/refusal.ts';
import type { AlertLog } from '../state/alerts.ts';

/** What registration needs to know of the VM the request names. */
export interface IdsVm {
  vmId: string;
  /** The tenant's launch policy: measurements allowed to introspect this VM. */
  idsMeasurements: readonly string[];
}

export interface IdsSessionsOptions {
  /** The monitor DB connection (migration 2: ids_sessions). */
  db: Database.Database;
  hostId: string;
  hostPrivateKey: Buffer;
  /** The pinned CA's raw Ed25519 public key; without it no registration can be verified. */
  caPublicKey: Buffer | undefined;
  /** Every refusal is logged here before it is thrown. */
  alerts: AlertLog;
  /** Benchmark configuration (b) only: every session of this monitor runs unencrypted. */
  benchPlainChannel?: boolean;
}

export class UnknownIdsSessionError extends Error {
  override name = 'UnknownIdsSessionError';
}

interface Session {
  vmId: string;
  keys: IdsChannelKeys;
  lastSeq: number;
}

export class IdsSessions {
  readonly #sessions = new Map<string, Session>();
  readonly #insert: Database.Statement;
  readonly #mode: IdsChannelMode;

  constructor(private readonly opts: IdsSessionsOptions) {
    this.#insert = opts.db.prepare('INSERT INTO ids_sessions (session_id, vm_id, measurement, registered_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING');
    this.#mode = opts.benchPlainChannel === true ? 'plain' : 'sealed';
  }

  /** Registers a session for `vm`; throws RefusalError (logged) or ProtocolError (malformed, nothing logged). */
  async register(vm: IdsVm, req: IdsRegisterRequestWire): Promise<{ sessionId: string }> {
    return this.#logged(vm.vmId, () => this.#register(vm, req));
  }

  async #logged<T>(vmId: string | null, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof RefusalError) this.opts.alerts.raise(err.code, vmId, err.message);
      throw err;
    }
  }

  async #register(vm: IdsVm, req: IdsRegisterRequestWire): Promise<{ sessionId: string }> {
    const reg = decodeIdsRegistrationBlobs(req);
    const signature = decodeIdsSignature(req.signature);
    const { header } = reg;
    const caKey = this.opts.caPublicKey;
    if (!caKey) throw new RefusalError('BAD_SIGNATURE', 'this host has no pinned CA to verify IDS registrations with (re-run vmseal host init)');
    if (!ed25519Verify(caKey, idsRegistrationSignedMessage(reg.headerBytes, reg.sealedSessionKey, reg.sealedHeartbeatKey), signature)) {
      throw new RefusalError('BAD_SIGNATURE', `IDS registration ${header.sessionId} is not signed by the authority`);
    }
    if (header.vmId !== vm.vmId) throw new RefusalError('WRONG_VM', `IDS registration is for VM ${header.vmId}, not ${vm.vmId}`);
    if (header.hostId !== this.opts.hostId) throw new RefusalError('WRONG_VM', `IDS registration is for host ${header.hostId}, not ${this.opts.hostId}`);
    if (!vm.idsMeasurements.includes(header.measurement)) {
      throw new RefusalError('POLICY', `the launch policy of VM ${vm.vmId} does not allow IDS measurement ${header.measurement}`);
    }
    let sessionKey: Buffer;
    try {
      sessionKey = await openCompact(this.opts.hostPrivateKey, reg.sealedSessionKey, { info: Buffer.from(IDS_SESSION_KEY_INFO), aad: reg.headerBytes });
    } catch (err) {
      if (err instanceof HpkeError) throw new RefusalError('TAMPER', 'the IDS session key does not open on this host under this header');
      throw err;
    }
    // Persisted before the session exists: after a restart the same registration is still a replay.
    if (this.#insert.run(header.sessionId, vm.vmId, header.measurement, Date.now()).changes !== 1) {
      throw new RefusalError('REPLAY', `IDS session ${header.sessionId} was registered before`);
    }
    this.#sessions.set(header.sessionId, { vmId: vm.vmId, keys: deriveIdsChannelKeys(sessionKey, Buffer.from(header.sessionId, 'hex')), lastSeq: 0 });
    sessionKey.fill(0);
    return { sessionId: header.sessionId };
  }

  /** The VM a session reads. */
  vmOf(sessionId: string): string {
    return this.#session(sessionId).vmId;
  }

  #session(sessionId: string): Session {
    const s = this.#sessions.get(sessionId);
    if (!s) throw new UnknownIdsSessionError(`no IDS session ${sessionId.slice(0, 32)}`);
    return s;
  }

  /**
   * Answers one request frame with its response frame, reading through `memory` (the session's VM).
   * A refused frame (RefusalError TAMPER/REPLAY, ProtocolError) changes nothing.
   */
  async read(sessionId: string, frame: Buffer, memory: (vmId: string) => Promise<MemorySource>): Promise<Buffer> {
    const s = this.#session(sessionId);
    return this.#logged(s.vmId, () => this.#read(sessionId, s, frame, memory));
  }

  async #read(sessionId: string, s: Session, frame: Buffer, memory: (vmId: string) => Promise<MemorySource>): Promise<Buffer> {
    let seq: number;
    let ops: ReadOp[];
    try {
      const opened = openIdsRequest(s.keys, this.#mode, frame);
      seq = opened.seq;
      if (seq !== s.lastSeq + 1) throw new RefusalError('REPLAY', `IDS request seq ${seq} on session ${sessionId}, expected ${s.lastSeq + 1}`);
      ops = decodeReadOps(opened.plaintext);
    } catch (err) {
      if (err instanceof IdsChannelError) throw new RefusalError('TAMPER', `IDS session ${sessionId}: ${err.message}`);
      throw err;
    }
    s.lastSeq = seq;
    let results: ReadResult[];
    try {
      results = await (await memory(s.vmId)).read(ops);
    } catch (err) {
      // The request was genuine: it gets an answer (every op failed), so the IDS's seq stays in step.
      const error = err instanceof Error ? err.message : String(err);
      results = ops.map(() => ({ ok: false, error }));
    }
    let plaintext: Buffer;
    try {
      plaintext = encodeReadResults(results);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      plaintext = encodeReadResults(ops.map(() => ({ ok: false, error: err.message })));
    }
    return sealIdsResponse(s.keys, this.#mode, seq, frame, plaintext);
  }

  /** Forgets the sessions of a VM that is gone (their ids stay registered). */
  dropVm(vmId: string): void {
    for (const [id, s] of this.#sessions) if (s.vmId === vmId) this.#sessions.delete(id);
  }
}
