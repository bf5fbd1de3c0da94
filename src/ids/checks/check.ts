/**
 * What every check is: something that scans a kernel view and returns alerts with their evidence.
 * Checks may keep state between scans (privesc remembers credentials), so the registry holds
 * factories and a monitoring loop keeps one instance per check.
 */
import type { KernelView } from '../kernel/kernel-view.ts';

/** JSON-safe evidence: addresses are hex strings ("0xffff..."), so alerts serialize as they are. */
export type EvidenceValue = string | number | boolean | null | EvidenceValue[] | { [k: string]: EvidenceValue };
export type Evidence = Record<string, EvidenceValue>;

export interface Alert {
  check: string;
  /** Stable machine-readable kind, e.g. `hidden-process`, `syscall-hook`. */
  kind: string;
  message: string;
  evidence: Evidence;
}

export interface ScanResult<D = unknown> {
  alerts: Alert[];
  /** What the check saw (pslist: the processes), for display. */
  data?: D;
}

export interface Check<D = unknown> {
  readonly name: string;
  scan(k: KernelView): Promise<ScanResult<D>>;
}

export const hex = (v: bigint): string => `0x${v.toString(16)}`;
