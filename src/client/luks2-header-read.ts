// Reads both LUKS2 header copies and picks the one to trust, as cryptsetup does: a copy counts only if its
// binary header, checksum and JSON metadata all validate; of two valid copies the higher seqid wins. If the
// primary is unreadable, the secondary is searched at every offset a hdr_size allows.
import type { FileHandle } from 'node:fs/promises';
import {
  ALLOWED_HDR_SIZES,
  BINARY_HEADER_SIZE,
  MAGIC_SECONDARY,
  parseBinaryHeader,
  verifyHeaderArea,
  type Luks2BinaryHeader,
} from '../formats/luks2/binary-header.ts';
import { LuksFormatError } from '../formats/luks2/errors.ts';
import { parseLuks2Metadata, type Luks2Metadata } from '../formats/luks2/metadata.ts';
import { readExactly } from './image-file.ts';

export interface Luks2HeaderCopy {
  header: Luks2BinaryHeader;
  metadata: Luks2Metadata;
}

export async function readLuks2Header(fh: FileHandle, fileSize: number): Promise<Luks2HeaderCopy> {
  const problems: string[] = [];
  const attempt = async (offset: number): Promise<Luks2HeaderCopy | null> => {
    try {
      if (offset + BINARY_HEADER_SIZE > fileSize) throw new LuksFormatError('beyond the end of the image');
      const bin = parseBinaryHeader(await readExactly(fh, offset, BINARY_HEADER_SIZE, 'LUKS2 header'));
      if (bin.primary !== (offset === 0)) throw new LuksFormatError('wrong magic for this position');
      if (offset + bin.hdrSize > fileSize) throw new LuksFormatError('header area runs past the end of the image');
      const area = await readExactly(fh, offset, bin.hdrSize, 'LUKS2 header area');
      const { header, jsonText } = verifyHeaderArea(area, offset);
      return { header, metadata: parseLuks2Metadata(jsonText, header.hdrSize) };
    } catch (e) {
      if (!(e instanceof LuksFormatError)) throw e;
      problems.push(`header at ${offset}: ${e.message}`);
      return null;
    }
  };

  const primary = await attempt(0);
  let secondary: Luks2HeaderCopy | null = null;
  if (primary) {
    secondary = await attempt(primary.header.hdrSize);
  } else {
    for (const offset of ALLOWED_HDR_SIZES) {
      if (offset + BINARY_HEADER_SIZE > fileSize) break;
      const magic = await readExactly(fh, offset, MAGIC_SECONDARY.length, 'LUKS2 secondary header');
      if (magic.equals(MAGIC_SECONDARY) && (secondary = await attempt(offset))) break;
    }
  }
  if (primary && secondary) {
    if (primary.header.uuid !== secondary.header.uuid) throw new LuksFormatError('LUKS2 header copies carry different UUIDs');
    return secondary.header.seqid > primary.header.seqid ? secondary : primary;
  }
  const chosen = primary ?? secondary;
  if (!chosen) throw new LuksFormatError(`no valid LUKS2 header: ${problems.join('; ')}`);
  return chosen;
}
