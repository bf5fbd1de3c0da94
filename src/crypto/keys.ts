/**
 * The VM key schedule. A tenant VM has one secret, its 64-byte LUKS2 volume key VK; every other VM
 * key is derived from it with HKDF-SHA256 (RFC 5869), so sealing VK to the host seals them all and
 * no key ever serves two purposes.
 *
 *   K_label = HKDF-SHA256(IKM = VK, salt = "vmseal/v1/vm-key-schedule", info = "vmseal/v1/<label>", L = 32)
 *
 * Labels and their info strings (ASCII), one per use:
 *   identity  "vmseal/v1/identity"   AEAD key of the identity proof returned at launch
 *   command   "vmseal/v1/command"    AEAD key of sealed management commands and their results
 *   console   "vmseal/v1/console"    AEAD key of the encrypted serial console frames
 *   integrity "vmseal/v1/integrity"  key of the integrity tree over ciphertext sectors
 *   vtpm      "vmseal/v1/vtpm"       key protecting the VM's vTPM state
 *   heartbeat "vmseal/v1/heartbeat"  HMAC key of the IDS heartbeat answers
 * The fixed salt separates this schedule from any other HKDF use of VK; the "v1" lets a later schedule
 * coexist without ever producing the same key.
 */
import { hkdfSync } from 'node:crypto';

export const VOLUME_KEY_BYTES = 64;
export const VM_KEY_BYTES = 32;
export const VM_KEY_SALT = 'vmseal/v1/vm-key-schedule';
export const VM_KEY_LABELS = ['identity', 'command', 'console', 'integrity', 'vtpm', 'heartbeat'] as const;
export type VmKeyLabel = (typeof VM_KEY_LABELS)[number];

/** The HKDF info string of a label, e.g. "vmseal/v1/identity". */
export function vmKeyInfo(label: VmKeyLabel): string {
  return `vmseal/v1/${label}`;
}

/** HKDF-SHA256 (extract then expand), `length` bytes of output (at most 255 * 32). */
export function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Buffer {
  if (!Number.isInteger(length) || length < 1 || length > 255 * 32) {
    throw new RangeError(`HKDF-SHA256 output length must be 1..${255 * 32}, got ${length}`);
  }
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, length));
}

export function deriveVmKey(vk: Uint8Array, label: VmKeyLabel): Buffer {
  if (!(vk instanceof Uint8Array) || vk.length !== VOLUME_KEY_BYTES) {
    throw new RangeError(`volume key must be ${VOLUME_KEY_BYTES} bytes`);
  }
  if (!(VM_KEY_LABELS as readonly string[]).includes(label)) {
    throw new RangeError(`unknown VM key label ${JSON.stringify(label)}`);
  }
  return hkdfSha256(vk, Buffer.from(VM_KEY_SALT, 'ascii'), Buffer.from(vmKeyInfo(label), 'ascii'), VM_KEY_BYTES);
}

/** HKDF info of a console session key; both ends contribute a nonce (the salt). */
export const CONSOLE_SESSION_INFO = 'vmseal/v1/console-session';

/** One sealed-console session's key: fresh whenever either side's nonce is. */
export function deriveConsoleSessionKey(consoleKey: Uint8Array, tenantNonce: Uint8Array, monitorNonce: Uint8Array): Buffer {
  if (consoleKey.length !== VM_KEY_BYTES) throw new RangeError(`console key must be ${VM_KEY_BYTES} bytes`);
  return hkdfSha256(consoleKey, Buffer.concat([tenantNonce, monitorNonce]), Buffer.from(CONSOLE_SESSION_INFO, 'ascii'), VM_KEY_BYTES);
}
