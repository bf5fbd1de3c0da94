/**
 * `vmseal vm launch`: the tenant's whole launch. Unlock the image locally, rebuild its integrity
 * sidecar, upload image, sidecar and boot files through the management plane, verify the host
 * certificate it relays against the pinned CA, seal the bundle to that host, launch, and keep the
 * VM only if the identity proof checks out.
 */
import { z } from 'zod';
import { deriveVmKey } from '../crypto/keys.ts';
import { launchResponseSchema } from '../formats/protocol/monitor-api.ts';
import { buildSidecarForImage, sidecarPathFor } from './integrity-sidecar-writer.ts';
import { openImage } from './image-import.ts';
import { MgmtClient } from './mgmt-client.ts';
import { sealLaunchBundle, sha256File, verifyIdentityProof } from './sealed-launch.ts';
import { loadTenantState, updateTenantState, verifyHostForTenant } from './tenant-state.ts';

export interface VmLaunchInput {
  tenantDir: string;
  mgmtUrl: string;
  name: string;
  imagePath: string;
  passphrase: Buffer;
  kernel: string;
  initrd: string;
  cmdline: string;
  /**
   * Start a VM the tenant launched before from the same image: the management plane already stores
   * its disk, which the VM has changed since, so image and sidecar are not uploaded again; the
   * monitor verifies the stored disk against the root it kept from the last run.
   */
  relaunch?: boolean;
  /** IDS measurements allowed to introspect the VM (none by default). */
  idsMeasurements?: string[];
  /**
   * 'tree' (default): the monitor checks every sector against an integrity tree. 'none': XTS only, faster, but a
   * sector flipped, moved or rolled back by storage goes undetected (docs/sealed-disk.md).
   */
  integrity?: 'tree' | 'none';
  /** Guest paths the monitor write-protects from launch on (`--protect`; docs/integrity.md). */
  protectedPaths?: string[];
  onProgress?: (msg: string) => void;
}

export interface LaunchedVm {
  name: string;
  vmId: string;
  hostId: string;
}

const hostReplySchema = z.object({ hostId: z.string(), certificate: z.string().max(16_384) });

export async function launchVm(input: VmLaunchInput): Promise<LaunchedVm> {
  const say = input.onProgress ?? (() => undefined);
  const state = await loadTenantState(input.tenantDir);
  const previous = state.vms[input.name];
  if (previous && !input.relaunch) throw new Error(`the tenant already has a VM named ${input.name} (vmId ${previous.vmId}); start it again with --relaunch`);
  if (!previous && input.relaunch) throw new Error(`the tenant has no VM named ${input.name} to relaunch`);
  if (previous && previous.mgmtUrl !== input.mgmtUrl) throw new Error(`${input.name} ran behind ${previous.mgmtUrl}; its disk is stored there, not at ${input.mgmtUrl}`);

  say(`unlocking ${input.imagePath}`);
  const image = await openImage({ path: input.imagePath, passphrase: input.passphrase });
  if (image.sectorSize !== 4096) throw new Error(`${input.imagePath} uses ${image.sectorSize}-byte sectors; vmseal launches images with 4096-byte sectors (re-seal it with vmseal image seal)`);
  const integrity = input.integrity ?? 'tree';
  const sectors = Math.floor(image.size / 4096);
  if (sectors < 1) throw new Error(`${input.imagePath} has no payload`);
  let sidecar: { sidecarPath: string; root: Buffer; sectors: number } | undefined;
  if (integrity === 'tree') {
    say('computing the integrity tree over the ciphertext');
    sidecar = await buildSidecarForImage(input.imagePath, image.volumeKey, image.payloadOffset, { sidecarPath: sidecarPathFor(input.imagePath), overwrite: true });
  } else say('XTS only (no integrity tree): storage could flip, move or roll back sectors undetected');

  const mgmt = new MgmtClient(input.mgmtUrl);
  const hostReply = hostReplySchema.parse(await mgmt.getHost());
  // The certificate came through the management plane: trusted only after it chains to the pinned CA.
  const host = await verifyHostForTenant(input.tenantDir, hostReply.certificate);
  say(`host ${host.hostId}: certificate verified against the pinned CA`);

  const [kernelSha256, initrdSha256] = await Promise.all([sha256File(input.kernel), sha256File(input.initrd)]);
  const upload = async (kind: 'image' | 'sidecar' | 'kernel' | 'initrd', name: string, file: string) => {
    let last = -1;
    await mgmt.upload(kind, name, file, (done, total) => {
      const pct = Math.floor((100 * done) / Math.max(total, 1));
      if (pct >= last + 25 || done === total) {
        last = pct;
        say(`uploading ${kind} ${name}: ${pct}%`);
      }
    });
  };
  const kernelName = `k-${kernelSha256.slice(0, 32)}`;
  const initrdName = `i-${initrdSha256.slice(0, 32)}`;
  if (!input.relaunch) {
    await upload('image', input.name, input.imagePath);
    // An XTS-only disk has no sidecar to upload; the launch then names none.
    if (sidecar) await upload('sidecar', input.name, sidecar.sidecarPath);
  }
  await upload('kernel', kernelName, input.kernel);
  await upload('initrd', initrdName, input.initrd);

  const { sealed, launchNonce } = await sealLaunchBundle({
    hostId: host.hostId,
    hostPublicKey: host.hpkePublicKey,
    name: input.name,
    volumeKey: image.volumeKey,
    kernelSha256,
    initrdSha256,
    cmdline: input.cmdline,
    disk: sidecar
      ? { payloadOffset: image.payloadOffset, sectorSize: 4096, sectors: sidecar.sectors, integrity: 'tree', integrityRoot: sidecar.root.toString('hex') }
      : { payloadOffset: image.payloadOffset, sectorSize: 4096, sectors, integrity: 'none' },
    policy: { idsMeasurements: input.idsMeasurements ?? [], ...(input.protectedPaths?.length ? { protectedPaths: input.protectedPaths } : {}) },
  });
  say('launching (bundle sealed to the host key)');
  const reply = launchResponseSchema.parse(await mgmt.launch({ bundle: sealed.toString('base64'), image: input.name, kernel: kernelName, initrd: initrdName }));
  const vmId = verifyIdentityProof(image.volumeKey, Buffer.from(reply.identityProof, 'base64'), { launchNonce, hostId: host.hostId });
  if (vmId !== reply.vmId) throw new Error(`the management plane names the VM ${reply.vmId}, the monitor's proof says ${vmId}`);
  say(`identity proof verified: VM ${vmId} on ${host.hostId}`);

  await updateTenantState(input.tenantDir, (s) => {
    s.vms[input.name] = {
      vmId,
      hostId: host.hostId,
      launchedAt: new Date().toISOString(),
      commandCounter: 0,
      mgmtUrl: input.mgmtUrl,
      image: input.name,
      commandKey: deriveVmKey(image.volumeKey, 'command').toString('base64'),
      consoleKey: deriveVmKey(image.volumeKey, 'console').toString('base64'),
    };
  });
  return { name: input.name, vmId, hostId: host.hostId };
}
