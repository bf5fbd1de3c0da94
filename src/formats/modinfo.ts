/**
 * The `.modinfo` section of a Linux kernel module: NUL-separated `key=value` strings
 * (name=, vermagic=, depends=, alias=, parm=, ...). Keys such as alias and parm repeat;
 * name, vermagic and depends must appear at most once.
 */

export class ModinfoError extends Error {
  override name = 'ModinfoError';
}

export interface ModinfoEntry {
  key: string;
  value: string;
}

export interface Modinfo {
  entries: ModinfoEntry[];
  name: string | undefined;
  vermagic: string | undefined;
  /** Module names from depends=, normalised with '_' for '-' as the kernel does. */
  depends: string[];
}

const KEY = /^[A-Za-z_][A-Za-z0-9_.]*$/;
const MODULE_NAME = /^[A-Za-z0-9_-]+$/;
const SINGLE_KEYS = new Set(['name', 'vermagic', 'depends']);
const strict = new TextDecoder('utf-8', { fatal: true });

/** The kernel treats '-' and '_' in module names as the same character. */
export function normalizeModuleName(name: string): string {
  return name.replaceAll('-', '_');
}

export function parseModinfo(section: Uint8Array): Modinfo {
  let text: string;
  try {
    text = strict.decode(section);
  } catch {
    throw new ModinfoError('.modinfo is not valid UTF-8');
  }
  const entries: ModinfoEntry[] = [];
  const seen = new Set<string>();
  // Entries are padded with extra NULs for alignment, so empty strings are skipped.
  for (const raw of text.split('\0')) {
    if (raw === '') continue;
    const eq = raw.indexOf('=');
    if (eq <= 0) throw new ModinfoError(`.modinfo entry ${JSON.stringify(raw.slice(0, 80))} is not key=value`);
    const key = raw.slice(0, eq);
    if (!KEY.test(key)) throw new ModinfoError(`.modinfo key ${JSON.stringify(key.slice(0, 80))} is malformed`);
    if (SINGLE_KEYS.has(key)) {
      if (seen.has(key)) throw new ModinfoError(`.modinfo has more than one ${key}=`);
      seen.add(key);
    }
    entries.push({ key, value: raw.slice(eq + 1) });
  }
  const value = (key: string) => entries.find((e) => e.key === key)?.value;
  const name = value('name');
  if (name !== undefined && !MODULE_NAME.test(name)) throw new ModinfoError(`module name ${JSON.stringify(name)} is malformed`);
  const dependsRaw = value('depends') ?? '';
  const depends = dependsRaw === '' ? [] : dependsRaw.split(',');
  for (const dep of depends) {
    if (!MODULE_NAME.test(dep)) throw new ModinfoError(`depends= lists a malformed module name ${JSON.stringify(dep)}`);
  }
  return {
    entries,
    name: name === undefined ? undefined : normalizeModuleName(name),
    vermagic: value('vermagic'),
    depends: [...new Set(depends.map(normalizeModuleName))],
  };
}
