/**
 * An XTS-only launch names no sidecar, end to end: the management plane forwards a sidecar only when one is
 * stored, the monitor API accepts a launch without one, and the monitor's disk opener serves an XTS-only disk
 * without it but refuses a disk with an integrity tree whose sidecar was withheld.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { launchRequestSchema } from '../../src/formats/protocol/monitor-api.ts';
import type { LaunchBundle } from '../../src/formats/protocol/launch-bundle.ts';
import { startMgmt } from '../../src/mgmt/server.ts';
import { startMonitorApi } from '../../src/monitor/api/server.ts';
import { sealedDiskOpener } from '../../src/monitor/launch/sealed-disk.ts';
import type { LaunchRequest, Monitor, SealedDiskRequest } from '../../src/monitor/monitor.ts';
import { RefusalError } from '../../src/monitor/identity/refusal.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';

const storagePath = '/srv/storage/images/x';

test('the launch request schema takes a sidecar or none, and still refuses a bad one', () => {
  const base = { bundle: 'AAAA', image: storagePath, kernel: storagePath, initrd: storagePath };
  assert.equal(launchRequestSchema.parse(base).sidecar, undefined);
  assert.equal(launchRequestSchema.parse({ ...base, sidecar: '/srv/storage/sidecars/x' }).sidecar, '/srv/storage/sidecars/x');
  assert.equal(launchRequestSchema.safeParse({ ...base, sidecar: 'relative/x' }).success, false);
  assert.equal(launchRequestSchema.safeParse({ ...base, sidecar: '' }).success, false);
});

test('management plane and monitor API pass a launch through with the sidecar stored, or without one', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmseal-sidecar-opt-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const storageDir = path.join(dir, 'storage');
  const seen: LaunchRequest[] = [];
  const monitor = {
    launch: async (req: LaunchRequest) => {
      seen.push(req);
      return { vmId: 'ab'.repeat(16), identityProof: Buffer.from('proof') };
    },
  } as unknown as Monitor;
  const socketPath = path.join(dir, 'monitor.sock');
  // The management plane creates its storage folders; the monitor resolves paths inside them per request.
  const mgmt = await startMgmt({ storageDir, monitorSocket: socketPath, port: 0 });
  t.after(() => mgmt.close());
  const api = await startMonitorApi({ monitor, socketPath, storageDir });
  t.after(() => api.close());
  const address = mgmt.server.address();
  assert.ok(address && typeof address === 'object');
  for (const [kind, name] of [['images', 'vm'], ['kernels', 'k'], ['initrds', 'i']] as const) {
    await mkdir(path.join(storageDir, kind), { recursive: true });
    await writeFile(path.join(storageDir, kind, name), 'x');
  }
  const launch = async () => {
    const r = await fetch(`http://127.0.0.1:${address.port}/v1/vms`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ bundle: 'AAAA', image: 'vm', kernel: 'k', initrd: 'i' }),
    });
    assert.equal(r.status, 201, await r.clone().text());
  };

  await launch();
  assert.equal(seen.length, 1);
  assert.equal(seen[0]!.sidecar, undefined);
  assert.ok(seen[0]!.image.endsWith(path.join('images', 'vm')));

  await writeFile(path.join(storageDir, 'sidecars', 'vm'), 'tree');
  await launch();
  assert.equal(seen.length, 2);
  assert.ok(seen[1]!.sidecar?.endsWith(path.join('sidecars', 'vm')));
});

function request(integrity: 'tree' | 'none', imagePath: string, sidecarPath?: string): SealedDiskRequest {
  let volumeKey = randomBytes(64);
  while (volumeKey.subarray(0, 32).equals(volumeKey.subarray(32))) volumeKey = randomBytes(64);
  const disk =
    integrity === 'none'
      ? { payloadOffset: 0, sectorSize: 4096 as const, sectors: 2, integrity }
      : { payloadOffset: 0, sectorSize: 4096 as const, sectors: 2, integrity, integrityRoot: 'cd'.repeat(32) };
  return {
    imagePath,
    ...(sidecarPath === undefined ? {} : { sidecarPath }),
    bundle: { volumeKey, disk } as unknown as LaunchBundle,
    keys: {} as SealedDiskRequest['keys'],
    onAlert: () => undefined,
  };
}

test("the disk opener serves an XTS-only disk without a sidecar and refuses a tree disk without one", async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmseal-sidecar-open-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const db = MonitorDb.open(path.join(dir, 'monitor.db'));
  t.after(() => db.close());
  const image = path.join(dir, 'disk.img');
  await writeFile(image, Buffer.alloc(2 * 4096));
  const open = sealedDiskOpener(db);

  const xts = await open(request('none', image));
  assert.equal(xts.size, 2 * 4096);
  await xts.close();

  await assert.rejects(open(request('tree', image)), (err: unknown) => {
    assert.ok(err instanceof RefusalError);
    assert.equal(err.code, 'TAMPER');
    assert.match(err.message, /integrity tree, but the launch names no sidecar/);
    return true;
  });
});
