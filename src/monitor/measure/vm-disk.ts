/**
 * A running VM's disk as the integrity ops see it: the ProtectedBackend in front of its decrypted
 * backend (write protection from the launch policy, and paths added by `vmseal vm protect`), and
 * scans whose results go back to the tenant a page at a time, so no sealed result outgrows the API.
 * The last scan is kept until the next one starts; that is the only state the pages need.
 */
import { randomBytes } from 'node:crypto';
import { SCAN_PAGE_BYTES, type ScanPage } from '../../formats/protocol/command.ts';
import type { BlockBackend } from '../disk/backend.ts';
import { ProtectedBackend, type WriteRefusal } from '../disk/protected-backend.ts';
import { backendReader, openGuestVolume } from './guest-volume.ts';
import { protectedRangesFor } from './protect-map.ts';
import { scanDisk, type ScanResult } from './scan.ts';

type Page = Array<[string, string]>;

/** Splits the files into pages of at most `budget` JSON bytes (a lone oversized entry gets its own page). */
function paginate(files: ScanResult['files'], budget: number): Page[] {
  const pages: Page[] = [[]];
  let used = 0;
  for (const f of files) {
    const entry: [string, string] = [f.path, f.sha256];
    const size = JSON.stringify(entry).length + 1;
    let last = pages[pages.length - 1] as Page;
    if (last.length > 0 && used + size > budget) {
      last = [];
      pages.push(last);
      used = 0;
    }
    last.push(entry);
    used += size;
  }
  return pages;
}

export class VmDisk {
  #scan: { id: string; result: ScanResult; pages: Page[] } | undefined;

  private constructor(readonly backend: ProtectedBackend, private readonly inner: BlockBackend) {}

  /** Wraps `inner`; `protectedPaths` are mapped on the disk as it is now (before the guest runs). */
  static async open(inner: BlockBackend, protectedPaths: readonly string[], onRefusal: (r: WriteRefusal) => void): Promise<VmDisk> {
    const disk = new VmDisk(new ProtectedBackend(inner, [], onRefusal), inner);
    if (protectedPaths.length > 0) await disk.protect(protectedPaths);
    return disk;
  }

  /** Adds write protection for `paths` (ext4 only); returns how many byte ranges were added. */
  async protect(paths: readonly string[]): Promise<number> {
    const vol = await openGuestVolume(backendReader(this.inner), this.inner.size);
    if (vol.kind !== 'ext4') throw new Error(`write protection maps ext4 only; the disk holds ${vol.kind}`);
    const ranges = await protectedRangesFor(vol.fs, paths, vol.offset);
    this.backend.addRanges(ranges);
    return ranges.length;
  }

  /** Page 0 runs a new scan (of `paths`, or everything); page n > 0 is read from the last scan. */
  async scanPage(page: number, paths?: readonly string[]): Promise<ScanPage> {
    if (page === 0) {
      const result = await scanDisk(backendReader(this.inner), this.inner.size, paths ? { paths } : {});
      this.#scan = { id: randomBytes(8).toString('hex'), result, pages: paginate(result.files, SCAN_PAGE_BYTES) };
    }
    const s = this.#scan;
    if (!s) throw new Error('no scan to page through: ask for page 0 first');
    const entries = s.pages[page];
    if (!entries) throw new Error(`scan ${s.id} has ${s.pages.length} pages, not ${page + 1}`);
    return {
      scanId: s.id,
      filesystem: s.result.filesystem,
      files: s.result.files.length,
      bytesHashed: s.result.bytesHashed,
      unsupported: s.result.unsupported.length,
      missing: s.result.missing.slice(0, 16),
      page,
      pages: s.pages.length,
      entries,
    };
  }
}
