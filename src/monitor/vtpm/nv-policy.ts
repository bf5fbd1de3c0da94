/**
 * NV access control for the TPM proxy (seed 002 for TPM 2.0; docs/vtpm-nv.md). Indices in the managed
 * range belong to the vTPM instance that defined them (nv-ownership.ts); the range is one namespace for all
 * VMs of this host, so a grantee names the owner's index by its own handle and `tpm2_nvread` just works.
 *
 *   owner                  → its own swtpm (write commands refused with NV_LOCKED while the index is shared:
 *                             the seed write-protects shared regions, so every reader sees one value)
 *   grantee (read grant)   → NV_ReadPublic and NV_Read (index auth, password sessions only) run on the
 *                             OWNER's swtpm; writes and undefines → NV_LOCKED; other reads → NV_AUTHORIZATION
 *   anyone else            → NV_ReadPublic → TPM_RC_HANDLE (the index looks absent); every other command that
 *                             names it → NV_AUTHORIZATION; NV_DefineSpace of it → NV_DEFINED
 *   a tampered row         → nobody gets anything (fail closed), the monitor raises TAMPER
 *
 * NV_DefineSpace in the range is run by the policy itself: the ownership row is committed BEFORE the command
 * reaches swtpm (so two VMs racing for one index cannot both win, and a crash leaves the index claimed by
 * the VM that asked) and dropped again if swtpm refuses. NV_UndefineSpace(Special) likewise drops the row
 * after swtpm succeeded and before the guest hears so. Indices outside the range are the VM's private
 * business: they live in its own swtpm, which no other VM reaches. vmseal's vendor commands (the owner guest
 * sharing or revoking one of its indices itself) are answered by nv-guest-grant.ts, and listed as the TPM's
 * own in GetCapability answers (vendor-capability.ts) so the guest's /dev/tpmrm0 passes them.
 */
import { TPM_CC, TPM_RC, TPM_RH, TPMA_SESSION, Tpm2FormatError, errorResponse, isGuestGrantCommand, nvAccess, nvHandlesOf, nvReadPublicCommand, parseNvReadPublicResponse, parseResponse, rcForHandle, stripTrailingZeros, type NvAccess, type ParsedCommand } from '../../formats/tpm2/index.ts';
import { GuestSessions } from './guest-sessions.ts';
import { guestGrant } from './nv-guest-grant.ts';
import { DEFAULT_NV_QUOTA, NvOwnership, type NvQuota } from './nv-ownership.ts';
import { sharedReadWithHmacSession } from './nv-shared-read.ts';
import type { OwnerClaim } from './nv-token.ts';
import { advertiseVendorCommands } from './vendor-capability.ts';
import type { CommandPolicy, PolicyDecision } from './tpm-proxy.ts';
import type { TpmEndpoint } from './tpm-channel.ts';

/**
 * The managed range: the low 64Ki handles of the TCG registry's owner range (0x01800000-0x01BFFFFF, "Owner"
 * in the Registry of Reserved TPM 2.0 Handles and Localities). The tenant is its VM's platform owner, so
 * owner-range indices are the ones it allocates for its own data; the TPM- and platform-manufacturer
 * ranges below and the TCG ranges above (EK certificates at 0x01C0000x from swtpm_setup, PC Client indices)
 * stay private to each vTPM and untouched by sharing.
 */
export const NV_MANAGED_FIRST = 0x01800000;
export const NV_MANAGED_LAST = 0x0180ffff;

export function isManagedIndex(handle: number): boolean {
  return handle >= NV_MANAGED_FIRST && handle <= NV_MANAGED_LAST;
}

/**
 * TPM_RC_REFERENCE_S0 (Part 2, a warning): "the nth authorization session handle references a session that
 * is not loaded". An HMAC or policy session lives in the grantee's own TPM; on the owner's TPM it does not
 * exist, which is what this code says (it is what the owner's TPM would answer if the command were sent).
 */
export const TPM_RC_REFERENCE_S0 = 0x910;

export interface NvRequester {
  /** The stable vTPM instance id of the VM sending the command. */
  instance: string;
  /** Its own swtpm. */
  tpm: TpmEndpoint;
  /** The HMAC sessions its guest holds there (for a shared read under one). */
  sessions: GuestSessions;
}

export interface NvAccessControlOptions {
  ownership: NvOwnership;
  quota?: NvQuota;
  log?: (msg: string) => void;
}

const respond = (rc: number): PolicyDecision => ({ action: 'respond', response: errorResponse(rc) });
const FORWARD: PolicyDecision = { action: 'forward' };

/** Before its swtpm is attached a VM may touch no managed index (no guest runs then: this is a guard). */
function unattached(cmd: ParsedCommand): PolicyDecision {
  const managed = cmd.commandCode === TPM_CC.NV_DefineSpace || cmd.handles.some(isManagedIndex);
  return managed ? respond(TPM_RC.NV_UNAVAILABLE) : FORWARD;
}

export class NvAccessControl {
  readonly ownership: NvOwnership;
  readonly #quota: NvQuota;
  readonly #log: (msg: string) => void;
  /** Running vTPMs by instance id: where a grantee's reads are served from. */
  readonly #endpoints = new Map<string, TpmEndpoint>();
  readonly #sessions = new Map<string, GuestSessions>();
  /** Running VMs' vTPM instances by VM id: whom a guest's own share command may name (nv-guest-grant.ts). */
  readonly #byVmId = new Map<string, string>();

  constructor(o: NvAccessControlOptions) {
    this.ownership = o.ownership;
    this.#quota = o.quota ?? DEFAULT_NV_QUOTA;
    this.#log = o.log ?? (() => undefined);
  }

  /**
   * The proxy hook for the commands of VM `instance`. Its own swtpm is found through attach(), so the hook
   * can be made before the swtpm starts; until it is attached, managed-range commands get NV_UNAVAILABLE.
   */
  policyFor(instance: string): CommandPolicy {
    return async (cmd, raw) => {
      const decision = await this.#decideFor(instance, cmd, raw);
      // The vendor commands this policy answers are listed as the TPM's own, so the guest's /dev/tpmrm0 passes them.
      if (cmd.commandCode !== TPM_CC.GetCapability || decision.action !== 'forward') return decision;
      return { ...decision, rewrite: (rsp) => advertiseVendorCommands(cmd, rsp) };
    };
  }

  async #decideFor(instance: string, cmd: ParsedCommand, raw: Buffer): Promise<PolicyDecision> {
    const tpm = this.#endpoints.get(instance);
    if (!tpm) return unattached(cmd);
    let sessions = this.#sessions.get(instance);
    if (!sessions) this.#sessions.set(instance, (sessions = new GuestSessions()));
    const decision = await this.decide({ instance, tpm, sessions }, cmd, raw);
    if (decision.action !== 'forward' || !sessions.wants(cmd)) return decision;
    const seen = sessions;
    return { action: 'forward', observe: (rsp) => seen.observe(cmd, rsp) };
  }

  /**
   * `instance`'s swtpm runs: its own managed commands and its grantees' reads go there. With `vmId` (the
   * running VM's id) its peers' guests may name it in their own share commands.
   */
  attach(instance: string, tpm: TpmEndpoint, vmId?: string): void {
    this.#endpoints.set(instance, tpm);
    if (vmId !== undefined) this.#byVmId.set(vmId, instance);
  }

  /** Its swtpm stopped: grantees' reads of its indices get TPM_RC_NV_UNAVAILABLE until it is back. */
  detach(instance: string, tpm: TpmEndpoint): void {
    if (this.#endpoints.get(instance) !== tpm) return;
    this.#endpoints.delete(instance);
    this.#sessions.delete(instance);
    for (const [vmId, i] of this.#byVmId) if (i === instance) this.#byVmId.delete(vmId);
  }

  /** A command of `req`'s guest run on its own swtpm by the policy: its sessions' nonces are followed. */
  async #own(req: NvRequester, cmd: ParsedCommand, raw: Buffer): Promise<Buffer> {
    const rsp = await req.tpm.transact(raw);
    if (req.sessions.wants(cmd)) req.sessions.observe(cmd, rsp);
    return rsp;
  }

  /** The decision for one well-formed command `cmd` (whose bytes are `raw`) from `req`. */
  async decide(req: NvRequester, cmd: ParsedCommand, raw: Buffer): Promise<PolicyDecision> {
    if (isGuestGrantCommand(cmd.commandCode)) {
      const response = guestGrant({ ownership: this.ownership, sender: req.instance, running: (vmId) => this.#byVmId.get(vmId), log: this.#log }, cmd);
      return { action: 'respond', response };
    }
    let access: NvAccess | undefined;
    try {
      access = nvAccess(cmd);
    } catch (err) {
      if (err instanceof Tpm2FormatError) return respond(err.rc);
      throw err;
    }
    // Any other command naming a managed index as a handle (e.g. PolicySecret): only its owner's may pass.
    if (!access) return this.#checkOtherHandles(req, cmd, undefined);
    if (access.nvIndex === undefined || !isManagedIndex(access.nvIndex)) return this.#checkOtherHandles(req, cmd, access.nvIndex);
    const other = this.#checkOtherHandles(req, cmd, access.nvIndex);
    if (other.action !== 'forward') return other;
    const nvIndex = access.nvIndex;
    const state = this.ownership.ownerState(nvIndex);
    if (access.op === 'define') return this.#define(req, cmd, raw, access, state);
    if (state.kind === 'tampered') return respond(access.op === 'readPublic' ? rcForHandle(TPM_RC.HANDLE, access.handlePosition! + 1) : TPM_RC.NV_AUTHORIZATION);
    if (state.kind === 'none') return this.#unclaimed(req, cmd, raw, access);
    const claim = state.claim;
    if (claim.owner === req.instance) return this.#ownerCommand(req, cmd, raw, access, claim);
    return this.#foreignCommand(req, cmd, access, claim);
  }

  #checkOtherHandles(req: NvRequester, cmd: ParsedCommand, except: number | undefined): PolicyDecision {
    for (const { handle } of nvHandlesOf(cmd)) {
      if (handle === except || !isManagedIndex(handle)) continue;
      const s = this.ownership.ownerState(handle);
      if (s.kind === 'tampered' || (s.kind === 'owned' && s.claim.owner !== req.instance)) return respond(TPM_RC.NV_AUTHORIZATION);
    }
    return FORWARD;
  }

  async #define(req: NvRequester, cmd: ParsedCommand, raw: Buffer, access: NvAccess, state: ReturnType<NvOwnership['ownerState']>): Promise<PolicyDecision> {
    const nvIndex = access.nvIndex!;
    if (state.kind === 'tampered') return respond(TPM_RC.NV_DEFINED);
    if (state.kind === 'owned' && state.claim.owner !== req.instance) return respond(TPM_RC.NV_DEFINED);
    const dataSize = access.publicInfo!.dataSize;
    const used = this.ownership.usage(req.instance);
    const mine = state.kind === 'owned' ? state.claim.dataSize : 0;
    const indices = used.indices + (state.kind === 'owned' ? 0 : 1);
    if (indices > this.#quota.indices || used.bytes - mine + dataSize > this.#quota.bytes) {
      this.#log(`vTPM ${req.instance}: NV quota reached (${used.indices} indices, ${used.bytes} bytes) defining 0x${nvIndex.toString(16)}`);
      return respond(TPM_RC.NV_SPACE);
    }
    const auth = authInClear(cmd, access);
    // A repeated define by the owner of an index its swtpm still has fails in swtpm (NV_DEFINED) and keeps
    // the old row and its grants; only a fresh claim is undone on failure.
    const fresh = state.kind === 'none';
    // The command goes to swtpm first and the claim commits (fsync) while swtpm runs it; both happen in this
    // one turn of the event loop, so no other VM's define of the index can slip in between, and the guest
    // hears only after the commit. A crash between the two leaves the index in this VM's swtpm without a row:
    // #unclaimed adopts it for this VM at its next touch.
    const pending = this.#own(req, cmd, raw);
    let claimError: unknown;
    if (fresh) {
      try {
        this.ownership.claim(req.instance, nvIndex, dataSize, auth);
      } catch (err) {
        claimError = err;
      }
    }
    const response = await pending.catch((err: unknown) => {
      if (fresh && claimError === undefined) this.ownership.release(nvIndex);
      throw err;
    });
    if (claimError !== undefined) throw claimError;
    const rc = response.readUInt32BE(6);
    if (rc !== TPM_RC.SUCCESS) {
      if (fresh) this.ownership.release(nvIndex);
    } else if (!fresh) {
      // The owner defined it again (its swtpm had lost it, e.g. TPM2_Clear): a new definition, new nonce, no grants.
      this.ownership.claim(req.instance, nvIndex, dataSize, auth);
    }
    return { action: 'respond', response };
  }

  /**
   * A managed index nobody claims. Normally it is simply absent and the VM's own swtpm says so. If the VM's
   * swtpm does hold it, a crash fell between a define reaching swtpm and its claim committing (or an
   * undefine's release committing and swtpm refusing it): the index is this VM's, and is adopted so.
   */
  async #unclaimed(req: NvRequester, cmd: ParsedCommand, raw: Buffer, access: NvAccess): Promise<PolicyDecision> {
    const pub = await req.tpm.transact(nvReadPublicCommand(access.nvIndex!));
    if (pub.readUInt32BE(6) !== TPM_RC.SUCCESS) return this.#forward(req, cmd);
    const state = this.ownership.ownerState(access.nvIndex!);
    if (state.kind === 'tampered' || (state.kind === 'owned' && state.claim.owner !== req.instance)) return respond(TPM_RC.NV_AUTHORIZATION);
    const { nvPublic } = parseNvReadPublicResponse(parseResponse(pub, TPM_CC.NV_ReadPublic));
    const claim = state.kind === 'owned' ? state.claim : this.ownership.claim(req.instance, access.nvIndex!, nvPublic.dataSize);
    if (state.kind === 'none') this.#log(`vTPM ${req.instance}: adopted NV index 0x${access.nvIndex!.toString(16)}, found in its swtpm without an ownership row`);
    return this.#ownerCommand(req, cmd, raw, access, claim);
  }

  #forward(req: NvRequester, cmd: ParsedCommand): PolicyDecision {
    if (!req.sessions.wants(cmd)) return FORWARD;
    return { action: 'forward', observe: (rsp) => req.sessions.observe(cmd, rsp) };
  }

  async #ownerCommand(req: NvRequester, cmd: ParsedCommand, raw: Buffer, access: NvAccess, claim: OwnerClaim): Promise<PolicyDecision> {
    if (access.kind === 'read') return this.#forward(req, cmd);
    if (this.ownership.isShared(claim)) return respond(TPM_RC.NV_LOCKED);
    if (access.op === 'changeAuth') {
      // Not shared, so no grantee depends on the old auth; the new one is recorded before the guest hears.
      const response = await this.#own(req, cmd, raw);
      if (response.readUInt32BE(6) === TPM_RC.SUCCESS) this.ownership.setAuth(claim, authInClear(cmd, access));
      return { action: 'respond', response };
    }
    if (access.op !== 'undefine' && access.op !== 'undefineSpecial') return this.#forward(req, cmd);
    // As for define: swtpm runs the undefine while the release commits; a refusal puts the row back (the
    // index is not shared, so it had no grants). A crash in between leaves an index #unclaimed adopts.
    const pending = this.#own(req, cmd, raw);
    this.ownership.release(claim.nvIndex);
    const response = await pending.catch((err: unknown) => {
      this.ownership.reinstate(claim);
      throw err;
    });
    if (response.readUInt32BE(6) !== TPM_RC.SUCCESS) this.ownership.reinstate(claim);
    return { action: 'respond', response };
  }

  async #foreignCommand(req: NvRequester, cmd: ParsedCommand, access: NvAccess, claim: OwnerClaim): Promise<PolicyDecision> {
    const granted = this.ownership.hasGrant(claim, req.instance);
    if (!granted) return respond(access.op === 'readPublic' ? rcForHandle(TPM_RC.HANDLE, access.handlePosition! + 1) : TPM_RC.NV_AUTHORIZATION);
    if (access.kind === 'write') return respond(TPM_RC.NV_LOCKED);
    if (access.op !== 'read' && access.op !== 'readPublic') return respond(TPM_RC.NV_AUTHORIZATION);
    // The owner's hierarchy secrets are not the grantee's to use: only the index's own authorization.
    if (access.op === 'read' && access.authHandle !== claim.nvIndex) return respond(TPM_RC.NV_AUTHORIZATION);
    const owner = this.#endpoints.get(claim.owner);
    const bound = cmd.sessions.findIndex((s) => s.handle !== TPM_RH.PW);
    if (bound >= 0) {
      // An HMAC session in the grantee's own swtpm: the proxy stands in for it where it can (nv-shared-read.ts).
      if (access.op === 'read' && owner) {
        const response = await sharedReadWithHmacSession({ cmd, access, claim, owner, guest: req.tpm, sessions: req.sessions });
        if (response) return { action: 'respond', response };
      }
      return respond(TPM_RC_REFERENCE_S0 + bound);
    }
    if (!owner) return respond(TPM_RC.NV_UNAVAILABLE);
    return { action: 'forward-to', instance: owner };
  }
}

/**
 * The index authValue a define or change-auth carries, as the TPM stores it; undefined when a session
 * decrypts the first parameter (the proxy sees ciphertext) and the auth stays the guest's secret.
 */
function authInClear(cmd: ParsedCommand, access: NvAccess): Buffer | undefined {
  if (!access.auth || cmd.sessions.some((s) => s.attributes & TPMA_SESSION.DECRYPT)) return undefined;
  return Buffer.from(stripTrailingZeros(access.auth));
}
