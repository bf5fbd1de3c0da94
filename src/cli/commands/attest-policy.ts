/**
 * `vmseal attest policy create --image IMG [--passphrase-file F] --out policy.json`: a Keylime runtime
 * policy built offline from a guest disk image (raw, or sealed and opened with its passphrase), for
 * `vmseal attest quote|watch --policy`.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { parseRuntimePolicy } from '../../authority/attest/runtime-policy.ts';
import { findFilesystem, openDisk, windowed } from '../../client/disk-reader.ts';
import { buildRuntimePolicy, DEFAULT_EXCLUDES } from '../../client/runtime-policy-builder.ts';
import { Ext4 } from '../../formats/ext4/index.ts';
import { readPassphraseFile } from './image.ts';

interface CreateOptions {
  image: string;
  passphraseFile?: string;
  out: string;
  allFiles?: boolean;
  exclude?: string[];
  noDefaultExcludes?: boolean;
  defaultExcludes: boolean;
}

export function registerAttestPolicyCommands(attest: Command): void {
  const policy = attest.command('policy').description('Keylime runtime policies for the IMA check');
  policy
    .command('create')
    .description('hash every executable and library of a guest image into a Keylime runtime policy')
    .requiredOption('--image <img>', 'guest disk image: raw (MBR + ext4, or bare ext4) or sealed (LUKS)')
    .option('--passphrase-file <file>', "open a sealed image with this keyslot passphrase (the file's exact bytes)")
    .requiredOption('--out <file>', 'where to write the policy JSON')
    .option('--all-files', 'list every regular file, for IMA policies that also measure reads (ima_policy=tcb)')
    .option('--exclude <regex...>', 'extra exclude regexes (Python syntax, matched at the start of the path)')
    .option('--no-default-excludes', `do not add the default excludes (${DEFAULT_EXCLUDES.join(' ')})`)
    .action(async (o: CreateOptions) => {
      const disk = await openDisk(o.image, o.passphraseFile ? await readPassphraseFile(o.passphraseFile) : undefined);
      try {
        const part = await findFilesystem(disk);
        const fs = await Ext4.open(windowed(disk.read, part.offset, part.size));
        const excludes = [...(o.defaultExcludes ? DEFAULT_EXCLUDES : []), ...(o.exclude ?? [])];
        const built = await buildRuntimePolicy(fs, { allFiles: o.allFiles ?? false, excludes });
        const text = `${JSON.stringify(built.policy, null, 2)}\n`;
        parseRuntimePolicy(text); // what we write must be what the verifier accepts
        await writeFile(o.out, text, { mode: 0o644 });
        process.stdout.write(`wrote ${o.out}: ${built.files} files, ${excludes.length} excludes\n`);
        for (const s of built.skipped) process.stderr.write(`skipped (too large): ${s}\n`);
      } finally {
        await disk.close();
      }
    });
}
