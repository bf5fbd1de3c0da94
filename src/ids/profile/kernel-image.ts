/**
 * Facts read straight from a decompressed vmlinux that a profile records: bytes at a link-time
 * address (the banner) and the GNU build id note. Bounded reads only; the image is hostile.
 */
import { SHT_NOBITS, type ElfFile } from '../../formats/elf.ts';

const NT_GNU_BUILD_ID = 3;
const MAX_STRING = 4096;

/** The NUL-terminated string at link-time address `address` (NUL included), if a section holds it. */
export function cStringAt(elf: ElfFile, address: bigint): Uint8Array | undefined {
  for (const s of elf.sections) {
    if (s.type === SHT_NOBITS || s.addr === 0n || address < s.addr || address >= s.addr + BigInt(s.size)) continue;
    const start = s.offset + Number(address - s.addr);
    const end = Math.min(s.offset + s.size, start + MAX_STRING);
    const nul = elf.bytes.subarray(start, end).indexOf(0);
    return nul < 0 ? undefined : elf.bytes.subarray(start, start + nul + 1);
  }
  return undefined;
}

/** The NT_GNU_BUILD_ID descriptor of any SHT_NOTE section, as lowercase hex. */
export function gnuBuildId(elf: ElfFile): string | undefined {
  const little = elf.endian === 'little';
  for (const s of elf.sections) {
    if (s.type !== 7 /* SHT_NOTE */) continue;
    const data = elf.bytes.subarray(s.offset, s.offset + s.size);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const pad4 = (n: number) => (n + 3) & ~3;
    for (let o = 0; o + 12 <= data.length; ) {
      const namesz = view.getUint32(o, little);
      const descsz = view.getUint32(o + 4, little);
      const type = view.getUint32(o + 8, little);
      const nameStart = o + 12;
      const descStart = nameStart + pad4(namesz);
      const next = descStart + pad4(descsz);
      if (namesz > data.length || descsz > data.length || next > data.length) break;
      const name = Buffer.from(data.subarray(nameStart, nameStart + namesz)).toString('latin1');
      if (type === NT_GNU_BUILD_ID && name === 'GNU\0' && descsz > 0) {
        return Buffer.from(data.subarray(descStart, descStart + descsz)).toString('hex');
      }
      o = next;
    }
  }
  return undefined;
}
