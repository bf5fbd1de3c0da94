// A LUKS keyslot, both ways: the volume key is AF-split, and the split material is encrypted with a key derived
// from the passphrase (AES-XTS, 512-byte sectors, IV 0 at the start of the keyslot area), as LUKS1 and LUKS2's
// "luks2" keyslots do. Unlocking reverses it; the volume-key digest tells a right passphrase from a wrong one.
import { XtsCipher } from '../crypto/xts.ts';
import { afMerge, afSplit } from '../formats/luks2/af.ts';
import { deriveKeyslotKey, type KeyslotKdf } from '../formats/luks2/kdf.ts';

const KEYSLOT_SECTOR = 512;

/** The only cipher this code runs: AES-XTS with a 64-bit little-endian sector IV, 256- or 512-bit keys. */
export const SUPPORTED_CIPHER = 'aes-xts-plain64';

export class UnsupportedCipherError extends Error {
  override readonly name = 'UnsupportedCipherError';
}

/** Checks a LUKS cipher spec (LUKS2 "encryption", or LUKS1 name + "-" + mode) and key size. */
export function checkCipher(spec: string, keyBytes: number, what: string): void {
  if (spec !== SUPPORTED_CIPHER) throw new UnsupportedCipherError(`${what}: cipher "${spec}" is not supported (only ${SUPPORTED_CIPHER})`);
  if (keyBytes !== 32 && keyBytes !== 64) {
    throw new UnsupportedCipherError(`${what}: ${keyBytes * 8}-bit ${spec} keys are not supported (256 or 512 bits)`);
  }
}

export interface KeyslotParams {
  kdf: KeyslotKdf;
  /** Bytes of key the KDF derives for the keyslot cipher. */
  areaKeyBytes: number;
  stripes: number;
  afHash: string;
}

/** Returns the encrypted keyslot material for `volumeKey` (volumeKey.length * stripes bytes). */
export async function sealKeyslot(volumeKey: Buffer, passphrase: Buffer, p: KeyslotParams): Promise<Buffer> {
  checkCipher(SUPPORTED_CIPHER, p.areaKeyBytes, 'keyslot');
  const material = afSplit(volumeKey, p.stripes, p.afHash);
  const key = await deriveKeyslotKey(passphrase, p.kdf, p.areaKeyBytes);
  const padded = padToSector(material);
  try {
    return new XtsCipher(key).encryptSectors(0, KEYSLOT_SECTOR, padded).subarray(0, material.length);
  } finally {
    key.fill(0);
    material.fill(0);
    padded.fill(0);
  }
}

/** Bytes of encrypted material to read for a key of `keyBytes` split into `stripes`. */
export function keyslotMaterialSize(keyBytes: number, stripes: number): number {
  return Math.ceil((keyBytes * stripes) / KEYSLOT_SECTOR) * KEYSLOT_SECTOR;
}

/** Decrypts keyslot material with the passphrase and merges it into a candidate volume key (not yet verified). */
export async function openKeyslot(encrypted: Buffer, passphrase: Buffer, p: KeyslotParams & { keyBytes: number }): Promise<Buffer> {
  const key = await deriveKeyslotKey(passphrase, p.kdf, p.areaKeyBytes);
  try {
    const plain = new XtsCipher(key).decryptSectors(0, KEYSLOT_SECTOR, encrypted.subarray(0, keyslotMaterialSize(p.keyBytes, p.stripes)));
    const vk = afMerge(plain, p.keyBytes, p.stripes, p.afHash);
    plain.fill(0);
    return vk;
  } finally {
    key.fill(0);
  }
}

function padToSector(b: Buffer): Buffer {
  const size = keyslotMaterialSize(b.length, 1);
  if (size === b.length) return b;
  const out = Buffer.alloc(size);
  b.copy(out);
  return out;
}
