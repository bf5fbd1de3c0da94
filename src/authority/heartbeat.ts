/**
 * The remote heartbeat (seed 000 §3.3, ARCHITECTURE.md protocol 8). For each IDS session the
 * authority registered, a fresh challenge `{ seq, nonce }` is issued every period; the IDS (through its
 * untrusted host library) answers HMAC(K_heartbeat, …) (crypto/heartbeat-mac.ts). Only the enclave and
 * the authority know K_heartbeat, so a correct answer to a fresh nonce proves the enclave ran recently.
 *
 * Alerts:
 *   MISSED_HEARTBEAT  no correct answer for `missAfterPeriods` periods (2) after the last one, so the
 *                     alert fires within 3 periods of a kill, SIGSTOP or starvation even with a period
 *                     of timer slack; raised once per outage. The first answer is due `startGraceMs`
 *                     after registration (the host still has to register with the monitor).
 *   BAD_HEARTBEAT     an answer to an outstanding challenge whose MAC is wrong: raised at once, and
 *                     the challenge is spent (one guess per nonce).
 * Alerts are appended (fsync'd) to `<authority dir>/ids-heartbeat-alerts.jsonl` before anyone is told.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { heartbeatMacValid, HEARTBEAT_KEY_BYTES, HEARTBEAT_NONCE_BYTES } from '../crypto/heartbeat-mac.ts';
import { heartbeatAlertSchema, type HeartbeatAlert } from '../formats/protocol/ids-heartbeat.ts';
import type { HeartbeatBinding, HeartbeatRegistry } from './heartbeat-registry.ts';

export const DEFAULT_HEARTBEAT_PERIOD_MS = 1000;
export const ALERTS_FILE = 'ids-heartbeat-alerts.jsonl';
/** Challenges kept open per session: an answer may lag a tick behind the newest challenge. */
const OPEN_CHALLENGES = 4;
const MAX_SESSIONS = 10_000;
const MAX_WAITERS_PER_SESSION = 64;

export interface HeartbeatOptions {
  periodMs?: number;
  missAfterPeriods?: number;
  /** Time from registration to the first required answer (default max(10 s, 3 periods)). */
  startGraceMs?: number;
  /** Milliseconds since the epoch (tests never move it; it is injectable for completeness). */
  now?: () => number;
}

export interface Challenge {
  sessionId: string;
  seq: number;
  nonce: Buffer;
}

export type HeartbeatRefusalCode = 'UNKNOWN_SESSION' | 'STALE_CHALLENGE' | 'BAD_MAC' | 'SESSION_EXISTS' | 'TOO_MANY_SESSIONS';

export class HeartbeatRefusal extends Error {
  override name = 'HeartbeatRefusal';
  constructor(
    readonly code: HeartbeatRefusalCode,
    message: string,
  ) {
    super(message);
  }
}

export interface HeartbeatSessionState {
  sessionId: string;
  binding: HeartbeatBinding;
  lastGoodSeq: number | null;
  lastGoodAt: number | null;
  lastStatus: number | null;
  /** Whether a MISSED_HEARTBEAT alert is standing (cleared by the next correct answer). */
  missing: boolean;
}

interface Session extends HeartbeatSessionState {
  key: Buffer;
  registeredAt: number;
  seq: number;
  open: Map<number, { nonce: Buffer; issuedAt: number }>;
  waiters: Set<() => void>;
  tick: NodeJS.Timeout;
  deadline: NodeJS.Timeout | undefined;
}

export class HeartbeatService implements HeartbeatRegistry {
  readonly periodMs: number;
  private readonly missAfterMs: number;
  private readonly startGraceMs: number;
  private readonly now: () => number;
  private readonly sessions = new Map<string, Session>();
  private readonly alertWaiters = new Set<() => void>();
  /** Appends are serialised so ids stay in file order. */
  private writes: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly alertsPath: string,
    private readonly alertLog: HeartbeatAlert[],
    opts: HeartbeatOptions,
  ) {
    this.periodMs = opts.periodMs ?? DEFAULT_HEARTBEAT_PERIOD_MS;
    if (!Number.isInteger(this.periodMs) || this.periodMs < 10 || this.periodMs > 3_600_000) throw new Error('heartbeat period must be 10 ms .. 1 h');
    this.missAfterMs = (opts.missAfterPeriods ?? 2) * this.periodMs;
    this.startGraceMs = opts.startGraceMs ?? Math.max(10_000, 3 * this.periodMs);
    this.now = opts.now ?? Date.now;
  }

  /** Opens the service over an authority directory, loading the alerts already recorded there. */
  static async open(authorityDir: string, opts: HeartbeatOptions = {}): Promise<HeartbeatService> {
    const path = join(authorityDir, ALERTS_FILE);
    return new HeartbeatService(path, await readAlertsFile(path), opts);
  }

  register(sessionId: string, binding: HeartbeatBinding, heartbeatKey: Buffer): void {
    if (this.closed) throw new Error('heartbeat service is closed');
    if (heartbeatKey.length !== HEARTBEAT_KEY_BYTES) throw new Error(`heartbeat key must be ${HEARTBEAT_KEY_BYTES} bytes`);
    if (this.sessions.has(sessionId)) throw new HeartbeatRefusal('SESSION_EXISTS', `IDS session ${sessionId} is already registered`);
    if (this.sessions.size >= MAX_SESSIONS) throw new HeartbeatRefusal('TOO_MANY_SESSIONS', `at most ${MAX_SESSIONS} IDS sessions`);
    const s: Session = {
      sessionId,
      binding: { vmId: binding.vmId, hostId: binding.hostId, measurement: binding.measurement },
      key: Buffer.from(heartbeatKey),
      registeredAt: this.now(),
      lastGoodSeq: null,
      lastGoodAt: null,
      lastStatus: null,
      missing: false,
      seq: 0,
      open: new Map(),
      waiters: new Set(),
      tick: setInterval(() => this.issue(s), this.periodMs).unref(),
      deadline: undefined,
    };
    this.sessions.set(sessionId, s);
    this.issue(s);
    this.arm(s, s.registeredAt + this.startGraceMs);
  }

  /** The newest challenge above `after`, waiting up to `waitMs` for one; null when none came. */
  async challenge(sessionId: string, after: number, waitMs: number): Promise<Challenge | null> {
    const s = this.session(sessionId);
    if (s.seq <= after && waitMs > 0 && s.waiters.size < MAX_WAITERS_PER_SESSION) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          s.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, waitMs).unref();
        s.waiters.add(done);
      });
    }
    if (s.seq <= after) return null;
    const c = s.open.get(s.seq);
    return c ? { sessionId, seq: s.seq, nonce: c.nonce } : null;
  }

  /** Checks an answer; a wrong MAC is recorded as BAD_HEARTBEAT before the refusal is thrown. */
  async answer(sessionId: string, seq: number, status: number, mac: Buffer): Promise<void> {
    const s = this.session(sessionId);
    const c = s.open.get(seq);
    if (!c) throw new HeartbeatRefusal('STALE_CHALLENGE', `challenge ${seq} of session ${sessionId} is not open`);
    s.open.delete(seq);
    if (!heartbeatMacValid(s.key, sessionId, seq, c.nonce, status, mac)) {
      await this.raise(s, 'BAD_HEARTBEAT', `wrong MAC for challenge ${seq}`);
      throw new HeartbeatRefusal('BAD_MAC', `wrong heartbeat MAC for challenge ${seq}`);
    }
    const at = this.now();
    if (s.lastGoodSeq === null || seq > s.lastGoodSeq) {
      s.lastGoodSeq = seq;
      s.lastStatus = status;
    }
    s.lastGoodAt = at;
    s.missing = false;
    this.arm(s, at + this.missAfterMs);
  }

  /** Alerts with an id above `after`, oldest first; waits up to `waitMs` when there are none yet. */
  async alerts(after = 0, waitMs = 0): Promise<HeartbeatAlert[]> {
    const pick = (): HeartbeatAlert[] => this.alertLog.filter((a) => a.id > after);
    if (pick().length > 0 || waitMs <= 0 || this.closed) return pick();
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.alertWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, waitMs).unref();
      this.alertWaiters.add(done);
    });
    return pick();
  }

  state(sessionId: string): HeartbeatSessionState {
    const { binding, lastGoodSeq, lastGoodAt, lastStatus, missing } = this.session(sessionId);
    return { sessionId, binding: { ...binding }, lastGoodSeq, lastGoodAt, lastStatus, missing };
  }

  /** Stops every timer and releases waiting requests; recorded alerts stay on disk. */
  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.sessions.values()) {
      clearInterval(s.tick);
      clearTimeout(s.deadline);
      for (const w of [...s.waiters]) w();
    }
    for (const w of [...this.alertWaiters]) w();
    await this.writes;
  }

  private session(sessionId: string): Session {
    const s = this.sessions.get(sessionId);
    if (!s) throw new HeartbeatRefusal('UNKNOWN_SESSION', `no IDS session ${sessionId}`);
    return s;
  }

  private issue(s: Session): void {
    s.seq += 1;
    s.open.set(s.seq, { nonce: randomBytes(HEARTBEAT_NONCE_BYTES), issuedAt: this.now() });
    for (const old of s.open.keys()) if (old <= s.seq - OPEN_CHALLENGES) s.open.delete(old);
    for (const w of [...s.waiters]) w();
  }

  private arm(s: Session, at: number): void {
    clearTimeout(s.deadline);
    s.deadline = setTimeout(() => {
      if (s.missing || this.closed) return;
      s.missing = true;
      const since = s.lastGoodAt === null ? 'registration' : `the answer to challenge ${s.lastGoodSeq}`;
      void this.raise(s, 'MISSED_HEARTBEAT', `no correct answer for ${this.now() - (s.lastGoodAt ?? s.registeredAt)} ms since ${since}`);
    }, Math.max(0, at - this.now())).unref();
  }

  private raise(s: Session, kind: HeartbeatAlert['kind'], detail: string): Promise<void> {
    const write = this.writes.then(async () => {
      const alert: HeartbeatAlert = {
        id: (this.alertLog.at(-1)?.id ?? 0) + 1,
        kind,
        sessionId: s.sessionId,
        vmId: s.binding.vmId,
        hostId: s.binding.hostId,
        measurement: s.binding.measurement,
        lastGoodSeq: s.lastGoodSeq,
        lastGoodAt: s.lastGoodAt === null ? null : new Date(s.lastGoodAt).toISOString(),
        at: new Date(this.now()).toISOString(),
        detail,
      };
      await appendDurable(this.alertsPath, `${JSON.stringify(alert)}\n`);
      this.alertLog.push(alert);
      for (const w of [...this.alertWaiters]) w();
    });
    this.writes = write.catch(() => undefined);
    return write;
  }
}

async function appendDurable(path: string, line: string): Promise<void> {
  const handle = await open(path, 'a', 0o600);
  try {
    await handle.write(line);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Reads recorded alerts; a torn last line (a crash mid-append) is ignored, any other bad line is an error. */
export async function readAlertsFile(path: string): Promise<HeartbeatAlert[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  // Every complete line ends with '\n': the last piece is empty or torn.
  return text.split('\n').slice(0, -1).map((line, i) => {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new Error(`${path}: line ${i + 1} is not JSON`);
    }
    const parsed = heartbeatAlertSchema.safeParse(value);
    if (!parsed.success) throw new Error(`${path}: line ${i + 1} is not a heartbeat alert`);
    return parsed.data;
  });
}
