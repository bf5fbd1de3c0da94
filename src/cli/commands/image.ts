import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { openImage } from '../../client/image-import.ts';
import { sealImage } from '../../client/image-seal.ts';
import { buildSidecarForImage, IntegritySidecarWriter, sidecarPathFor } from '../../client/integrity-sidecar-writer.ts';
import { createProgress } from '../progress.ts';

/** The passphrase is the file's bytes exactly, as `cryptsetup --key-file` reads it (a trailing newline counts). */
export async function readPassphraseFile(file: string): Promise<Buffer> {
  const pass = await readFile(file);
  if (pass.length === 0) throw new Error(`passphrase file ${file} is empty`);
  return pass;
}

const SECTOR = 4096;

/** `vmseal image …`: the tenant turns raw disks into sealed images, or brings in cryptsetup's. */
export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('sealed disk images: LUKS2 (aes-xts-plain64, 4096-byte sectors) plus an integrity sidecar');
  registerImageImport(image);

  image
    .command('seal')
    .description('encrypt a raw disk into a LUKS2 image and write its integrity sidecar (IMG.integrity)')
    .requiredOption('--in <raw>', 'raw disk image')
    .requiredOption('--out <img>', 'sealed image to write')
    .requiredOption('--passphrase-file <file>', "the keyslot passphrase (the file's exact bytes)")
    .option('--pbkdf <pbkdf2|argon2id>', 'keyslot key derivation', 'argon2id')
    .option('--force', 'replace an existing output image and sidecar')
    .option('--no-integrity', 'write no sidecar: for an XTS-only disk (flipped, moved or rolled-back sectors go undetected)')
    .action(async (opts: { in: string; out: string; passphraseFile: string; pbkdf: string; force?: boolean; integrity: boolean }) => {
      if (opts.pbkdf !== 'pbkdf2' && opts.pbkdf !== 'argon2id') throw new Error(`--pbkdf must be pbkdf2 or argon2id, not ${opts.pbkdf}`);
      const passphrase = await readPassphraseFile(opts.passphraseFile);
      const progress = createProgress(process.stderr, 'image: ');
      const sidecarPath = sidecarPathFor(opts.out);
      let writer: IntegritySidecarWriter | undefined;
      try {
        progress.onProgress(`sealing ${opts.in} -> ${opts.out} (key derivation first: ${opts.pbkdf})`);
        const sealed = await sealImage({
          input: opts.in,
          output: opts.out,
          passphrase,
          pbkdf: opts.pbkdf,
          overwrite: opts.force ?? false,
          onProgress: (done, total) => progress.onTransfer(done, total),
          onStart: async ({ volumeKey, sectors }) => {
            if (opts.integrity) writer = await IntegritySidecarWriter.create(sidecarPath, volumeKey, sectors, { overwrite: opts.force ?? false });
          },
          onCiphertext: (firstSector, ciphertext) => writer?.add(firstSector, ciphertext),
        });
        const root = await writer?.finish();
        progress.stop();
        process.stdout.write(
          `sealed ${opts.out}: LUKS2 aes-xts-plain64, ${sealed.sectors} sectors of ${SECTOR} bytes, payload at ${sealed.payloadOffset}, uuid ${sealed.uuid}\n` +
            (root ? `integrity sidecar ${sidecarPath}, root ${root.toString('hex')}\n` : 'no integrity sidecar (XTS only: launch with vmseal vm launch --no-integrity)\n'),
        );
      } finally {
        progress.stop();
      }
    });
}

export function registerImageImport(image: Command): void {
  image
    .command('import')
    .description('check an image made by cryptsetup luksFormat (LUKS2 or LUKS1) opens with its passphrase, and write its integrity sidecar')
    .requiredOption('--in <img>', 'the LUKS image')
    .requiredOption('--passphrase-file <file>', "a keyslot passphrase (the file's exact bytes)")
    .option('--force', 'replace an existing sidecar')
    .action(async (opts: { in: string; passphraseFile: string; force?: boolean }) => {
      const passphrase = await readPassphraseFile(opts.passphraseFile);
      process.stderr.write(`image: unlocking ${opts.in}\n`);
      const img = await openImage({ path: opts.in, passphrase });
      process.stderr.write(`image: ${img.format} ${img.cipher}, ${img.keyBits}-bit key, ${img.sectorSize}-byte sectors; hashing the ciphertext\n`);
      const built = await buildSidecarForImage(opts.in, img.volumeKey, img.payloadOffset, { overwrite: opts.force ?? false });
      process.stdout.write(
        `imported ${opts.in}: ${img.format}, keyslot ${img.keyslot} opened, payload at ${img.payloadOffset}, ${built.sectors} sectors of ${SECTOR} bytes\n` +
          `integrity sidecar ${built.sidecarPath}, root ${built.root.toString('hex')}\n` +
          (img.sectorSize === SECTOR ? '' : `note: ${img.sectorSize}-byte encryption sectors; vmseal vm launch needs 4096 (re-seal with vmseal image seal)\n`),
      );
    });
}
