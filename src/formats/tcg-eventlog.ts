// TCG PC Client Platform Firmware Profile event log, crypto-agile format (PFP §10): the first entry is a
// SHA1-format TCG_PCR_EVENT carrying the "Spec ID Event03" header, every later entry a TCG_PCR_EVENT2
// with one digest per bank. All integers are little-endian (unlike TPM commands).
//
// Measured launch as vmseal writes it (the choices a BIOS + GRUB boot makes, which tpm2_eventlog prints
// and IMA's boot_aggregate covers, PCRs 0-9):
//   PCR 0      EV_S_CRTM_VERSION  the monitor's name, as a CRTM version string (UCS-2)
//   PCR 0..7   EV_SEPARATOR       0x00000000, closing the firmware PCRs as firmware does
//   PCR 8      EV_IPL             "kernel_cmdline: <cmdline>", digest = H(cmdline)  (GRUB's PCR for commands)
//   PCR 9      EV_IPL             "<kernel path>", digest = H(kernel image)         (GRUB's PCR for files)
//   PCR 9      EV_IPL             "<initrd path>", digest = H(initrd)
// Default bank: sha256 only (the issue extends sha256 PCRs; tpm2_eventlog replays any bank listed in
// the Spec ID event). Pass banks to add sha1 etc.
import { createHash } from 'node:crypto';
import { HASH_ALGS, TPM_ALG } from './tpm2/constants.ts';

export const EV = {
  PREBOOT_CERT: 0x0,
  POST_CODE: 0x1,
  NO_ACTION: 0x3,
  SEPARATOR: 0x4,
  ACTION: 0x5,
  EVENT_TAG: 0x6,
  S_CRTM_CONTENTS: 0x7,
  S_CRTM_VERSION: 0x8,
  CPU_MICROCODE: 0x9,
  PLATFORM_CONFIG_FLAGS: 0xa,
  TABLE_OF_DEVICES: 0xb,
  COMPACT_HASH: 0xc,
  IPL: 0xd,
  IPL_PARTITION_DATA: 0xe,
  NONHOST_CODE: 0xf,
  NONHOST_CONFIG: 0x10,
  NONHOST_INFO: 0x11,
  OMIT_BOOT_DEVICE_EVENTS: 0x12,
  EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EFI_ACTION: 0x80000007,
} as const;

export const SPEC_ID_SIGNATURE = 'Spec ID Event03';

/** A malformed or hostile event log. */
export class EventLogError extends Error {
  override readonly name = 'EventLogError';
}

export interface SpecIdEvent {
  platformClass: number;
  specVersionMinor: number;
  specVersionMajor: number;
  specErrata: number;
  uintnSize: number;
  algorithms: Array<{ algorithmId: number; digestSize: number }>;
  vendorInfo: Buffer;
}

export interface LogEvent {
  pcrIndex: number;
  eventType: number;
  /** TPM_ALG_ID → digest, in log order. */
  digests: Map<number, Buffer>;
  event: Buffer;
}

export interface EventLog {
  specId: SpecIdEvent;
  events: LogEvent[];
}

/** Limits that keep a hostile log from costing more than its own size. */
export const EVENT_LOG_LIMITS = {
  maxEvents: 100_000,
  maxEventSize: 1 << 20,
  maxAlgorithms: 16,
} as const;

const ZERO_SHA1 = Buffer.alloc(20);

export function specIdFor(banks: readonly number[]): SpecIdEvent {
  return {
    platformClass: 0, // client
    specVersionMinor: 0,
    specVersionMajor: 2,
    specErrata: 0,
    uintnSize: 2, // UINTN is 64-bit
    algorithms: banks.map((algorithmId) => ({ algorithmId, digestSize: bankSize(algorithmId) })),
    vendorInfo: Buffer.alloc(0),
  };
}

function bankSize(alg: number): number {
  const h = HASH_ALGS.get(alg);
  if (!h) throw new RangeError(`hash 0x${alg.toString(16)} not supported`);
  return h.size;
}

function encodeSpecId(s: SpecIdEvent): Buffer {
  const b = Buffer.alloc(16 + 4 + 4 + 4 + s.algorithms.length * 4 + 1 + s.vendorInfo.length);
  b.write(SPEC_ID_SIGNATURE, 0, 'latin1'); // NUL-terminated in its 16 bytes
  b.writeUInt32LE(s.platformClass, 16);
  b.writeUInt8(s.specVersionMinor, 20);
  b.writeUInt8(s.specVersionMajor, 21);
  b.writeUInt8(s.specErrata, 22);
  b.writeUInt8(s.uintnSize, 23);
  b.writeUInt32LE(s.algorithms.length, 24);
  let at = 28;
  for (const a of s.algorithms) {
    b.writeUInt16LE(a.algorithmId, at);
    b.writeUInt16LE(a.digestSize, at + 2);
    at += 4;
  }
  b.writeUInt8(s.vendorInfo.length, at);
  s.vendorInfo.copy(b, at + 1);
  return b;
}

/** Serializes a log: the Spec ID header event then every event, each with a digest for every bank. */
export function encodeEventLog(log: EventLog): Buffer {
  const spec = encodeSpecId(log.specId);
  const head = Buffer.alloc(4 + 4 + 20 + 4);
  head.writeUInt32LE(0, 0);
  head.writeUInt32LE(EV.NO_ACTION, 4);
  ZERO_SHA1.copy(head, 8);
  head.writeUInt32LE(spec.length, 28);
  const parts = [head, spec];
  for (const e of log.events) {
    const fixed = Buffer.alloc(12);
    fixed.writeUInt32LE(e.pcrIndex, 0);
    fixed.writeUInt32LE(e.eventType, 4);
    fixed.writeUInt32LE(log.specId.algorithms.length, 8);
    parts.push(fixed);
    for (const a of log.specId.algorithms) {
      const d = e.digests.get(a.algorithmId);
      if (!d || d.length !== a.digestSize) throw new RangeError(`event for PCR ${e.pcrIndex} lacks a ${a.digestSize}-byte digest for bank 0x${a.algorithmId.toString(16)}`);
      const alg = Buffer.alloc(2);
      alg.writeUInt16LE(a.algorithmId);
      parts.push(alg, d);
    }
    const size = Buffer.alloc(4);
    size.writeUInt32LE(e.event.length);
    parts.push(size, e.event);
  }
  return Buffer.concat(parts);
}

/** Digests of `data` in every bank. */
export function digestsOf(data: Buffer | string, banks: readonly number[]): Map<number, Buffer> {
  return new Map(
    banks.map((alg) => {
      const h = HASH_ALGS.get(alg);
      if (!h) throw new RangeError(`hash 0x${alg.toString(16)} not supported`);
      return [alg, createHash(h.name).update(data).digest()];
    }),
  );
}

/** An event whose digest is the hash of `measured` in every bank. */
export function measuredEvent(pcrIndex: number, eventType: number, measured: Buffer | string, event: Buffer | string, banks: readonly number[]): LogEvent {
  return { pcrIndex, eventType, digests: digestsOf(measured, banks), event: Buffer.from(event) };
}

export interface LaunchMeasurements {
  /** Kernel image digest per bank (the launch bundle carries the SHA-256). */
  kernel: Map<number, Buffer>;
  initrd: Map<number, Buffer>;
  cmdline: string;
  kernelPath?: string;
  initrdPath?: string;
  /** Text of the PCR 0 S-CRTM version event. */
  crtmVersion?: string;
  /** Banks logged (default sha256). Every digest map must hold each bank. */
  banks?: readonly number[];
}

/** PCR indices of the measured launch (see the table at the top of this file). */
export const LAUNCH_PCRS = { crtm: 0, cmdline: 8, kernel: 9, initrd: 9 } as const;

/** The measured-launch log: what the monitor extends, in order, before the guest runs. */
export function measuredLaunchLog(m: LaunchMeasurements): EventLog {
  const banks = m.banks ?? [TPM_ALG.SHA256];
  const events: LogEvent[] = [];
  const utf16 = Buffer.from(`${m.crtmVersion ?? 'vmseal monitor'}\0`, 'utf16le');
  events.push(measuredEvent(LAUNCH_PCRS.crtm, EV.S_CRTM_VERSION, utf16, utf16, banks));
  const sep = Buffer.alloc(4);
  for (let pcr = 0; pcr <= 7; pcr++) events.push(measuredEvent(pcr, EV.SEPARATOR, sep, sep, banks));
  events.push(measuredEvent(LAUNCH_PCRS.cmdline, EV.IPL, m.cmdline, `kernel_cmdline: ${m.cmdline}\0`, banks));
  events.push({ pcrIndex: LAUNCH_PCRS.kernel, eventType: EV.IPL, digests: pick(m.kernel, banks, 'kernel'), event: Buffer.from(`${m.kernelPath ?? '/boot/vmlinuz'}\0`) });
  events.push({ pcrIndex: LAUNCH_PCRS.initrd, eventType: EV.IPL, digests: pick(m.initrd, banks, 'initrd'), event: Buffer.from(`${m.initrdPath ?? '/boot/initrd.img'}\0`) });
  return { specId: specIdFor(banks), events };
}

function pick(d: Map<number, Buffer>, banks: readonly number[], what: string): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const b of banks) {
    const v = d.get(b);
    if (!v || v.length !== bankSize(b)) throw new RangeError(`${what}: no digest for bank 0x${b.toString(16)}`);
    out.set(b, v);
  }
  return out;
}

class LeReader {
  at = 0;
  constructor(readonly buf: Buffer) {}
  need(n: number, what: string): void {
    if (n > this.buf.length - this.at) throw new EventLogError(`${what} at offset ${this.at}: need ${n} bytes, have ${this.buf.length - this.at}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.buf.readUInt8(this.at++);
  }
  u16(what: string): number {
    this.need(2, what);
    this.at += 2;
    return this.buf.readUInt16LE(this.at - 2);
  }
  u32(what: string): number {
    this.need(4, what);
    this.at += 4;
    return this.buf.readUInt32LE(this.at - 4);
  }
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    this.at += n;
    return this.buf.subarray(this.at - n, this.at);
  }
}

function parseSpecId(ev: Buffer): SpecIdEvent {
  const r = new LeReader(ev);
  const sig = r.bytes(16, 'Spec ID signature');
  if (sig.toString('latin1') !== `${SPEC_ID_SIGNATURE}\0`) throw new EventLogError('first event is not a "Spec ID Event03" (not a crypto-agile log)');
  const platformClass = r.u32('platformClass');
  const specVersionMinor = r.u8('specVersionMinor');
  const specVersionMajor = r.u8('specVersionMajor');
  const specErrata = r.u8('specErrata');
  const uintnSize = r.u8('uintnSize');
  const n = r.u32('numberOfAlgorithms');
  if (n === 0 || n > EVENT_LOG_LIMITS.maxAlgorithms) throw new EventLogError(`numberOfAlgorithms ${n}`);
  const algorithms: SpecIdEvent['algorithms'] = [];
  for (let i = 0; i < n; i++) {
    const algorithmId = r.u16('algorithmId');
    const digestSize = r.u16('digestSize');
    if (digestSize === 0 || digestSize > 64) throw new EventLogError(`digest size ${digestSize} for 0x${algorithmId.toString(16)}`);
    const known = HASH_ALGS.get(algorithmId);
    if (known && known.size !== digestSize) throw new EventLogError(`digest size ${digestSize} for 0x${algorithmId.toString(16)}, expected ${known.size}`);
    if (algorithms.some((a) => a.algorithmId === algorithmId)) throw new EventLogError(`bank 0x${algorithmId.toString(16)} listed twice`);
    algorithms.push({ algorithmId, digestSize });
  }
  const vendorInfo = Buffer.from(r.bytes(r.u8('vendorInfoSize'), 'vendorInfo'));
  if (r.at !== ev.length) throw new EventLogError(`Spec ID event has ${ev.length - r.at} trailing bytes`);
  return { platformClass, specVersionMinor, specVersionMajor, specErrata, uintnSize, algorithms, vendorInfo };
}

/** Parses a crypto-agile log. Throws EventLogError on anything malformed; cost is linear in the input. */
export function parseEventLog(bytes: Buffer): EventLog {
  const r = new LeReader(bytes);
  const pcr0 = r.u32('pcrIndex');
  const type0 = r.u32('eventType');
  r.bytes(20, 'SHA1 digest');
  if (pcr0 !== 0 || type0 !== EV.NO_ACTION) throw new EventLogError(`first event is PCR ${pcr0} type 0x${type0.toString(16)}, not the EV_NO_ACTION Spec ID event`);
  const size0 = r.u32('eventSize');
  const specId = parseSpecId(r.bytes(size0, 'Spec ID event'));
  const sizes = new Map(specId.algorithms.map((a) => [a.algorithmId, a.digestSize]));
  const events: LogEvent[] = [];
  while (r.at < bytes.length) {
    if (events.length === EVENT_LOG_LIMITS.maxEvents) throw new EventLogError(`more than ${EVENT_LOG_LIMITS.maxEvents} events`);
    const pcrIndex = r.u32('pcrIndex');
    const eventType = r.u32('eventType');
    const count = r.u32('digest count');
    if (count > specId.algorithms.length) throw new EventLogError(`event ${events.length + 1}: ${count} digests, log has ${specId.algorithms.length} banks`);
    const digests = new Map<number, Buffer>();
    for (let i = 0; i < count; i++) {
      const alg = r.u16('hashAlg');
      const size = sizes.get(alg);
      if (size === undefined) throw new EventLogError(`event ${events.length + 1}: bank 0x${alg.toString(16)} not in the Spec ID event`);
      if (digests.has(alg)) throw new EventLogError(`event ${events.length + 1}: bank 0x${alg.toString(16)} twice`);
      digests.set(alg, Buffer.from(r.bytes(size, 'digest')));
    }
    const eventSize = r.u32('eventSize');
    if (eventSize > EVENT_LOG_LIMITS.maxEventSize) throw new EventLogError(`event ${events.length + 1}: eventSize ${eventSize}`);
    events.push({ pcrIndex, eventType, digests, event: Buffer.from(r.bytes(eventSize, 'event data')) });
  }
  return { specId, events };
}

/**
 * Replays the log: every event but EV_NO_ACTION extends its PCR in each bank it carries, from all-zero
 * PCRs (the reset value of PCRs 0-16 and 23; the DRTM PCRs 17-22 are not modelled). Returns pcr → bank → value.
 */
export function replay(log: EventLog): Map<number, Map<number, Buffer>> {
  const out = new Map<number, Map<number, Buffer>>();
  for (const e of log.events) {
    if (e.eventType === EV.NO_ACTION) continue;
    let banks = out.get(e.pcrIndex);
    if (!banks) out.set(e.pcrIndex, (banks = new Map()));
    for (const [alg, digest] of e.digests) {
      const h = HASH_ALGS.get(alg);
      if (!h) continue; // a bank we cannot compute is left out rather than guessed
      const old = banks.get(alg) ?? Buffer.alloc(h.size);
      banks.set(alg, createHash(h.name).update(old).update(digest).digest());
    }
  }
  return out;
}
