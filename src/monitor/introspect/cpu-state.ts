/**
 * The vCPU control registers introspection needs (CR3 for the page walk, CR4.LA57 for its depth).
 * QEMU 7.2 has no QMP command that returns registers, so this runs the HMP command `info registers`
 * through QMP's human-monitor-command and parses QEMU's text dump (target/i386/cpu-dump.c) strictly:
 * anything that is not exactly the 64-bit layout is refused rather than guessed at.
 */
import { z } from 'zod';
import type { QmpClient } from '../vm/qmp-client.ts';

export interface CpuState {
  cpuIndex: number;
  rip: bigint;
  cpl: number;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
  /** CR4.LA57 (bit 12): 5-level paging. */
  la57: boolean;
  /** CR4.PCIDE (bit 17): CR3 bits 0-11 are a PCID. */
  pcide: boolean;
}

export class CpuStateParseError extends Error {
  override readonly name = 'CpuStateParseError';
}

const CR4_LA57 = 1n << 12n;
const CR4_PCIDE = 1n << 17n;
const CR0_PG = 1n << 31n;
const EFER_LMA = 1n << 10n;
/** `info registers` of one x86 vCPU is about 2.5 KiB; a reply far larger is not what we asked for. */
const MAX_DUMP_CHARS = 64 * 1024;

const hex = (digits: number) => `([0-9a-f]{${digits}})`;
/** Lines of the 64-bit dump (QEMU prints a different layout outside long mode). */
const PATTERNS = {
  header: /^CPU#(\d{1,4})$/,
  rip: new RegExp(`^RIP=${hex(16)} RFL=[0-9a-f]{8} \\[[-A-Z]{7}\\] CPL=([0-3]) `),
  cr: new RegExp(`^CR0=${hex(8)} CR2=${hex(16)} CR3=${hex(16)} CR4=${hex(8)}$`),
  efer: new RegExp(`^EFER=${hex(16)}$`),
} as const;

function only(lines: readonly string[], pattern: RegExp, what: string): RegExpExecArray {
  const hits = lines.map((l) => pattern.exec(l)).filter((m): m is RegExpExecArray => m !== null);
  if (hits.length !== 1) {
    throw new CpuStateParseError(hits.length === 0 ? `no ${what} line in the register dump (is the vCPU in 64-bit mode?)` : `${hits.length} ${what} lines in the register dump`);
  }
  return hits[0]!;
}

const big = (m: RegExpExecArray, i: number): bigint => BigInt(`0x${m[i]!}`);

/** Parses the HMP `info registers` text of one x86-64 vCPU. */
export function parseInfoRegisters(text: string): CpuState {
  if (text.length > MAX_DUMP_CHARS) throw new CpuStateParseError(`register dump of ${text.length} chars is too long`);
  const lines = text.split(/\r?\n/).map((l) => l.trimEnd());
  const header = only(lines, PATTERNS.header, 'CPU#');
  const rip = only(lines, PATTERNS.rip, 'RIP');
  const cr = only(lines, PATTERNS.cr, 'CR0-CR4');
  const efer = big(only(lines, PATTERNS.efer, 'EFER'), 1);
  const state: CpuState = {
    cpuIndex: Number(header[1]),
    rip: big(rip, 1),
    cpl: Number(rip[2]),
    cr0: big(cr, 1),
    cr2: big(cr, 2),
    cr3: big(cr, 3),
    cr4: big(cr, 4),
    efer,
    la57: (big(cr, 4) & CR4_LA57) !== 0n,
    pcide: (big(cr, 4) & CR4_PCIDE) !== 0n,
  };
  if ((state.efer & EFER_LMA) === 0n || (state.cr0 & CR0_PG) === 0n) {
    throw new CpuStateParseError(`vCPU ${state.cpuIndex} is not in long mode with paging (EFER=${efer.toString(16)}, CR0=${state.cr0.toString(16)})`);
  }
  return state;
}

/** Reads the registers of vCPU `cpuIndex` (default 0) over QMP. */
export async function readCpuState(qmp: QmpClient, cpuIndex = 0): Promise<CpuState> {
  const text = await qmp.execute('human-monitor-command', { 'command-line': 'info registers', 'cpu-index': cpuIndex }, { schema: z.string() });
  const state = parseInfoRegisters(text);
  if (state.cpuIndex !== cpuIndex) throw new CpuStateParseError(`asked for vCPU ${cpuIndex}, QEMU dumped vCPU ${state.cpuIndex}`);
  return state;
}
