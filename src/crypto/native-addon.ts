/**
 * Loads one of the project's N-API addons (native/*.c, built by node-gyp into build/Release during
 * `npm ci`). Lazily, by the caller, so that importing a module that uses an addon never fails by itself;
 * a missing build is one clear error saying how to make it.
 */
import { createRequire } from 'node:module';

export function loadNativeAddon<T>(name: string, what: string): T {
  try {
    return createRequire(import.meta.url)(`../../build/Release/${name}.node`) as T;
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(`native ${what} addon is not built (run \`npm ci\` or \`npm exec -c 'node-gyp rebuild'\` in the repository root): ${why}`);
  }
}
