/**
 * The HMAC sessions a guest holds in its own swtpm that the proxy can stand in for (nv-shared-read.ts): the
 * unbound, unsalted ones, whose sessionKey is empty, so that knowing the entity's authValue and the session's
 * current nonceTPM is all it takes to check and answer an HMAC. tpm2-tools 5.4 starts exactly such a session
 * for every password (StartAuthSession with tpmKey = bind = TPM_RH_NULL, symmetric NULL, SHA-256).
 *
 * The table follows the guest's own TPM: it learns a session and its nonceTPM from StartAuthSession's
 * response, the new nonceTPM from each successful response that used the session, and forgets it on
 * FlushContext, on a command without continueSession, and on Startup. Context save/load (the guest kernel's
 * resource manager does them around every command) keep a session's handle and nonces, so they change nothing.
 */
import { TPM_CC, TPM_RC, TPM_SE, TPMA_SESSION, Tpm2FormatError, hasEmptySessionKey, parseResponse, parseStartAuthSession, startAuthSessionNonce, type ParsedCommand } from '../../formats/tpm2/index.ts';

export interface TrackedSession {
  authHash: number;
  /** The nonceTPM of the TPM's last response for this session. */
  nonceTpm: Buffer;
}

/** A TPM keeps a few sessions loaded and at most 64 more saved (libtpms MAX_ACTIVE_SESSIONS): bound the table alike. */
const MAX_TRACKED = 64;

export class GuestSessions {
  readonly #sessions = new Map<number, TrackedSession>();

  get(handle: number): TrackedSession | undefined {
    return this.#sessions.get(handle);
  }

  /** Whether observe() needs the response to `cmd`. */
  wants(cmd: ParsedCommand): boolean {
    return (
      cmd.commandCode === TPM_CC.StartAuthSession ||
      cmd.commandCode === TPM_CC.FlushContext ||
      cmd.commandCode === TPM_CC.Startup ||
      (this.#sessions.size > 0 && cmd.sessions.some((s) => this.#sessions.has(s.handle)))
    );
  }

  /** Updates the table from the guest's own TPM's response `rsp` to `cmd`. */
  observe(cmd: ParsedCommand, rsp: Buffer): void {
    if (rsp.length < 10 || rsp.readUInt32BE(6) !== TPM_RC.SUCCESS) return;
    if (cmd.commandCode === TPM_CC.Startup) return this.#sessions.clear();
    if (cmd.commandCode === TPM_CC.FlushContext) {
      if (cmd.parameters.length === 4) this.#sessions.delete(cmd.parameters.readUInt32BE(0));
      return;
    }
    try {
      const parsed = parseResponse(rsp, cmd.commandCode);
      if (cmd.commandCode === TPM_CC.StartAuthSession) {
        const handle = parsed.handles[0]!;
        const req = parseStartAuthSession(cmd);
        this.#sessions.delete(handle);
        if (req.sessionType !== TPM_SE.HMAC || !hasEmptySessionKey(req)) return;
        if (this.#sessions.size >= MAX_TRACKED) this.#sessions.delete(this.#sessions.keys().next().value!);
        this.#sessions.set(handle, { authHash: req.authHash, nonceTpm: startAuthSessionNonce(parsed) });
        return;
      }
      cmd.sessions.forEach((s, i) => this.#roll(s.handle, s.attributes, parsed.sessions[i]?.nonce));
    } catch (err) {
      // A response we cannot follow: forget what it touched rather than keep stale nonces.
      if (!(err instanceof Tpm2FormatError)) throw err;
      for (const s of cmd.sessions) this.#sessions.delete(s.handle);
    }
  }

  #roll(handle: number, attributes: number, nonceTpm: Buffer | undefined): void {
    const s = this.#sessions.get(handle);
    if (!s) return;
    if (!(attributes & TPMA_SESSION.CONTINUE_SESSION) || !nonceTpm) this.#sessions.delete(handle);
    else s.nonceTpm = nonceTpm;
  }

  /** The session was used up (flushed in the guest's TPM by the proxy). */
  forget(handle: number): void {
    this.#sessions.delete(handle);
  }
}
