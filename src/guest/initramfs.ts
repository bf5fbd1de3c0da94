/**
 * The initramfs: busybox, the kernel modules in load order and an /init that loads them, waits
 * for the root disk, mounts it and switches to it. Packed as a gzip'd newc cpio with every file
 * owned by root and one fixed mtime, so the same inputs give the same bytes (and the same
 * measurement).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import type { Busybox } from './busybox.ts';
import { GUEST_ROOT_DEVICE, INITRAMFS_FAILURE_MARKER } from './contract.ts';
import { stampTree, treeDirs, writeTree, type TreeEntry } from './file-tree.ts';
import type { KernelModule } from './modules.ts';
import { runTool } from './run-tool.ts';

/** Seconds /init waits for the root disk to appear. */
const ROOT_WAIT_SECONDS = 10;
const MAX_ARCHIVE_BYTES = 256 * 1024 * 1024;

export function initScript(modules: readonly string[]): string {
  return `#!/bin/sh
# vmseal initramfs: load the drivers, mount the ext4 root from ${GUEST_ROOT_DEVICE}, switch to it.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
MODULES="${modules.join(' ')}"
ROOT=${GUEST_ROOT_DEVICE}

# Say why on the console, then power off so the VM stops instead of hanging or panicking.
fail() {
	echo "${INITRAMFS_FAILURE_MARKER}: $*"
	sleep 1
	poweroff -f
	exit 1
}

mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs on /dev"
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
for m in $MODULES; do
	insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done

# The disk is probed asynchronously after virtio_blk loads; wait for it by the clock.
read -r up rest </proc/uptime
deadline=$(( \${up%.*} + ${ROOT_WAIT_SECONDS} ))
while [ ! -b "$ROOT" ]; do
	read -r up rest </proc/uptime
	[ "\${up%.*}" -ge "$deadline" ] && fail "$ROOT did not appear within ${ROOT_WAIT_SECONDS} s (is the disk attached as virtio-blk?)"
	sleep 0.1
done
mount -t ext4 -o rw "$ROOT" /newroot || fail "cannot mount $ROOT as ext4"
[ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || fail "no /sbin/init on $ROOT"

umount /proc /sys
mount --move /dev /newroot/dev || fail "cannot move /dev to the root filesystem"
exec switch_root /newroot /sbin/init
`;
}

export interface InitramfsInput {
  busybox: Busybox;
  /** In load order; the archive lists them in this order too. */
  modules: readonly KernelModule[];
  /** An empty directory to assemble the tree in. */
  workDir: string;
  /** The mtime every archive member gets. */
  mtime: Date;
}

/** The gzip'd cpio archive. */
export async function buildInitramfs(input: InitramfsInput): Promise<Uint8Array> {
  const { busybox, modules, workDir, mtime } = input;
  const entries: TreeEntry[] = [
    ...['dev', 'proc', 'sys', 'newroot'].map((path): TreeEntry => ({ kind: 'dir', path, mode: 0o755 })),
    { kind: 'file', path: 'bin/busybox', mode: 0o755, content: await readFile(busybox.path) },
    ...busybox.applets.map((path): TreeEntry => ({ kind: 'symlink', path, target: '/bin/busybox' })),
    { kind: 'file', path: 'init', mode: 0o755, content: initScript(modules.map((m) => m.name)) },
    ...modules.map((m): TreeEntry => ({ kind: 'file', path: `lib/modules/${m.name}.ko`, mode: 0o644, content: m.bytes })),
  ];
  await writeTree(workDir, entries);
  // Directories first (a member's directory must precede it), then the rest in table order.
  const members = [...treeDirs(entries), ...entries.filter((e) => e.kind !== 'dir').map((e) => e.path)];
  await stampTree(workDir, members, mtime);
  const { stdout } = await runTool('cpio', ['--create', '--format=newc', '--owner=0:0', '--reproducible', '--null', '--quiet'], {
    cwd: workDir,
    input: Buffer.from(members.map((m) => `${m}\0`).join('')),
    timeoutMs: 120_000,
    maxStdout: MAX_ARCHIVE_BYTES,
  });
  return gzipSync(stdout, { level: 9 });
}


/** Identifies what buildInitramfs would produce from this kernel package and busybox. */
export function initramfsRecipe(busybox: Busybox, kernelPackage: string, moduleNames: readonly string[]): string {
  return createHash('sha256')
    .update(JSON.stringify({ init: initScript(moduleNames), busybox: busybox.version, applets: busybox.applets, kernelPackage }))
    .digest('hex');
}
