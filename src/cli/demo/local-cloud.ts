/**
 * Every party of a vmseal cloud on this one machine, for the demo and the integration tests: the
 * authority (HTTP), one host's monitor (unix-socket API), the management plane (HTTP) and a tenant
 * state directory. They run in one process but talk only through their real protocols.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { initAuthority } from '../../authority/authority-dir.ts';
import { createEnrollmentToken } from '../../authority/enrollment-tokens.ts';
import { enrollHost, fetchCaCertificate } from '../../authority/http-client.ts';
import { buildAuthorityServer } from '../../authority/server.ts';
import { createTenantState } from '../../client/tenant-state.ts';
import { startMgmt } from '../../mgmt/server.ts';
import { startMonitorApi } from '../../monitor/api/server.ts';
import { sealedDiskOpener } from '../../monitor/launch/sealed-disk.ts';
import { Monitor } from '../../monitor/monitor.ts';
import { initHostKeys, saveHostCertificate } from '../../monitor/state/host-keys.ts';
import { MonitorDb } from '../../monitor/state/monitor-db.ts';

export interface LocalCloudOptions {
  baseDir: string;
  hostId?: string;
  accel?: 'tcg' | 'kvm' | 'auto';
  memoryMiB?: number;
}

export interface LocalCloud {
  authorityUrl: string;
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
    const authorityApp = buildAuthorityServer({ authority });
    await authorityApp.listen({ port: 0, host: '127.0.0.1' });
    closers.push(() => authorityApp.close());
    const authorityUrl = urlOf(authorityApp);

    const { token } = await createEnrollmentToken(authority.paths, hostId);
    const keys = await initHostKeys(dir('host'), hostId);
    const certificatePem = await enrollHost(authorityUrl, { hostId, hpkePublicKey: keys.publicKey, token });
    await saveHostCertificate(dir('host'), certificatePem);

    const db = MonitorDb.open(path.join(dir('host'), 'monitor.db'));
    closers.push(() => db.close());
    const monitor = new Monitor({
      host: { hostId, privateKey: keys.privateKey, certificatePem, caCertificatePem: authority.ca.certPem },
      db: db.sql,
      openSealedDisk: sealedDiskOpener(db),
      accel: opts.accel ?? 'tcg',
      memoryMiB: opts.memoryMiB ?? 512,
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
    return { authorityUrl, mgmtUrl: urlOf(mgmt), hostId, monitor, monitorSocket, storageDir, tenantDir, close };
  } catch (err) {
    await close();
    throw err;
  }
}
