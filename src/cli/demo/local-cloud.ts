/**
 * Every party of a vmseal cloud on this one machine, for the demo and the integration tests: the
 * authority (HTTP), one host's monitor (unix-socket API), the management plane (HTTP) and a tenant
 * state directory. They run in one process but talk only through their real protocols.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { initAuthority, type AuthorityPaths } from '../../authority/authority-dir.ts';
import { createEnrollmentToken } from '../../authority/enrollment-tokens.ts';
import { enrollHost, fetchCaCertificate } from '../../authority/http-client.ts';
import { ensureVtpmCa, installVtpmCaCertificate, vtpmCaPublicKeyPem } from '../../monitor/vtpm/vtpm-ca.ts';
import { HeartbeatService } from '../../authority/heartbeat.ts';
import { AttestService } from '../../authority/attest/attest-service.ts';
import { AttestDb } from '../../authority/attest/attest-db.ts';
import { ImaInbox } from '../../authority/attest/ima-inbox.ts';
import { buildAuthorityServer } from '../../authority/server.ts';
import { createTenantState } from '../../client/tenant-state.ts';
import { startMgmt } from '../../mgmt/server.ts';
import { startMonitorApi } from '../../monitor/api/server.ts';
import { sealedDiskOpener } from '../../monitor/launch/sealed-disk.ts';
import { Monitor } from '../../monitor/monitor.ts';
import { initHostKeys, saveHostCertificate } from '../../monitor/state/host-keys.ts';
import { MonitorDb } from '../../monitor/state/monitor-db.ts';
import { loadOrCreateNvManagerKey, NV_MANAGER_KEY_FILE } from '../../monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../monitor/vtpm/nv-policy.ts';

export interface LocalCloudOptions {
  baseDir: string;
  hostId?: string;
  accel?: 'tcg' | 'kvm' | 'auto';
  memoryMiB?: number;
  /** The authority's IDS heartbeat period (default 1000 ms). */
  heartbeatMs?: number;
  /** Benchmark configuration (b) only: the monitor's IDS channel runs unencrypted. */
  benchPlainIdsChannel?: boolean;
  /** Give VMs a vTPM and run the authority's attestation verifier (with IMA lists from IDS sessions). */
  attest?: boolean;
  /** Give VMs a vTPM with NV access control and sharing, as `vmseal host run` does (implied by `attest`). */
  vtpm?: boolean;
}

export interface LocalCloud {
  authorityUrl: string;
  /** The authority's directory (approvals are files there, as `vmseal authority ids approve` writes them). */
  authorityPaths: AuthorityPaths;
  heartbeats: HeartbeatService;
  /** The verifier, when started with `attest`. */
  attest?: AttestService;
  mgmtUrl: string;
  hostId: string;
  monitor: Monitor;
  monitorSocket: string;
  storageDir: string;
  tenantDir: string;
  close(): Promise<void>;
}

function urlOf(app: FastifyInstance): string {
  const addr = app.server.address();
  if (!addr || typeof addr === 'string') throw new Error('server is not listening on TCP');
  return `http://127.0.0.1:${addr.port}`;
}

export async function startLocalCloud(opts: LocalCloudOptions): Promise<LocalCloud> {
  const hostId = opts.hostId ?? 'host-1';
  const dir = (name: string) => path.join(opts.baseDir, name);
  const closers: Array<() => Promise<void> | void> = [];
  const close = async () => {
    for (const c of closers.splice(0).reverse()) await c();
  };
  // Closed in reverse order: the directory goes last, after every party has stopped.
  closers.push(() => rm(opts.baseDir, { recursive: true, force: true }));
  try {
    const authority = await initAuthority(dir('authority'));
    const heartbeats = await HeartbeatService.open(dir('authority'), opts.heartbeatMs === undefined ? {} : { periodMs: opts.heartbeatMs });
    const attest = opts.attest
      ? new AttestService({ authority, db: AttestDb.open(dir('authority')), imaSource: (vmId) => imaInbox!.fetch(vmId) })
      : undefined;
    const imaInbox = opts.attest ? ImaInbox.forHeartbeats(heartbeats) : undefined;
    const authorityApp = buildAuthorityServer({ authority, heartbeats, ...(attest && imaInbox ? { attest, imaInbox } : {}) });
    await authorityApp.listen({ port: 0, host: '127.0.0.1' });
    closers.push(() => authorityApp.close());
    // Closed before the server, so its long-polling challenge requests return and the server can stop.
    closers.push(() => heartbeats.close());
    const authorityUrl = urlOf(authorityApp);

    const { token } = await createEnrollmentToken(authority.paths, hostId);
    const keys = await initHostKeys(dir('host'), hostId);
    const vtpmCa = await ensureVtpmCa(dir('host'), hostId);
    const enrolled = await enrollHost(authorityUrl, { hostId, hpkePublicKey: keys.publicKey, token, vtpmCaPublicKey: await vtpmCaPublicKeyPem(vtpmCa) });
    const certificatePem = enrolled.certificate;
    await saveHostCertificate(dir('host'), certificatePem);
    if (enrolled.vtpmCaCertificate === undefined) throw new Error('the authority did not certify the vTPM CA');
    await installVtpmCaCertificate(vtpmCa, enrolled.vtpmCaCertificate);

    const db = MonitorDb.open(path.join(dir('host'), 'monitor.db'));
    closers.push(() => db.close());
    const monitor = new Monitor({
      host: { hostId, privateKey: keys.privateKey, certificatePem, caCertificatePem: authority.ca.certPem },
      db: db.sql,
      openSealedDisk: sealedDiskOpener(db),
      accel: opts.accel ?? 'tcg',
      memoryMiB: opts.memoryMiB ?? 512,
      ...(opts.benchPlainIdsChannel === true ? { benchPlainIdsChannel: true } : {}),
      ...(opts.attest || opts.vtpm
        ? {
            vtpm: { stateBase: dir('host/vtpm'), ca: vtpmCa },
            nvAccess: new NvAccessControl({
              ownership: new NvOwnership(db.sql, await loadOrCreateNvManagerKey(path.join(dir('host'), NV_MANAGER_KEY_FILE)), (detail) => monitor.alerts.raise('TAMPER', null, `vTPM NV ownership: ${detail}`)),
            }),
          }
        : {}),
    });
    closers.push(() => monitor.close());
    const storageDir = dir('storage');
    await mkdir(storageDir, { recursive: true });
    const monitorSocket = path.join(dir('host'), 'monitor.sock');
    const api = await startMonitorApi({ monitor, socketPath: monitorSocket, storageDir });
    closers.push(() => api.close());

    const mgmt = await startMgmt({ storageDir, monitorSocket, port: 0 });
    closers.push(() => mgmt.close());

    const tenantDir = dir('tenant');
    await createTenantState(tenantDir, { authorityUrl, caCertificatePem: await fetchCaCertificate(authorityUrl) });
    return { authorityUrl, authorityPaths: authority.paths, heartbeats, ...(attest ? { attest } : {}), mgmtUrl: urlOf(mgmt), hostId, monitor, monitorSocket, storageDir, tenantDir, close };
  } catch (err) {
    await close();
    throw err;
  }
}
