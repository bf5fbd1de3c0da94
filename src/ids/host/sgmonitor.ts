/**
 * The untrusted host library (seed 000's "SGmonitor library"): starts the IDS enclave, relays its
 * registration (authority POST /v1/ids/sign, then monitor POST /v1/vms/:vmId/ids/sessions), relays
 * its sealed channel frames to the monitor and the authority's heartbeat challenges to it. It holds
 * no key and sees only sealed blobs, the measurement and the results the enclave returns.
 */
import { z } from 'zod';
import type { EnclaveConfig } from '../../formats/protocol/enclave-call.ts';
import { idsRegisterResponseSchema, idsSignResponseSchema } from '../../formats/protocol/ids-registration.ts';
import { EnclaveHost, type EnclaveHostOptions } from './enclave-host.ts';
import { MonitorFrameStream } from './frame-stream.ts';
import { relayHeartbeats } from './heartbeat-relay.ts';
import { relayImaRequests } from './ima-relay.ts';
import { IdsHostRequestError, jsonCall, type Target } from './http.ts';

const hostInfoSchema = z.object({ hostId: z.string().max(64), certificate: z.string().max(16_384) });

export interface IdsSessionOptions extends Pick<EnclaveHostOptions, 'cacheDir' | 'insecureNoNetns' | 'onLog' | 'onStderr'> {
  vmId: string;
  monitorSocket: string;
  authorityUrl: URL;
  config: EnclaveConfig;
  /** The kernel profile text (its SHA-256 must be config.profileSha256). */
  profile: string;
  onHeartbeatError?: (err: Error) => void;
}

export interface IdsSession {
  enclave: EnclaveHost;
  sessionId: string;
  measurement: string;
  /** Stops the heartbeat relay and the enclave. */
  close(): Promise<void>;
}

export async function startIdsSession(opts: IdsSessionOptions): Promise<IdsSession> {
  const monitor: Target = { socketPath: opts.monitorSocket };
  const authority: Target = { url: opts.authorityUrl };
  const host = await jsonCall(monitor, 'GET', '/v1/host', hostInfoSchema);
  if (!host) throw new IdsHostRequestError('the monitor sent no host information');

  let sessionId = '';
  // One upgraded connection carries the session's frames (frame-stream.ts).
  const frames = new MonitorFrameStream(opts.monitorSocket, () => sessionId);
  const enclave = await EnclaveHost.start(opts.config, {
    ...opts,
    relayRead: (frame) => frames.exchange(frame),
  });
  const abort = new AbortController();
  let relay: Promise<void> = Promise.resolve();
  const close = async (): Promise<void> => {
    abort.abort();
    frames.close();
    await enclave.stop();
    await relay;
  };
  try {
    const { measurement } = await enclave.init({ config: opts.config, profile: opts.profile, vmId: opts.vmId, hostId: host.hostId, hostCertificate: host.certificate });
    const reg = await enclave.register();
    sessionId = reg.sessionId;
    const signed = await jsonCall(authority, 'POST', '/v1/ids/sign', idsSignResponseSchema, reg.signRequest);
    if (!signed) throw new IdsHostRequestError('the authority sent no signature');
    relay = relayHeartbeats({ authority, sessionId, enclave, ...(opts.onHeartbeatError ? { onError: opts.onHeartbeatError } : {}) }, abort.signal);
    // The verifier's requests for the IMA list, when the measured configuration enables the check.
    if (Object.hasOwn(opts.config.checks, 'ima-log')) {
      const heartbeats = relay;
      const ima = relayImaRequests({ authority, sessionId, enclave, ...(opts.onHeartbeatError ? { onError: opts.onHeartbeatError } : {}) }, abort.signal);
      relay = Promise.all([heartbeats, ima]).then(() => undefined);
    }
    await jsonCall(monitor, 'POST', `/v1/vms/${encodeURIComponent(opts.vmId)}/ids/sessions`, idsRegisterResponseSchema, { ...reg.signRequest, signature: signed.signature });
    await enclave.registered(signed.signature);
    return { enclave, sessionId, measurement, close };
  } catch (err) {
    await close();
    throw err;
  }
}
