/**
 * A real authority (CA, IDS key, heartbeat service and HTTP routes) and an enrolled host, for tests
 * that run the real enclave process through registration and heartbeats. No monitor is involved: the
 * enclave's channel is set up but never read.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { initAuthority, type Authority } from '../../src/authority/authority-dir.ts';
import { issueHostCertificate } from '../../src/authority/ca.ts';
import { HeartbeatService, type HeartbeatOptions } from '../../src/authority/heartbeat.ts';
import { publishHostCertificate } from '../../src/authority/host-registry.ts';
import { approveIdsMeasurement } from '../../src/authority/ids-approvals.ts';
import { signedAuthorityIdsKey } from '../../src/authority/ids-signing.ts';
import { buildAuthorityServer } from '../../src/authority/server.ts';
import { generateHpkeKeyPair } from '../../src/crypto/hpke.ts';
import type { EnclaveConfig } from '../../src/formats/protocol/enclave-call.ts';

export const HOST_ID = 'host-1';
export const VM_ID = '00112233445566778899aabbccddeeff';
export const PROFILE = '{"metadata":{"format":"6.2.0"},"base_types":{},"user_types":{},"enums":{},"symbols":{}}';

export interface TestAuthority {
  dir: string;
  authority: Authority;
  heartbeats: HeartbeatService;
  app: FastifyInstance;
  url: URL;
  hostCertificate: string;
  config: EnclaveConfig;
  cacheDir: string;
  close(): Promise<void>;
}

export async function startTestAuthority(heartbeat: HeartbeatOptions = {}): Promise<TestAuthority> {
  const root = await mkdtemp(join(tmpdir(), 'vmseal-enclave-'));
  const dir = join(root, 'authority');
  const authority = await initAuthority(dir);
  const host = await generateHpkeKeyPair();
  const hostCertificate = await issueHostCertificate(authority.ca, { hostId: HOST_ID, hpkePublicKey: host.publicKey, validityDays: 30 });
  await publishHostCertificate(authority.paths, HOST_ID, hostCertificate);
  const heartbeats = await HeartbeatService.open(dir, heartbeat);
  const app = buildAuthorityServer({ authority, heartbeats });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const url = new URL(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/`);
  const idsKey = signedAuthorityIdsKey(authority);
  const config: EnclaveConfig = {
    version: 1,
    authorityCaCert: authority.ca.certPem,
    authorityHpkePublicKey: idsKey.publicKey.toString('base64'),
    authorityKeySignature: idsKey.signature.toString('base64'),
    profileSha256: createHash('sha256').update(PROFILE).digest('hex'),
    checks: { pslist: {} },
  };
  return {
    dir,
    authority,
    heartbeats,
    app,
    url,
    hostCertificate,
    config,
    // The bundle cache is shared by the tests (esbuild runs once); it lives beside the other vmseal caches.
    cacheDir: process.env.VMSEAL_CACHE ?? join(tmpdir(), 'vmseal-test-cache'),
    close: async () => {
      await app.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

export async function approve(t: TestAuthority, measurement: string): Promise<void> {
  await approveIdsMeasurement(t.authority.paths, measurement, { vmId: VM_ID, hostId: HOST_ID });
}
