/** The client's check of a host certificate: the shared verifier, also used by the IDS enclave. */
export * from '../crypto/host-certificate.ts';
