import type { Command } from 'commander';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { serializeIsf } from '../../formats/isf.ts';
import { buildProfileWithReport } from '../../ids/profile/build-profile.ts';

/** Upper bound on a kernel image read into memory; real bzImages are tens of MB. */
const MAX_IMAGE_BYTES = 256 * 1024 * 1024;

/**
 * `vmseal ids ...`: the offloaded intrusion detector. Returns the group so other commands (run,
 * checks, heartbeat) are added to the same `ids` command.
 */
export function registerIdsCommands(program: Command): Command {
  const ids = program.command('ids').description('the offloaded intrusion detector and its kernel profiles');
  ids
    .command('profile')
    .description('build a kernel profile (Volatility ISF JSON) from a kernel image, using its BTF and kallsyms')
    .argument('<vmlinuz>', 'the guest kernel: a bzImage, or an uncompressed ELF vmlinux')
    .requiredOption('--out <file>', 'where to write the profile JSON')
    .option('--all', 'every type and symbol, not only those the IDS needs')
    .action(async (vmlinuz: string, opts: { out: string; all?: boolean }) => {
      const started = performance.now();
      const size = (await stat(vmlinuz)).size;
      if (size > MAX_IMAGE_BYTES) throw new Error(`${vmlinuz} is ${size} bytes, larger than any kernel image`);
      const image = await readFile(vmlinuz);
      const build = buildProfileWithReport(image, { all: opts.all ?? false, sourceName: basename(vmlinuz) });
      const text = serializeIsf(build.profile);
      // Write-then-rename: a reader never sees half a profile.
      const tmp = `${opts.out}.tmp-${process.pid}`;
      await writeFile(tmp, text);
      await rename(tmp, opts.out);
      const p = build.profile;
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      process.stdout.write(
        `${opts.out}: ${Object.keys(p.user_types).length} types, ${Object.keys(p.enums).length} enums, ` +
          `${Object.keys(p.symbols).length} symbols, ${text.length} bytes in ${seconds}s` +
          ` (kernel ${build.banner?.split(' ')[2] ?? 'unknown'}, build id ${build.buildId ?? 'none'})\n`,
      );
      const missing = [...build.missing.types.map((t) => `type ${t}`), ...build.missing.symbols.map((s) => `symbol ${s}`)];
      if (missing.length > 0) process.stderr.write(`vmseal ids profile: this kernel lacks ${missing.join(', ')}\n`);
    });
  return ids;
}
