/**
 * Reads the demo guest's disk from outside, without mounting it: what the guest wrote is checked
 * with e2fsprogs' debugfs on the ext4 partition inside the raw image.
 */
import { partitionSpec } from './disk-image.ts';
import { runTool } from './run-tool.ts';

const DEBUGFS_TIMEOUT_MS = 60_000;

/** The bytes of `file` (an absolute path inside the guest's root filesystem). */
export async function readGuestFile(image: string, file: string): Promise<Buffer> {
  if (!file.startsWith('/') || /[\s"\\]/.test(file)) throw new Error(`readGuestFile: unsupported path ${JSON.stringify(file)}`);
  // debugfs prints errors on stderr and still exits 0, so a missing file shows as an error line.
  const { stdout, stderr } = await runTool('debugfs', ['-R', `cat ${file}`, partitionSpec(image)], { timeoutMs: DEBUGFS_TIMEOUT_MS });
  if (/File not found|not found by ext2_lookup/i.test(stderr)) throw new Error(`${file} is not on the guest disk ${image}`);
  return stdout;
}
