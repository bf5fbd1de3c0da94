/**
 * The NV manager key: the host-level key that seals NV ownership and grant tokens (nv-token.ts). It is made
 * once, in the monitor's private state directory (0600 file, created with link() so two monitors starting
 * at once cannot each make their own), and never leaves the monitor. It is kept apart from the SQLite file
 * that holds the tokens, so a copy of the database alone cannot forge them.
 */
import { randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { AEAD_KEY_BYTES } from '../../crypto/aead.ts';
import { createPrivateFile } from '../../util/durable-file.ts';

export const NV_MANAGER_KEY_FILE = 'nv-manager.key';

export async function loadOrCreateNvManagerKey(path: string): Promise<Buffer> {
  try {
    await createPrivateFile(path, randomBytes(AEAD_KEY_BYTES));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = await stat(path);
  if ((st.mode & 0o077) !== 0) throw new Error(`${path} is accessible to other users (mode ${(st.mode & 0o777).toString(8)}); it must be 0600`);
  const key = await readFile(path);
  if (key.length !== AEAD_KEY_BYTES) throw new Error(`${path} holds ${key.length} bytes, not a ${AEAD_KEY_BYTES}-byte key`);
  return key;
}
