/**
 * The guest disk: a sparse raw image with an MBR and one Linux partition at 1 MiB, holding an
 * ext4 filesystem that mke2fs writes straight into the image from a directory (-d) at a byte
 * offset (-E offset=). No loop device, no mount, no root needed.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { buildMbr, MBR_TYPE_LINUX, SECTOR_SIZE } from '../formats/mbr.ts';
import { runTool } from './run-tool.ts';

export const DISK_BYTES = 256 * 1024 * 1024;
export const PARTITION_OFFSET = 1024 * 1024;
export const FS_BLOCK_BYTES = 4096;
export const FS_LABEL = 'vmseal-root';

const PARTITION_BYTES = DISK_BYTES - PARTITION_OFFSET;
const TOOL_TIMEOUT_MS = 5 * 60_000;

/** How e2fsprogs tools (e2fsck, debugfs) name the partition inside the image. */
export function partitionSpec(image: string): string {
  return `${image}?offset=${PARTITION_OFFSET}`;
}

async function allPaths(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      out.push(`/${relative(root, p)}`);
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(root);
  return out;
}

/**
 * mke2fs -d copies each file's owner; built by a non-root user the files would belong to that
 * user, so they are handed to root afterwards with debugfs.
 */
async function chownToRoot(image: string, rootfsDir: string): Promise<void> {
  const commands = ['/', ...(await allPaths(rootfsDir))].flatMap((p) => [`sif "${p}" uid 0`, `sif "${p}" gid 0`]);
  await runTool('debugfs', ['-w', '-f', '-', partitionSpec(image)], { input: Buffer.from(commands.join('\n') + '\n'), timeoutMs: TOOL_TIMEOUT_MS });
}

/** Writes the disk image to `image` (a new file) from the tree in `rootfsDir`. */
export async function buildDiskImage(image: string, rootfsDir: string): Promise<void> {
  const mbr = buildMbr({
    diskSectors: DISK_BYTES / SECTOR_SIZE,
    partitions: [{ type: MBR_TYPE_LINUX, startLba: PARTITION_OFFSET / SECTOR_SIZE, sectors: PARTITION_BYTES / SECTOR_SIZE }],
  });
  const file = await open(image, 'wx', 0o644);
  try {
    await file.truncate(DISK_BYTES); // sparse: only what mke2fs writes takes space
    await file.write(mbr, 0, mbr.length, 0);
  } finally {
    await file.close();
  }

  // With -b, the size argument counts filesystem blocks; -E offset places block 0 at the partition.
  await runTool(
    'mke2fs',
    ['-q', '-F', '-t', 'ext4', '-b', String(FS_BLOCK_BYTES), '-L', FS_LABEL, '-d', rootfsDir, '-E', `offset=${PARTITION_OFFSET}`, image, String(PARTITION_BYTES / FS_BLOCK_BYTES)],
    { timeoutMs: TOOL_TIMEOUT_MS },
  );
  if (process.getuid?.() !== 0) await chownToRoot(image, rootfsDir);

  // mke2fs must have stayed inside the partition: the image did not grow and the MBR is intact.
  const size = (await stat(image)).size;
  if (size !== DISK_BYTES) throw new Error(`mke2fs changed the image size to ${size} bytes (expected ${DISK_BYTES})`);
  const check = await open(image, 'r');
  const sector = Buffer.alloc(SECTOR_SIZE);
  try {
    await check.read(sector, 0, SECTOR_SIZE, 0);
  } finally {
    await check.close();
  }
  if (!sector.equals(mbr)) throw new Error('mke2fs overwrote the partition table');
  await checkFilesystem(image);
}

/** e2fsck -fn on the partition: throws unless the filesystem is clean. */
export async function checkFilesystem(image: string): Promise<void> {
  await runTool('e2fsck', ['-f', '-n', partitionSpec(image)], { timeoutMs: TOOL_TIMEOUT_MS });
}
