// TPM 2.0 wire format: commands, responses, NV, PCRs, public areas, attestation.
export * from './constants.ts';
export * from './command-codes.ts';
export * from './bytes.ts';
export * from './command.ts';
export * from './pcr.ts';
export * from './public.ts';
export * from './nv.ts';
export * from './attest.ts';
export * from './builders.ts';
export * from './session.ts';
export * from './vmseal-vendor.ts';
export * from './capability.ts';
