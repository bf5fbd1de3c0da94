/**
 * Builds the demo guest (kernel, initramfs, disk image) and caches it under
 * $VMSEAL_CACHE/guest/KERNEL_VERSION/. Only missing or outdated artifacts are built; each lands
 * by rename, so an interrupted build never leaves a half file that counts as done. When apt
 * cannot resolve or fetch the kernel, the newest complete cached build is used instead.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { findBusybox, type Busybox } from './busybox.ts';
import { acquireBuildLock } from './build-lock.ts';
import { GUEST_CMDLINE } from './contract.ts';
import { buildDiskImage } from './disk-image.ts';
import { buildInitramfs, initramfsRecipe } from './initramfs.ts';
import { checkGuestKernelConfig, parseKernelConfig } from './kernel-config.ts';
import {
  AptMetadataError,
  debugPackageOf,
  downloadKernelPackage,
  extractKernelPackage,
  extractSystemMap,
  KernelDownloadError,
  kernelPackageSize,
  resolveKernelPackage,
  type KernelPackage,
} from './kernel-package.ts';
import {
  ARTIFACT_FILES,
  artifactReady,
  readManifest,
  writeFileAtomic,
  writeManifest,
  type ArtifactKind,
  type ArtifactRecord,
  type Manifest,
} from './manifest.ts';
import { GUEST_MODULES, indexModules, resolveModules } from './modules.ts';
import { buildRootfs, rootfsRecipe } from './rootfs.ts';
import { candidateVersions, type DebPackage } from './debian-packages.ts';
import { gatherTpmTools, TPM_TOOLS_PACKAGES, type PackagedFiles } from './tpm-tools.ts';

export interface GuestBuildOptions {
  /** vmseal's cache root; the guest goes under `guest/`. Default $VMSEAL_CACHE, else ~/.cache/vmseal. */
  cacheDir?: string;
  /** Rebuild every artifact even if cached. */
  force?: boolean;
  /** One line per step, for humans. */
  onProgress?: (msg: string) => void;
  /** Bytes of the kernel package downloaded so far. */
  onTransfer?: (doneBytes: number, totalBytes: number) => void;
}

export interface GuestBuild {
  kernel: string;
  initrd: string;
  disk: string;
  /** The kernel package's System.map: symbol addresses before KASLR, a test oracle for kallsyms. */
  systemMap: string;
  cmdline: string;
  kernelVersion: string;
}

/** How long a build waits for another process building the same kernel version. */
const LOCK_WAIT_MS = 30 * 60_000;

export function defaultCacheDir(): string {
  return process.env.VMSEAL_CACHE || join(homedir(), '.cache', 'vmseal');
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function resultFor(dir: string, kernelVersion: string): GuestBuild {
  return {
    kernel: join(dir, ARTIFACT_FILES.kernel),
    initrd: join(dir, ARTIFACT_FILES.initrd),
    disk: join(dir, ARTIFACT_FILES.disk),
    systemMap: join(dir, ARTIFACT_FILES.systemMap),
    cmdline: GUEST_CMDLINE,
    kernelVersion,
  };
}

async function complete(dir: string, manifest: Manifest | undefined): Promise<boolean> {
  for (const kind of Object.keys(ARTIFACT_FILES) as ArtifactKind[]) {
    if (!(await artifactReady(dir, manifest, kind))) return false;
  }
  return true;
}

/** The most recently updated complete build in the cache, if any. */
async function newestCachedBuild(guestRoot: string): Promise<{ dir: string; manifest: Manifest } | undefined> {
  const names = await readdir(guestRoot).catch(() => [] as string[]);
  let best: { dir: string; manifest: Manifest } | undefined;
  for (const name of names) {
    const dir = join(guestRoot, name);
    const manifest = await readManifest(dir);
    if (!manifest || manifest.kernelVersion !== name || !(await complete(dir, manifest))) continue;
    if (!best || manifest.updatedAt > best.manifest.updatedAt) best = { dir, manifest };
  }
  return best;
}

async function fallBack(guestRoot: string, why: Error, report: (msg: string) => void): Promise<GuestBuild> {
  const cached = await newestCachedBuild(guestRoot);
  if (!cached) throw why;
  report(`${why.message}`);
  report(`using the newest cached guest instead: ${cached.manifest.kernelVersion} (built ${cached.manifest.updatedAt})`);
  return resultFor(cached.dir, cached.manifest.kernelVersion);
}

export async function buildGuest(opts: GuestBuildOptions = {}): Promise<GuestBuild> {
  const report = opts.onProgress ?? (() => {});
  const guestRoot = resolve(opts.cacheDir ?? defaultCacheDir(), 'guest');
  await mkdir(guestRoot, { recursive: true });

  report('resolving the kernel (linux-image-cloud-amd64, from apt metadata)');
  let pkg: KernelPackage;
  try {
    pkg = await resolveKernelPackage();
  } catch (err) {
    if (err instanceof AptMetadataError) return fallBack(guestRoot, err, report);
    throw err;
  }
  report(`kernel ${pkg.kernelVersion} (${pkg.name} ${pkg.version})`);
  const busybox = await findBusybox();
  const dir = join(guestRoot, pkg.kernelVersion);
  await mkdir(dir, { recursive: true });

  const release = await acquireBuildLock(`${dir}.lock`, LOCK_WAIT_MS, (pid) => report(`waiting for another build of this guest (pid ${pid})`));
  try {
    return await buildLocked(dir, guestRoot, pkg, busybox, opts, report);
  } finally {
    await release();
  }
}

/**
 * Current versions of the packages the root filesystem takes files from: those the cached disk
 * was built from (its closure is known only after a build) and the tools asked for.
 */
async function rootfsPackageVersions(old: Manifest | undefined): Promise<DebPackage[]> {
  const names = [...new Set([...TPM_TOOLS_PACKAGES, ...(old?.rootfsPackages ?? []).map((p) => p.name)])].sort();
  try {
    return await candidateVersions(names);
  } catch (err) {
    // A package of the old closure that apt no longer knows: the recipe differs, the disk is rebuilt.
    if (err instanceof AptMetadataError) return candidateVersions([...TPM_TOOLS_PACKAGES]);
    throw err;
  }
}

async function buildLocked(
  dir: string,
  guestRoot: string,
  pkg: KernelPackage,
  busybox: Busybox,
  opts: GuestBuildOptions,
  report: (msg: string) => void,
): Promise<GuestBuild> {
  const old = await readManifest(dir);
  const recipes: Record<ArtifactKind, string> = {
    kernel: `${pkg.name}=${pkg.version}`,
    initrd: initramfsRecipe(busybox, `${pkg.name}=${pkg.version}`, GUEST_MODULES.map((m) => m.name)),
    disk: rootfsRecipe(busybox, await rootfsPackageVersions(old)),
    systemMap: `${debugPackageOf(pkg).name}=${pkg.version}`,
  };
  const missing = new Set<ArtifactKind>();
  for (const kind of Object.keys(ARTIFACT_FILES) as ArtifactKind[]) {
    if (opts.force || old?.kernelVersion !== pkg.kernelVersion || !(await artifactReady(dir, old, kind, recipes[kind]))) missing.add(kind);
  }
  // Artifacts still valid are kept; the manifest is rebuilt around them.
  const manifest: Manifest = {
    kernelVersion: pkg.kernelVersion,
    kernelPackage: { name: pkg.name, version: pkg.version },
    cmdline: GUEST_CMDLINE,
    modules: old?.modules,
    rootfsPackages: old?.rootfsPackages,
    artifacts: {},
    updatedAt: new Date().toISOString(),
  };
  for (const kind of Object.keys(ARTIFACT_FILES) as ArtifactKind[]) {
    if (!missing.has(kind)) manifest.artifacts[kind] = old!.artifacts[kind];
  }
  if (missing.size === 0) {
    report(`cached guest is complete: ${dir}`);
    if (old?.cmdline !== GUEST_CMDLINE) await writeManifest(dir, manifest);
    return resultFor(dir, pkg.kernelVersion);
  }
  report(`building: ${[...missing].join(', ')}`);

  // Work dirs of this version left by a killed build: we hold the lock, so none is in use.
  const workPrefix = `.build-${pkg.kernelVersion}-`;
  for (const name of await readdir(guestRoot)) {
    if (name.startsWith(workPrefix)) await rm(join(guestRoot, name), { recursive: true, force: true });
  }
  const work = await mkdtemp(join(guestRoot, workPrefix));
  const land = async (kind: ArtifactKind, record: Omit<ArtifactRecord, 'file' | 'recipe'>) => {
    manifest.artifacts[kind] = { file: ARTIFACT_FILES[kind], recipe: recipes[kind], ...record };
    manifest.updatedAt = new Date().toISOString();
    await writeManifest(dir, manifest);
  };
  try {
    if (missing.has('kernel') || missing.has('initrd')) {
      const downloadDir = join(work, 'download');
      await mkdir(downloadDir);
      let deb: string;
      try {
        const size = await kernelPackageSize(pkg);
        report(`downloading ${pkg.name} ${pkg.version} (${mb(size)})`);
        deb = await downloadKernelPackage(pkg, size, downloadDir, opts.onTransfer);
      } catch (err) {
        if (err instanceof KernelDownloadError) return fallBack(guestRoot, err, report);
        throw err;
      }
      report('unpacking the kernel package');
      const kernel = await extractKernelPackage(deb, join(work, 'package'), pkg.kernelVersion);
      checkGuestKernelConfig(parseKernelConfig(await readFile(kernel.config, 'utf8')));
      const vmlinuz = await readFile(kernel.vmlinuz);

      if (missing.has('kernel')) {
        await writeFileAtomic(join(dir, ARTIFACT_FILES.kernel), vmlinuz);
        await land('kernel', { bytes: vmlinuz.length, sha256: sha256(vmlinuz) });
        report(`kernel: ${mb(vmlinuz.length)}`);
      }
      if (missing.has('initrd')) {
        report('resolving kernel modules from their .modinfo');
        const index = await indexModules(kernel.modulesDir);
        const modules = await resolveModules(GUEST_MODULES, index, kernel.modulesDir, pkg.kernelVersion);
        report(`module load order: ${modules.map((m) => m.name).join(' ')}`);
        report('building the initramfs');
        const initrdDir = join(work, 'initramfs');
        await mkdir(initrdDir);
        const mtime = (await stat(kernel.vmlinuz)).mtime;
        const initrd = await buildInitramfs({ busybox, modules, workDir: initrdDir, mtime });
        await writeFileAtomic(join(dir, ARTIFACT_FILES.initrd), initrd);
        manifest.modules = modules.map((m) => m.name);
        await land('initrd', { bytes: initrd.length, sha256: sha256(initrd) });
        report(`initramfs: ${mb(initrd.length)}, ${modules.length} modules`);
      }
    }
    if (missing.has('systemMap')) {
      const dbg = debugPackageOf(pkg);
      const downloadDir = join(work, 'download-dbg');
      await mkdir(downloadDir);
      let deb: string;
      try {
        const size = await kernelPackageSize(dbg);
        report(`downloading ${dbg.name} ${dbg.version} (${mb(size)}) for its System.map`);
        deb = await downloadKernelPackage(dbg, size, downloadDir, opts.onTransfer);
      } catch (err) {
        if (err instanceof KernelDownloadError) return fallBack(guestRoot, err, report);
        throw err;
      }
      const extracted = join(work, 'package-dbg');
      await mkdir(extracted);
      const map = await readFile(await extractSystemMap(deb, extracted, pkg.kernelVersion));
      await rm(downloadDir, { recursive: true, force: true });
      await writeFileAtomic(join(dir, ARTIFACT_FILES.systemMap), map);
      await land('systemMap', { bytes: map.length, sha256: sha256(map) });
      report(`System.map: ${mb(map.length)}`);
    }
    if (missing.has('disk')) {
      report(`building the root filesystem (busybox-static ${busybox.version})`);
      let packaged: PackagedFiles;
      try {
        packaged = await gatherTpmTools(join(work, 'packages'), report);
      } catch (err) {
        if (err instanceof KernelDownloadError) return fallBack(guestRoot, err, report);
        throw err;
      }
      report(`tpm2-tools: ${packaged.entries.length} files and links from ${packaged.packages.length} packages`);
      const rootfs = join(work, 'rootfs');
      await mkdir(rootfs);
      await buildRootfs(rootfs, busybox, packaged);
      // The recipe names every package the files came from, so an update of any of them rebuilds.
      recipes.disk = rootfsRecipe(busybox, packaged.packages);
      manifest.rootfsPackages = packaged.packages;
      report('writing the disk image (MBR + ext4 at 1 MiB, mke2fs -d) and checking it with e2fsck');
      const image = join(work, ARTIFACT_FILES.disk);
      await buildDiskImage(image, rootfs);
      const file = await open(image, 'r+');
      try {
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(image, join(dir, ARTIFACT_FILES.disk));
      await land('disk', { bytes: (await stat(join(dir, ARTIFACT_FILES.disk))).size });
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  report(`guest ready: ${dir}`);
  return resultFor(dir, pkg.kernelVersion);
}
