/**
 * Finds where KASLR put the kernel in a running x86-64 Linux guest. With CONFIG_RANDOMIZE_BASE the
 * kernel image is moved up from its link address inside the 1 GiB kernel-image window (from
 * __START_KERNEL_map) by a multiple of CONFIG_PHYSICAL_ALIGN (2 MiB in the Debian 6.1 config).
 * The virtual offset is the slide; the physical load address is chosen independently, so it is
 * read back from the page tables. The slide is accepted where the relocated `linux_banner` reads
 * "Linux version ", and only if exactly one candidate does.
 */
import type { GuestReader } from './guest-reader.ts';
import { PhysRangeError } from './guest-memory.ts';
import { linuxKernelRoot, UnmappedError, walk } from './page-walk.ts';

/** __START_KERNEL_map: the base of the kernel-image mapping. */
export const START_KERNEL_MAP = 0xffff_ffff_8000_0000n;
/** KERNEL_IMAGE_SIZE with CONFIG_RANDOMIZE_BASE: the window the image may slide in. */
export const KERNEL_IMAGE_WINDOW = 1n << 30n;
/** CONFIG_PHYSICAL_ALIGN of the guest kernel (checked in its config). */
export const KASLR_ALIGN = 0x20_0000n;
/** `_text` at link time: __START_KERNEL_map + CONFIG_PHYSICAL_START (0x1000000). */
export const LINK_TEXT_VA = 0xffff_ffff_8100_0000n;

const BANNER_PREFIX = Buffer.from('Linux version ', 'latin1');

export class KernelNotFoundError extends Error {
  override readonly name = 'KernelNotFoundError';
}

export interface KernelSearch {
  /** A CR3 of the guest (kernel half shared by all). */
  cr3: bigint;
  /** Link-time address of `linux_banner` (System.map / kallsyms of the kernel build). */
  bannerVa: bigint;
  /** A second symbol whose bytes are known, to confirm the slide. */
  check?: { va: bigint; bytes: Buffer };
  /** Link-time `_text`; default LINK_TEXT_VA. */
  textVa?: bigint;
}

export interface KernelLocation {
  slide: bigint;
  /** Runtime `_text` and the guest-physical address it landed at. */
  textVa: bigint;
  textPa: bigint;
  bannerPa: bigint;
}

function inWindow(va: bigint): boolean {
  return va >= START_KERNEL_MAP && va < START_KERNEL_MAP + KERNEL_IMAGE_WINDOW;
}

export function locateKernel(reader: GuestReader, search: KernelSearch): KernelLocation {
  const textVa = search.textVa ?? LINK_TEXT_VA;
  for (const [what, va] of [['bannerVa', search.bannerVa], ['textVa', textVa], ['check.va', search.check?.va ?? textVa]] as const) {
    if (!inWindow(va)) throw new RangeError(`${what} 0x${va.toString(16)} is not in the kernel-image window`);
  }
  const root = linuxKernelRoot(search.cr3);
  const matches: bigint[] = [];
  reader.batch(() => {
    for (let slide = 0n; inWindow(search.bannerVa + slide); slide += KASLR_ALIGN) {
      if (!bytesAt(reader, root, search.bannerVa + slide, BANNER_PREFIX)) continue;
      if (search.check && !bytesAt(reader, root, search.check.va + slide, search.check.bytes)) continue;
      matches.push(slide);
    }
  });
  if (matches.length === 0) throw new KernelNotFoundError(`no slide puts "Linux version " at linux_banner 0x${search.bannerVa.toString(16)} (CR3 0x${search.cr3.toString(16)})`);
  if (matches.length > 1) throw new KernelNotFoundError(`${matches.length} candidate slides match: ${matches.map((s) => `0x${s.toString(16)}`).join(', ')}`);
  const slide = matches[0]!;
  return {
    slide,
    textVa: textVa + slide,
    textPa: walk(reader.mem, root, textVa + slide, reader.la57).pa,
    bannerPa: walk(reader.mem, root, search.bannerVa + slide, reader.la57).pa,
  };
}

export function findKernelSlide(reader: GuestReader, search: KernelSearch): bigint {
  return locateKernel(reader, search).slide;
}

function bytesAt(reader: GuestReader, root: bigint, va: bigint, expected: Buffer): boolean {
  try {
    return reader.readVirt(root, va, expected.length).equals(expected);
  } catch (err) {
    if (err instanceof UnmappedError || err instanceof PhysRangeError) return false;
    throw err;
  }
}
