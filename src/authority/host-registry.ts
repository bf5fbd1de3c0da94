/**
 * The certificates the authority has issued, one file per host id, served to anyone who asks: a host
 * certificate is public, and clients check it against their pinned CA rather than trusting the source.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AuthorityPaths } from './authority-dir.ts';
import { HOST_ID_PATTERN } from './ca.ts';
import { writePrivateFileAtomic } from '../util/durable-file.ts';

function certificatePath(paths: AuthorityPaths, hostId: string): string {
  // The pattern admits no '/' and no leading '.', so the name cannot leave the hosts directory.
  if (!HOST_ID_PATTERN.test(hostId)) throw new Error(`host id must match ${HOST_ID_PATTERN}`);
  return join(paths.hosts, `${hostId}.pem`);
}

export async function publishHostCertificate(paths: AuthorityPaths, hostId: string, certificatePem: string): Promise<void> {
  await writePrivateFileAtomic(certificatePath(paths, hostId), certificatePem);
}

/** The published certificate of `hostId`, or undefined if the host never enrolled. */
export async function readHostCertificate(paths: AuthorityPaths, hostId: string): Promise<string | undefined> {
  try {
    return await readFile(certificatePath(paths, hostId), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}
