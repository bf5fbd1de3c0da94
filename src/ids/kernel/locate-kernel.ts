/**
 * Finds the KASLR slide from outside the guest: read `linux_banner` at every slide x86-64 KASLR can
 * choose (2 MiB steps, CONFIG_PHYSICAL_ALIGN, over the 1 GiB kernel image area) in one batched
 * request, and take the single candidate that reads "Linux version ". Unmapped candidates simply
 * fail to read.
 */
import type { MemorySource, ReadOp } from '../../formats/protocol/ids-read.ts';
import { readBatched } from './batched-reads.ts';
import { cString } from './kobject.ts';
import type { TypeModel } from './type-model.ts';

/** __START_KERNEL_map: the kernel image lives in the 1 GiB above it (KERNEL_IMAGE_SIZE with KASLR). */
const KERNEL_MAP_START = 0xffffffff80000000n;
const KERNEL_IMAGE_SIZE = 1n << 30n;
const SLIDE_STEP = 2n << 20n;
const BANNER_PREFIX = 'Linux version ';
/** Enough for the whole banner line of a distribution kernel. */
const BANNER_READ = 256;

export interface KernelLocation {
  slide: bigint;
  banner: string;
}

export async function locateKernel(source: MemorySource, model: TypeModel): Promise<KernelLocation> {
  const banner = model.symbolAddress('linux_banner');
  if (banner < KERNEL_MAP_START || banner >= KERNEL_MAP_START + KERNEL_IMAGE_SIZE) throw new Error(`linux_banner 0x${banner.toString(16)} is outside the kernel image area`);
  const slides: bigint[] = [];
  for (let s = 0n; banner + s + BigInt(BANNER_READ) <= KERNEL_MAP_START + KERNEL_IMAGE_SIZE; s += SLIDE_STEP) slides.push(s);
  const ops: ReadOp[] = slides.map((s) => ({ kind: 'kv', addr: banner + s, len: BANNER_READ }));
  const res = await readBatched(source, ops);
  const hits: KernelLocation[] = [];
  res.forEach((r, i) => {
    if (r.ok && r.data.subarray(0, BANNER_PREFIX.length).toString('latin1') === BANNER_PREFIX)
      hits.push({ slide: slides[i] as bigint, banner: cString(r.data).trimEnd() });
  });
  if (hits.length === 0) throw new Error('kernel not found: no candidate slide maps linux_banner');
  if (hits.length > 1) throw new Error(`kernel location ambiguous: ${hits.length} slides read a banner`);
  return hits[0] as KernelLocation;
}
