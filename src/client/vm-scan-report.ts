/**
 * `vmseal vm scan`: the scan's digests (opened from sealed pages) compared with the tenant's
 * baseline here, on the tenant's side; the monitor never needs the baseline.
 */
import { diffBaseline, makeBaseline, type Baseline, type BaselineDiff } from '../formats/file-baseline.ts';
import { formatMeasurementList } from '../formats/ima-ng-list.ts';
import type { ScanPage } from '../formats/protocol/command.ts';

export interface VmScanReport {
  filesystem: 'ext4' | 'ntfs';
  files: number;
  bytesHashed: number;
  unsupported: number;
  missing: string[];
  diff?: BaselineDiff;
}

function inScope(paths: readonly string[] | undefined, ntfs: boolean): ((p: string) => boolean) | undefined {
  if (!paths?.length) return undefined;
  const norm = (p: string) => (ntfs ? p.toLowerCase() : p);
  const roots = paths.map((p) => norm(`/${p.split('/').filter(Boolean).join('/')}`));
  return (p) => roots.some((r) => r === '/' || norm(p) === r || norm(p).startsWith(`${r}/`));
}

export function scanReport(head: ScanPage, files: ReadonlyArray<[string, string]>, baseline?: Baseline, paths?: readonly string[]): VmScanReport {
  const report: VmScanReport = { filesystem: head.filesystem, files: head.files, bytesHashed: head.bytesHashed, unsupported: head.unsupported, missing: head.missing };
  if (baseline) {
    if (baseline.filesystem !== head.filesystem) throw new Error(`baseline is for ${baseline.filesystem}, the disk holds ${head.filesystem}`);
    report.diff = diffBaseline(baseline, new Map(files), inScope(paths, head.filesystem === 'ntfs'));
  }
  return report;
}

/** The scan as a baseline file (for the next scan's --baseline). */
export function scanBaseline(head: ScanPage, files: ReadonlyArray<[string, string]>): Baseline {
  return makeBaseline(head.filesystem, new Map(files));
}

/** The IMA-style measurement list (src/formats/ima-ng-list.ts). */
export function scanMeasurementList(files: ReadonlyArray<[string, string]>): string {
  return formatMeasurementList(files.map(([path, sha256]) => ({ path, sha256 })));
}
