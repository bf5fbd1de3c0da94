/**
 * A whole IDS registration world without QEMU: a real authority directory (CA, IDS key, approvals,
 * enrolled host), the authority's HTTP server through inject, a monitor-side IdsSessions on a real
 * monitor DB, and guest "RAM" that is a Buffer read through the introspection engineer's executor.
 */
import type { TestContext } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { initAuthority, type Authority } from '../../src/authority/authority-dir.ts';
import { issueHostCertificate } from '../../src/authority/ca.ts';
import type { HeartbeatBinding, HeartbeatRegistry } from '../../src/authority/heartbeat-registry.ts';
import { publishHostCertificate } from '../../src/authority/host-registry.ts';
import { approveIdsMeasurement } from '../../src/authority/ids-approvals.ts';
import { buildAuthorityServer } from '../../src/authority/server.ts';
import { pinnedCaPublicKey } from '../../src/crypto/host-certificate.ts';
import { generateHpkeKeyPair, type HpkeKeyPair } from '../../src/crypto/hpke.ts';
import type { MemorySource } from '../../src/formats/protocol/ids-read.ts';
import type { IdsRegisterRequestWire } from '../../src/formats/protocol/ids-registration.ts';
import { createRegistration, signRequestOf, type Registration } from '../../src/ids/channel/registration.ts';
import { q35RamLayout, type PhysMemory, PhysRangeError } from '../../src/monitor/introspect/guest-memory.ts';
import { GuestReader } from '../../src/monitor/introspect/guest-reader.ts';
import { DirectMemorySource } from '../../src/monitor/introspect/read-executor.ts';
import { IdsSessions } from '../../src/monitor/introspect/ids-sessions.ts';
import { AlertLog } from '../../src/monitor/state/alerts.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';

export const MEASUREMENT = 'a1'.repeat(32);
export const OTHER_MEASUREMENT = 'b2'.repeat(32);
export const HOST_ID = 'host-1';

export function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-ids-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export class RecordingHeartbeats implements HeartbeatRegistry {
  readonly registered: Array<{ sessionId: string; binding: HeartbeatBinding; key: Buffer }> = [];
  register(sessionId: string, binding: HeartbeatBinding, key: Buffer): void {
    this.registered.push({ sessionId, binding, key });
  }
}

/** Guest-physical RAM held in a Buffer (below the 4 GiB hole, so file offset = address). */
export class BufferPhysMemory implements PhysMemory {
  readonly layout;
  reads = 0;
  constructor(readonly ram: Buffer) {
    this.layout = q35RamLayout(BigInt(ram.length));
  }
  readInto(pa: bigint, buf: Buffer, off: number, len: number): void {
    this.reads++;
    if (pa < 0n || pa + BigInt(len) > BigInt(this.ram.length)) throw new PhysRangeError(pa, len);
    this.ram.copy(buf, off, Number(pa), Number(pa) + len);
  }
  readPhys(pa: bigint, len: number): Buffer {
    const b = Buffer.alloc(len);
    this.readInto(pa, b, 0, len);
    return b;
  }
  readU64(pa: bigint): bigint {
    return this.readPhys(pa, 8).readBigUInt64LE(0);
  }
}

export interface World {
  authority: Authority;
  authorityApp: FastifyInstance;
  heartbeats: RecordingHeartbeats;
  hostKeys: HpkeKeyPair;
  hostCertificatePem: string;
  db: MonitorDb;
  alerts: AlertLog;
  sessions: IdsSessions;
  vmId: string;
  ram: BufferPhysMemory;
  memory: (vmId: string) => Promise<MemorySource>;
}

export async function world(t: TestContext, opts: { benchPlainChannel?: boolean; approve?: boolean } = {}): Promise<World> {
  const dir = tempDir(t);
  const authority = await initAuthority(join(dir, 'authority'));
  const hostKeys = await generateHpkeKeyPair();
  const hostCertificatePem = await issueHostCertificate(authority.ca, { hostId: HOST_ID, hpkePublicKey: hostKeys.publicKey, validityDays: 30 });
  await publishHostCertificate(authority.paths, HOST_ID, hostCertificatePem);
  if (opts.approve !== false) await approveIdsMeasurement(authority.paths, MEASUREMENT);
  const heartbeats = new RecordingHeartbeats();
  const authorityApp = buildAuthorityServer({ authority, heartbeats });
  t.after(() => authorityApp.close());

  const db = MonitorDb.open(join(dir, 'monitor.db'));
  t.after(() => db.close());
  const alerts = new AlertLog(db.sql);
  const sessions = new IdsSessions({
    db: db.sql,
    hostId: HOST_ID,
    hostPrivateKey: hostKeys.privateKey,
    caPublicKey: pinnedCaPublicKey(authority.ca.certPem),
    alerts,
    ...(opts.benchPlainChannel ? { benchPlainChannel: true } : {}),
  });
  const ram = new BufferPhysMemory(randomBytes(8 << 20));
  const reader = new GuestReader(ram, { kernelCr3: 0n, la57: false });
  const vmId = randomBytes(16).toString('hex');
  const memory = async (id: string): Promise<MemorySource> => {
    if (id !== vmId) throw new Error(`no VM ${id}`);
    return new DirectMemorySource(reader);
  };
  return { authority, authorityApp, heartbeats, hostKeys, hostCertificatePem, db, alerts, sessions, vmId, ram, memory };
}

export async function authorityKey(w: World): Promise<{ publicKey: Buffer; signature: Buffer }> {
  const r = await w.authorityApp.inject({ method: 'GET', url: '/v1/ids/authority-key' });
  const body = r.json() as { publicKey: string; signature: string };
  return { publicKey: Buffer.from(body.publicKey, 'base64'), signature: Buffer.from(body.signature, 'base64') };
}

export async function newRegistration(w: World, over: { vmId?: string; hostId?: string; measurement?: string } = {}): Promise<Registration> {
  const key = await authorityKey(w);
  return createRegistration({
    vmId: over.vmId ?? w.vmId,
    hostId: over.hostId ?? HOST_ID,
    measurement: over.measurement ?? MEASUREMENT,
    hostCertificatePem: w.hostCertificatePem,
    caCertificatePem: w.authority.ca.certPem,
    authorityHpkePublicKey: key.publicKey,
    authorityKeySignature: key.signature,
  });
}

export async function askAuthority(w: World, reg: Registration): Promise<{ status: number; body: { signature?: string; code?: string; error?: string } }> {
  const r = await w.authorityApp.inject({ method: 'POST', url: '/v1/ids/sign', payload: signRequestOf(reg) });
  return { status: r.statusCode, body: r.json() };
}

/** A registration the authority signed: the body the host library hands the monitor. */
export async function signedRegistration(w: World, over: Parameters<typeof newRegistration>[1] = {}): Promise<{ reg: Registration; request: IdsRegisterRequestWire }> {
  const reg = await newRegistration(w, over);
  const answer = await askAuthority(w, reg);
  if (answer.status !== 200 || !answer.body.signature) throw new Error(`authority refused: ${JSON.stringify(answer.body)}`);
  return { reg, request: { ...signRequestOf(reg), signature: answer.body.signature } };
}
