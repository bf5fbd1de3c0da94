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
 * business: they live in its own swtpm, which no other VM reaches.
 */
import { TPM_CC, TPM_RC, TPM_RH, Tpm2FormatError, errorResponse, nvAccess, nvHandlesOf, rcForHandle, type NvAccess, type ParsedCommand } from '../../formats/tpm2/index.ts';
import { DEFAULT_NV_QUOTA, NvOwnership, type NvQuota } from './nv-ownership.ts';
import type { OwnerClaim } from './nv-token.ts';
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
    return (cmd, raw) => {
      const tpm = this.#endpoints.get(instance);
      return tpm ? this.decide({ instance, tpm }, cmd, raw) : unattached(cmd);
    };
  }

  /** `instance`'s swtpm runs: its own managed commands and its grantees' reads go there. */
  attach(instance: string, tpm: TpmEndpoint): void {
    this.#endpoints.set(instance, tpm);
  }

  /** Its swtpm stopped: grantees' reads of its indices get TPM_RC_NV_UNAVAILABLE until it is back. */
  detach(instance: string, tpm: TpmEndpoint): void {
    if (this.#endpoints.get(instance) === tpm) this.#endpoints.delete(instance);
  }

  /** The decision for one well-formed command `cmd` (whose bytes are `raw`) from `req`. */
  async decide(req: NvRequester, cmd: ParsedCommand, raw: Buffer): Promise<PolicyDecision> {
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
    if (access.op === 'define') return this.#define(req, raw, access, state);
    if (state.kind === 'tampered') return respond(access.op === 'readPublic' ? rcForHandle(TPM_RC.HANDLE, access.handlePosition! + 1) : TPM_RC.NV_AUTHORIZATION);
    // No owner: nothing of anyone else is there; the VM's own swtpm answers (TPM_RC_HANDLE).
    if (state.kind === 'none') return FORWARD;
    const claim = state.claim;
    if (claim.owner === req.instance) return this.#ownerCommand(req, raw, access, claim);
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

  async #define(req: NvRequester, raw: Buffer, access: NvAccess, state: ReturnType<NvOwnership['ownerState']>): Promise<PolicyDecision> {
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
    // A repeated define by the owner of an index its swtpm still has fails in swtpm (NV_DEFINED) and keeps
    // the old row and its grants; only a fresh claim is undone on failure.
    const fresh = state.kind === 'none';
    if (fresh) this.ownership.claim(req.instance, nvIndex, dataSize);
    let response: Buffer;
    try {
      response = await req.tpm.transact(raw);
    } catch (err) {
      if (fresh) this.ownership.release(nvIndex);
      throw err;
    }
    const rc = response.readUInt32BE(6);
    if (rc !== TPM_RC.SUCCESS) {
      if (fresh) this.ownership.release(nvIndex);
    } else if (!fresh) {
      // The owner defined it again (its swtpm had lost it, e.g. TPM2_Clear): a new definition, new nonce, no grants.
      this.ownership.claim(req.instance, nvIndex, dataSize);
    }
    return { action: 'respond', response };
  }

  async #ownerCommand(req: NvRequester, raw: Buffer, access: NvAccess, claim: OwnerClaim): Promise<PolicyDecision> {
    if (access.kind === 'read') return FORWARD;
    if (this.ownership.isShared(claim)) return respond(TPM_RC.NV_LOCKED);
    if (access.op !== 'undefine' && access.op !== 'undefineSpecial') return FORWARD;
    const response = await req.tpm.transact(raw);
    if (response.readUInt32BE(6) === TPM_RC.SUCCESS) this.ownership.release(claim.nvIndex);
    return { action: 'respond', response };
  }

  #foreignCommand(req: NvRequester, cmd: ParsedCommand, access: NvAccess, claim: OwnerClaim): PolicyDecision {
    const granted = this.ownership.hasGrant(claim, req.instance);
    if (!granted) return respond(access.op === 'readPublic' ? rcForHandle(TPM_RC.HANDLE, access.handlePosition! + 1) : TPM_RC.NV_AUTHORIZATION);
    if (access.kind === 'write') return respond(TPM_RC.NV_LOCKED);
    if (access.op !== 'read' && access.op !== 'readPublic') return respond(TPM_RC.NV_AUTHORIZATION);
    // The owner's hierarchy secrets are not the grantee's to use: only the index's own authorization.
    if (access.op === 'read' && access.authHandle !== claim.nvIndex) return respond(TPM_RC.NV_AUTHORIZATION);
    const bound = cmd.sessions.findIndex((s) => s.handle !== TPM_RH.PW);
    if (bound >= 0) return respond(TPM_RC_REFERENCE_S0 + bound);
    const owner = this.#endpoints.get(claim.owner);
    if (!owner) return respond(TPM_RC.NV_UNAVAILABLE);
    return { action: 'forward-to', instance: owner };
  }
}
