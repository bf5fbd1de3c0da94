/**
 * What every party agrees on about host certificates: the host id syntax (the certificate's CN) and
 * the extended-key-usage OID that marks a certificate's X25519 key as a vmseal host HPKE key. The OID
 * is under the 2.25 (UUID) arc, derived from a random UUID, so it needs no registered enterprise number.
 */
export const VMSEAL_HOST_HPKE_KEY_OID = '2.25.86424346043608912508292330856833177479';

export const HOST_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
