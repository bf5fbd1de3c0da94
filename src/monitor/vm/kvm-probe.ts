import { constants } from 'node:fs';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { accelArgs, type Accel } from './qemu-args.ts';
import { spawnQemu } from './qemu-process.ts';
import { printable, TextTail } from './text-tail.ts';

/**
 * Decides whether KVM really runs guest code here. An openable /dev/kvm proves nothing (nested or
 * emulated KVM can accept ioctls and still hang or fail on real guests), so the probe boots a
 * 64 KiB firmware whose reset vector executes `mov al,0x42; out 0xf4,al; hlt`; the
 * isa-debug-exit device at 0xf4 turns that write into QEMU exit status (0x42 << 1) | 1 = 133.
 */

export interface AccelProbe {
  usable: boolean;
  reason: string;
}

export type AccelRequest = Accel | 'auto';

const PROBE_TIMEOUT_MS = 10_000;
const EXPECTED_EXIT = (0x42 << 1) | 1;
const BIOS_SIZE = 64 * 1024;
// Real mode at the reset vector (last 16 bytes of the image, mapped at 0xFFFF0 and 0xFFFFFFF0):
// mov al,0x42 / out 0xf4,al / hlt / jmp $-1 (back to hlt, should anything wake the CPU).
const RESET_VECTOR_CODE = Buffer.from([0xb0, 0x42, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]);

function probeBios(): Buffer {
  const image = Buffer.alloc(BIOS_SIZE, 0xf4); // hlt everywhere else
  RESET_VECTOR_CODE.copy(image, BIOS_SIZE - 16);
  return image;
}

/** Boots the probe firmware under `accel`; resolves (never rejects) with whether it ran to the expected exit. */
export async function probeAccelerator(accel: Accel, timeoutMs = PROBE_TIMEOUT_MS): Promise<AccelProbe> {
  let dir: string | undefined;
  try {
    dir = await mkdtemp(path.join(os.tmpdir(), 'vmseal-probe-'));
    const bios = path.join(dir, 'probe-bios.bin');
    await writeFile(bios, probeBios(), { mode: 0o600 });
    const args = ['-M', 'pc', '-nodefaults', '-no-user-config', '-display', 'none', ...accelArgs(accel)];
    args.push('-bios', bios, '-device', 'isa-debug-exit,iobase=0xf4,iosize=1');
    return await runProbe(args, accel, timeoutMs);
  } catch (err) {
    return { usable: false, reason: `${accel} probe could not run: ${err instanceof Error ? err.message : String(err)}` };
  } finally {
    if (dir) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

function runProbe(args: string[], accel: Accel, timeoutMs: number): Promise<AccelProbe> {
  return new Promise((resolve) => {
    const stderr = new TextTail(4096);
    const child = spawnQemu(args);
    child.stdout?.resume();
    child.stderr?.setEncoding('utf8').on('data', (s: string) => stderr.append(s));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const detail = (): string => {
      const text = printable(stderr.last(4096)).trim();
      return text ? `; QEMU stderr: ${text}` : '';
    };
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ usable: false, reason: `cannot start QEMU for the ${accel} probe: ${err.message}` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) {
        resolve({ usable: false, reason: `${accel} probe guest did not finish within ${timeoutMs} ms${detail()}` });
      } else if (code === EXPECTED_EXIT) {
        resolve({ usable: true, reason: `${accel} executed the probe guest (isa-debug-exit status ${EXPECTED_EXIT})` });
      } else {
        const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
        resolve({ usable: false, reason: `${accel} probe QEMU ${how}, expected status ${EXPECTED_EXIT}${detail()}` });
      }
    });
  });
}

let kvmProbe: Promise<AccelProbe> | null = null;

/** Whether KVM executes guest code on this host; probed once per process. Never rejects. */
export function probeKvm(): Promise<AccelProbe> {
  kvmProbe ??= (async (): Promise<AccelProbe> => {
    try {
      await access('/dev/kvm', constants.R_OK | constants.W_OK);
    } catch (err) {
      return { usable: false, reason: `/dev/kvm is not usable: ${err instanceof Error ? err.message : String(err)}` };
    }
    return probeAccelerator('kvm');
  })();
  return kvmProbe;
}

export interface ResolvedAccel {
  accel: Accel;
  /** Set when 'auto' fell back to TCG: why KVM was not used. */
  warning?: string;
}

/**
 * Maps a request to the accelerator to use. TCG needs no probe; 'kvm' insists (throws with the
 * probe's reason if KVM is unusable); 'auto' prefers KVM and falls back to TCG with a warning.
 */
export async function resolveAccel(requested: AccelRequest, probe: () => Promise<AccelProbe> = probeKvm): Promise<ResolvedAccel> {
  if (requested === 'tcg') return { accel: 'tcg' };
  const result = await probe();
  if (result.usable) return { accel: 'kvm' };
  if (requested === 'kvm') throw new Error(`KVM was requested but is not usable on this host: ${result.reason}`);
  return { accel: 'tcg', warning: `KVM is not usable, falling back to TCG: ${result.reason}` };
}
