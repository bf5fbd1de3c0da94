/**
 * A private, writable copy of the demo guest's disk. The cached disk stays pristine (the build
 * cache only checks sizes); `cp --sparse=always` keeps the copy as small as the original.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runTool } from './run-tool.ts';

export interface WorkDisk {
  path: string;
  remove(): Promise<void>;
}

export async function copyGuestDisk(disk: string, prefix = 'vmseal-disk-'): Promise<WorkDisk> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  const copy = path.join(dir, 'disk.raw');
  try {
    await runTool('cp', ['--sparse=always', disk, copy], { timeoutMs: 120_000 });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { path: copy, remove: () => rm(dir, { recursive: true, force: true }) };
}
