/**
 * The sealed launch bundle (ARCHITECTURE.md protocol 2, seed 004's encrypted header): everything the
 * monitor needs to boot exactly the tenant's VM, HPKE-sealed by the tenant to the host's certified key.
 * The management plane carries it without being able to read or change it.
 */
import { z } from 'zod';
import { base64Bytes, decodeJson, hostIdField, sha256Hex, vmNameField } from './fields.ts';

/** HPKE `info` for the bundle; the host id is the HPKE `aad`, so a bundle opens only on its host. */
export const LAUNCH_BUNDLE_INFO = 'vmseal/v1/launch-bundle';
export const LAUNCH_BUNDLE_MAX_BYTES = 64 * 1024;

/** An absolute path inside the guest's file system (write protection, scans). */
export const guestPathField = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => p.startsWith('/') && !p.includes('\0'), 'must be an absolute path without NUL');

/** At most this many protected paths per VM (each may be a directory, protected recursively). */
export const MAX_PROTECTED_PATHS = 256;

export const launchBundleSchema = z.strictObject({
  v: z.literal(1),
  hostId: hostIdField,
  name: vmNameField,
  /** The 64-byte LUKS2 volume key: the disk key and the root of every other VM key. */
  volumeKey: base64Bytes(64),
  kernelSha256: sha256Hex,
  initrdSha256: sha256Hex,
  /** The exact kernel command line. */
  cmdline: z.string().max(4096).refine((s) => !/[\x00-\x1f\x7f]/.test(s), 'must not contain control characters'),
  disk: z
    .strictObject({
      payloadOffset: z.number().int().min(0).max(2 ** 40),
      sectorSize: z.literal(4096),
      sectors: z.number().int().min(1).max(2 ** 32),
      /**
       * 'tree' (also when absent): every sector checked against the integrity tree. 'none': XTS only, the tenant's
       * explicit choice; a flipped, moved or rolled-back sector goes undetected (docs/sealed-disk.md).
       */
      integrity: z.enum(['tree', 'none']).optional(),
      /** The integrity root at sealing time, used until the monitor holds a newer one for this image ('tree' only). */
      integrityRoot: sha256Hex.optional(),
    })
    .refine((d) => (d.integrity !== 'none') === (d.integrityRoot !== undefined), 'integrityRoot is required with integrity "tree" and forbidden with "none"'),
  launchNonce: base64Bytes(16),
  policy: z.strictObject({
    /** IDS enclave measurements (SHA-256) the tenant allows to introspect this VM. */
    idsMeasurements: z.array(sha256Hex).max(64),
    /** Guest files and directories whose disk blocks the monitor write-protects (docs/integrity.md); absent: none. */
    protectedPaths: z.array(guestPathField).max(MAX_PROTECTED_PATHS).optional(),
  }),
});

export type LaunchBundle = z.output<typeof launchBundleSchema>;
export type LaunchBundleInput = z.input<typeof launchBundleSchema>;

export function encodeLaunchBundle(bundle: LaunchBundle): Buffer {
  const wire: LaunchBundleInput = {
    ...bundle,
    volumeKey: bundle.volumeKey.toString('base64'),
    launchNonce: bundle.launchNonce.toString('base64'),
  };
  const bytes = Buffer.from(JSON.stringify(wire), 'utf8');
  decodeLaunchBundle(bytes); // never emit what the monitor would refuse
  return bytes;
}

export function decodeLaunchBundle(bytes: Uint8Array): LaunchBundle {
  return decodeJson('launch bundle', launchBundleSchema, bytes, LAUNCH_BUNDLE_MAX_BYTES);
}
