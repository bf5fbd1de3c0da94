/**
 * Builds the IDS's kernel profile (a Volatility ISF) from the kernel image alone, with no debug
 * package: the bzImage is unpacked, types come from the vmlinux's `.BTF` section and addresses from
 * the kernel's own kallsyms tables. The banner is stored as linux_banner's constant_data (how
 * Volatility matches a profile to a memory image), the build id as vmlinux_build_id's, and the
 * SHA-256 of the image in the metadata.
 */
import { createHash } from 'node:crypto';
import { convertBtfToIsf, type IsfSymbolInput } from '../../formats/btf-to-isf.ts';
import { parseBtf } from '../../formats/btf/parse-btf.ts';
import { unpackBzImage } from '../../formats/bzimage.ts';
import { findSection, parseElf, SHT_NOBITS } from '../../formats/elf.ts';
import type { IsfProfile } from '../../formats/isf.ts';
import { findKallsyms } from '../../formats/kallsyms.ts';
import { IDS_PROFILE_REQUIREMENTS } from './ids-requirements.ts';
import { cStringAt, gnuBuildId } from './kernel-image.ts';

export class ProfileError extends Error {
  override name = 'ProfileError';
}

export interface ProfileOptions {
  /** Every type and symbol instead of IDS_PROFILE_REQUIREMENTS. */
  all?: boolean | undefined;
  /** Name recorded for the image in the metadata (default "vmlinuz"). */
  sourceName?: string | undefined;
  /** Producer timestamp; defaults to now. */
  datetime?: string | undefined;
}

export interface ProfileBuild {
  profile: IsfProfile;
  missing: { types: string[]; symbols: string[] };
  banner: string | undefined;
  buildId: string | undefined;
  sha256: string;
  /** How the kernel was packed ('elf' when given an uncompressed vmlinux). */
  compression: string;
  btfTypes: number;
  kallsymsSymbols: number;
}

export const PRODUCER = { name: 'vmseal', version: '0.1.0' } as const;

export function buildProfile(vmlinuz: Uint8Array, opts: ProfileOptions = {}): IsfProfile {
  return buildProfileWithReport(vmlinuz, opts).profile;
}

export function buildProfileWithReport(image: Uint8Array, opts: ProfileOptions = {}): ProfileBuild {
  const sha256 = createHash('sha256').update(image).digest('hex');
  const isElf = image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;
  let vmlinux: Uint8Array;
  let compression = 'elf';
  if (isElf) vmlinux = image;
  else {
    try {
      const unpacked = unpackBzImage(image);
      vmlinux = unpacked.vmlinux;
      compression = unpacked.compression;
    } catch (err) {
      throw new ProfileError(`not a Linux kernel image (neither a bzImage nor an ELF vmlinux): ${messageOf(err)}`);
    }
  }
  const elf = wrap('the kernel is not a usable ELF vmlinux', () => parseElf(vmlinux));
  const btfSection = findSection(elf, '.BTF');
  if (!btfSection || btfSection.type === SHT_NOBITS) {
    throw new ProfileError('the kernel has no .BTF section (built without CONFIG_DEBUG_INFO_BTF); a profile needs its types');
  }
  const btf = wrap('the kernel BTF is invalid', () => parseBtf(elf.bytes.subarray(btfSection.offset, btfSection.offset + btfSection.size)));
  const kallsyms = wrap('the kernel symbol table (kallsyms) was not found', () => findKallsyms(vmlinux));

  const bannerAddress = kallsyms.lookup('linux_banner');
  const bannerBytes = bannerAddress === undefined ? undefined : cStringAt(elf, bannerAddress);
  const buildId = gnuBuildId(elf);
  const symbols: IsfSymbolInput[] = kallsyms.symbols.map((s) => ({
    name: s.name,
    address: s.address,
    type: s.type,
    constantData: constantDataFor(s.name, bannerBytes, buildId),
  }));

  const { profile, missing } = wrap('the profile could not be built', () =>
    convertBtfToIsf(btf, symbols, {
      only: opts.all ? undefined : IDS_PROFILE_REQUIREMENTS,
      symbolTypes: IDS_PROFILE_REQUIREMENTS.symbolTypes,
      metadata: {
        producer: { ...PRODUCER, datetime: opts.datetime ?? new Date().toISOString() },
        source: { name: opts.sourceName ?? 'vmlinuz', sha256 },
      },
    }),
  );
  return {
    profile,
    missing,
    banner: bannerBytes && Buffer.from(bannerBytes.subarray(0, bannerBytes.length - 1)).toString('latin1'),
    buildId,
    sha256,
    compression,
    btfTypes: btf.types.length,
    kallsymsSymbols: kallsyms.symbols.length,
  };
}

function constantDataFor(name: string, banner: Uint8Array | undefined, buildId: string | undefined): Uint8Array | undefined {
  if (name === 'linux_banner') return banner;
  if (name === 'vmlinux_build_id' && buildId) return Buffer.from(buildId, 'hex');
  return undefined;
}

function wrap<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof ProfileError) throw err;
    throw new ProfileError(`${what}: ${messageOf(err)}`);
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
