/**
 * The monitor's narrow API, the only door from the management plane into the monitor (a unix
 * socket). Everything sensitive crosses it sealed: the bundle, commands, results, identity proofs.
 */
import { z } from 'zod';
import { REFUSALS } from './command.ts';
import { vmIdHex } from './fields.ts';

const base64Blob = (maxBytes: number) =>
  z
    .string()
    .max(Math.ceil(maxBytes / 3) * 4)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64');

const storagePath = z.string().min(1).max(4096).refine((p) => p.startsWith('/') && !p.includes('\0'), 'must be an absolute path');

export const launchRequestSchema = z.strictObject({
  bundle: base64Blob(80 * 1024),
  image: storagePath,
  /** The integrity sidecar; an XTS-only disk (bundle `disk.integrity: 'none'`) has none. */
  sidecar: storagePath.optional(),
  kernel: storagePath,
  initrd: storagePath,
});
export type LaunchRequestWire = z.infer<typeof launchRequestSchema>;

export const launchResponseSchema = z.strictObject({ vmId: vmIdHex, identityProof: base64Blob(4096) });
export type LaunchResponseWire = z.infer<typeof launchResponseSchema>;

export const commandRequestSchema = z.strictObject({ command: base64Blob(8192) });
export const commandResponseSchema = z.strictObject({ result: base64Blob(8192) });

export const vmIdParamsSchema = z.strictObject({ vmId: vmIdHex });

export const errorResponseSchema = z.strictObject({
  error: z.string(),
  code: z.union([z.enum(REFUSALS), z.enum(['BAD_REQUEST', 'NOT_FOUND', 'INTERNAL'])]),
});
export type ErrorResponseWire = z.infer<typeof errorResponseSchema>;

export const hostResponseSchema = z.strictObject({ hostId: z.string(), certificate: z.string() });

export const alertsQuerySchema = z.strictObject({ after: z.coerce.number().int().min(0).default(0) });
