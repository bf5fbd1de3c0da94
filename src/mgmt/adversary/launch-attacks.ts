/**
 * ADVERSARY: launch policies for the man in the middle (mitm-proxy.ts). Each is one thing a malicious
 * management plane can do to a tenant's launch with nothing but its own privileges: answer it with a
 * proof it saw before or with its own VM's, swap the disk it stores, or hand over other boot files.
 */
import { storedPath } from '../server.ts';
import type { LaunchAction, LaunchBody, MitmPolicy, RelayedReply } from './mitm-proxy.ts';
import { replaceFile } from './storage-tamper.ts';

type LaunchPolicy = NonNullable<MitmPolicy['launch']>;

/** Answers the launch without forwarding it: an old reply (replayed proof) or the reply of a VM the administrator launched. */
export function answerLaunchWith(reply: RelayedReply): LaunchPolicy {
  return () => ({ answer: reply });
}

/**
 * Lets the tenant's uploads land, then replaces the stored image (and the sidecar, if given) under the
 * name the launch uses with other files (another tenant's, or the administrator's own) before forwarding it.
 */
export function swapDiskBeforeLaunch(storageDir: string, swapIn: { image: string; sidecar?: string }): LaunchPolicy {
  return async (req: LaunchBody): Promise<LaunchAction> => {
    await replaceFile(storedPath(storageDir, 'image', req.image), swapIn.image);
    if (swapIn.sidecar !== undefined) await replaceFile(storedPath(storageDir, 'sidecar', req.image), swapIn.sidecar);
    return { forward: req };
  };
}

/** Points the launch at another stored kernel or initrd (an object the administrator put in storage). */
export function substituteBootFile(kind: 'kernel' | 'initrd', storedName: string): LaunchPolicy {
  return (req: LaunchBody): LaunchAction => ({ forward: { ...req, [kind]: storedName } });
}

/** Overwrites the kernel or initrd the tenant just uploaded, under the same name, before forwarding the launch. */
export function overwriteBootFileBeforeLaunch(storageDir: string, kind: 'kernel' | 'initrd', withFile: string): LaunchPolicy {
  return async (req: LaunchBody): Promise<LaunchAction> => {
    await replaceFile(storedPath(storageDir, kind, req[kind]), withFile);
    return { forward: req };
  };
}
