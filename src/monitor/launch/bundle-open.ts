/**
 * The monitor's side of the sealed launch: open the bundle with the host's private key and take the
 * kernel and initrd the management plane offers only if they are exactly the ones the tenant named.
 * The files are copied into the monitor's private run dir while they are hashed, and QEMU boots the
 * copies: the management plane cannot swap a file between the check and the boot.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { HpkeError, openCompact } from '../../crypto/hpke.ts';
import { ProtocolError } from '../../formats/protocol/fields.ts';
import { decodeLaunchBundle, LAUNCH_BUNDLE_INFO, type LaunchBundle } from '../../formats/protocol/launch-bundle.ts';
import { RefusalError } from '../identity/refusal.ts';

export interface HostIdentity {
  hostId: string;
  privateKey: Buffer;
}

export async function openLaunchBundle(host: HostIdentity, sealed: Uint8Array): Promise<LaunchBundle> {
  let plaintext: Buffer;
  try {
    plaintext = await openCompact(host.privateKey, sealed, { info: Buffer.from(LAUNCH_BUNDLE_INFO), aad: Buffer.from(host.hostId) });
  } catch (err) {
    if (err instanceof HpkeError) throw new RefusalError('TAMPER', `launch bundle does not open on host ${host.hostId} (${err.code}): altered, or sealed to another host`);
    throw err;
  }
  try {
    const bundle = decodeLaunchBundle(plaintext);
    if (bundle.hostId !== host.hostId) throw new RefusalError('TAMPER', `launch bundle names host ${bundle.hostId}`);
    return bundle;
  } catch (err) {
    if (err instanceof ProtocolError) throw new RefusalError('TAMPER', err.message);
    throw err;
  }
}

/** Copies `from` to `to` and returns the SHA-256 (hex) of exactly the bytes written. */
async function copyHashing(from: string, to: string): Promise<string> {
  const h = createHash('sha256');
  const tap = new Transform({
    transform(chunk: Buffer, _enc, done) {
      h.update(chunk);
      done(null, chunk);
    },
  });
  await pipeline(createReadStream(from), tap, createWriteStream(to, { mode: 0o600, flags: 'wx' }));
  return h.digest('hex');
}

export interface BootFiles {
  kernel: string;
  initrd: string;
}

/** Private copies of the offered kernel and initrd in `privateDir`, refused (BAD_KERNEL) unless they match the bundle. */
export async function takeBootFiles(bundle: LaunchBundle, offered: BootFiles, privateDir: string): Promise<BootFiles> {
  const kernel = path.join(privateDir, 'vmlinuz');
  const initrd = path.join(privateDir, 'initrd.img');
  const [kHash, iHash] = await Promise.all([copyHashing(offered.kernel, kernel), copyHashing(offered.initrd, initrd)]);
  if (kHash !== bundle.kernelSha256) throw new RefusalError('BAD_KERNEL', `kernel ${offered.kernel} has SHA-256 ${kHash}, the tenant sealed ${bundle.kernelSha256}`);
  if (iHash !== bundle.initrdSha256) throw new RefusalError('BAD_KERNEL', `initrd ${offered.initrd} has SHA-256 ${iHash}, the tenant sealed ${bundle.initrdSha256}`);
  return { kernel, initrd };
}
