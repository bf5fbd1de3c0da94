/**
 * The program inside the enclave process (bundled by loader.ts, confined by sandbox.ts). It serves
 * ECALLs from the host library on stdin/stdout and makes OCALLs back: channel reads, which the host
 * relays to the monitor, and logs. Its keys are drawn here (node:crypto) and live in this process's
 * memory only; nothing that leaves it is readable by the host except results the host asked for
 * (check alerts, the process list) and the heartbeat MAC.
 *
 * stdout is the call pipe: console output is sent to stderr so no stray write can corrupt a frame.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { heartbeatMac } from '../../crypto/heartbeat-mac.ts';
import { pinnedCaPublicKey } from '../../crypto/host-certificate.ts';
import { ed25519Verify } from '../../crypto/sign.ts';
import {
  Ecall,
  EnclaveCallError,
  Ocall,
  decodeJsonPayload,
  encodeJson,
  encodePsRows,
  heartbeatParamsSchema,
  initParamsSchema,
  pslistParamsSchema,
  registeredParamsSchema,
  runCheckParamsSchema,
  stopParamsSchema,
  type InitParams,
} from '../../formats/protocol/enclave-call.ts';
import { IsfError, parseIsfText, type IsfProfile } from '../../formats/isf.ts';
import { decodeIdsSignature, idsRegistrationSignedMessage } from '../../formats/protocol/ids-registration.ts';
import { createRegistration, signRequestOf, type Registration } from '../channel/registration.ts';
import { SealedChannelClient } from '../channel/sealed-channel-client.ts';
import { CallPeer, PipeClosedError } from './call-peer.ts';
import { CheckError, openCheckContext, parseEnabledChecks, processList, runCheck, type CheckContext, type EnabledChecks } from './check-registry.ts';
import { enclaveMeasurement } from './measurement.ts';

/** Heartbeat status byte: 0 the IDS can see the guest; 1 it cannot (not yet registered, or its channel broke). */
const STATUS_OK = 0;
const STATUS_BLIND = 1;

for (const method of ['log', 'info', 'debug', 'warn', 'error'] as const) {
  console[method] = (...args: unknown[]) => process.stderr.write(`${args.map(String).join(' ')}\n`);
}

interface Session {
  init: InitParams;
  measurement: string;
  profile: IsfProfile;
  checks: EnabledChecks;
  registration?: Registration;
  channel?: SealedChannelClient;
  channelFailed?: boolean;
  context?: Promise<CheckContext>;
}

let session: Session | undefined;

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new EnclaveCallError(`${what} first`);
  return value;
}

function init(params: InitParams): { measurement: string } {
  if (session) throw new EnclaveCallError('already initialised');
  const profileHash = createHash('sha256').update(params.profile, 'utf8').digest('hex');
  if (profileHash !== params.config.profileSha256) throw new EnclaveCallError(`the kernel profile hashes to ${profileHash}, not the configured ${params.config.profileSha256}`);
  let checks: EnabledChecks;
  try {
    checks = parseEnabledChecks(params.config.checks);
  } catch (err) {
    if (err instanceof CheckError) throw new EnclaveCallError(`the configuration: ${err.message}`);
    throw err;
  }
  let profile: IsfProfile;
  try {
    // Lossless: kernel addresses are beyond 2^53, which JSON.parse would round.
    profile = parseIsfText(params.profile);
  } catch (err) {
    if (err instanceof IsfError) throw new EnclaveCallError(`the kernel profile: ${err.message}`);
    throw err;
  }
  // The enclave measures the bundle it runs from and the configuration it was given, rather than
  // trusting a value from the host.
  const measurement = enclaveMeasurement(readFileSync(process.argv[1] as string), params.config);
  session = { init: params, measurement, profile, checks };
  return { measurement };
}

async function register(): Promise<unknown> {
  const s = need(session, 'init');
  if (s.registration) throw new EnclaveCallError('already registered: a session key is drawn once per enclave');
  const { config } = s.init;
  s.registration = await createRegistration({
    vmId: s.init.vmId,
    hostId: s.init.hostId,
    measurement: s.measurement,
    hostCertificatePem: s.init.hostCertificate,
    caCertificatePem: config.authorityCaCert,
    authorityHpkePublicKey: Buffer.from(config.authorityHpkePublicKey, 'base64'),
    authorityKeySignature: Buffer.from(config.authorityKeySignature, 'base64'),
  });
  return { sessionId: s.registration.header.sessionId, signRequest: signRequestOf(s.registration) };
}

function registered(signatureText: string): { ok: true } {
  const s = need(session, 'init');
  const r = need(s.registration, 'register');
  if (s.channel) throw new EnclaveCallError('already registered');
  const signature = decodeIdsSignature(signatureText);
  const message = idsRegistrationSignedMessage(r.headerBytes, r.sealedSessionKey, r.sealedHeartbeatKey);
  if (!ed25519Verify(pinnedCaPublicKey(s.init.config.authorityCaCert), message, signature)) {
    throw new EnclaveCallError('the registration signature does not verify against the configured authority CA');
  }
  s.channel = new SealedChannelClient({
    sessionId: r.header.sessionId,
    sessionKey: r.sessionKey,
    mode: s.init.config.benchPlainChannel === true ? 'plain' : 'sealed',
    transport: async (frame) => {
      try {
        return await peer.call(Ocall.channelRead, frame);
      } catch (err) {
        s.channelFailed = true;
        throw err;
      }
    },
  });
  return { ok: true };
}

function heartbeat(seq: number, nonce: Buffer): { status: number; mac: string } {
  const s = need(session, 'init');
  const r = need(s.registration, 'register');
  const status = s.channel && !s.channelFailed ? STATUS_OK : STATUS_BLIND;
  return { status, mac: heartbeatMac(r.heartbeatKey, r.header.sessionId, seq, nonce, status).toString('base64') };
}

function context(): Promise<CheckContext> {
  const s = need(session, 'init');
  const channel = need(s.channel, 'registered');
  // One kernel view per session: finding the KASLR slide is a request of its own.
  s.context ??= openCheckContext(channel, s.profile);
  s.context.catch(() => (s.context = undefined));
  return s.context;
}

async function serve(type: number, payload: Buffer): Promise<Uint8Array> {
  switch (type) {
    case Ecall.init:
      return encodeJson(init(decodeJsonPayload('init', initParamsSchema, payload)));
    case Ecall.register:
      return encodeJson(await register());
    case Ecall.registered:
      return encodeJson(registered(decodeJsonPayload('registered', registeredParamsSchema, payload).signature));
    case Ecall.heartbeat: {
      const p = decodeJsonPayload('heartbeat', heartbeatParamsSchema, payload);
      return encodeJson(heartbeat(p.seq, p.nonce));
    }
    case Ecall.runCheck: {
      const p = decodeJsonPayload('run-check', runCheckParamsSchema, payload);
      const s = need(session, 'init');
      return encodeJson(await runCheck(p.name, await context(), s.checks));
    }
    case Ecall.pslist:
      decodeJsonPayload('pslist', pslistParamsSchema, payload);
      return encodePsRows(await processList(await context()));
    case Ecall.stop:
      decodeJsonPayload('stop', stopParamsSchema, payload);
      setImmediate(() => process.exit(0));
      return encodeJson({});
    default:
      throw new EnclaveCallError(`unknown ECALL ${type}`);
  }
}

const peer = new CallPeer('enclave', process.stdin, process.stdout, serve, (reason) => {
  process.stderr.write(`enclave: stopping: ${reason.message}\n`);
  process.exit(reason instanceof PipeClosedError ? 0 : 2);
});
