import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ALERTS_FILE, readAlertsFile } from '../../src/authority/heartbeat.ts';
import { challengeSchema, heartbeatAcceptedSchema as idsOk, type HeartbeatAlert } from '../../src/formats/protocol/ids-heartbeat.ts';
import { idsSignResponseSchema } from '../../src/formats/protocol/ids-registration.ts';
import { EnclaveHost } from '../../src/ids/host/enclave-host.ts';
import { relayHeartbeats } from '../../src/ids/host/heartbeat-relay.ts';
import { IdsHostRequestError, jsonCall } from '../../src/ids/host/http.ts';
import { HOST_ID, PROFILE, VM_ID, approve, startTestAuthority, type TestAuthority } from '../ids/enclave-fixtures.ts';

const PERIOD_MS = 200;
let t: TestAuthority;

before(async () => {
  t = await startTestAuthority({ periodMs: PERIOD_MS });
});
after(async () => {
  await t.close();
});

/** A real enclave process, registered with the authority through its real sign route. */
async function registeredEnclave(): Promise<{ enclave: EnclaveHost; sessionId: string }> {
  const enclave = await EnclaveHost.start(t.config, { cacheDir: t.cacheDir });
  const { measurement } = await enclave.init({ config: t.config, profile: PROFILE, vmId: VM_ID, hostId: HOST_ID, hostCertificate: t.hostCertificate });
  await approve(t, measurement);
  const reg = await enclave.register();
  const signed = await jsonCall({ url: t.url }, 'POST', '/v1/ids/sign', idsSignResponseSchema, reg.signRequest);
  assert.ok(signed);
  await enclave.registered(signed.signature);
  return { enclave, sessionId: reg.sessionId };
}

async function until(what: string, cond: () => boolean, limitMs = 30_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function nextAlert(sessionId: string): Promise<HeartbeatAlert> {
  const end = Date.now() + 30_000;
  let seen = 0;
  while (Date.now() < end) {
    const fresh = await t.heartbeats.alerts(seen, 1000);
    const found = fresh.find((a) => a.sessionId === sessionId);
    if (found) return found;
    seen = fresh.at(-1)?.id ?? seen;
  }
  throw new Error(`no alert for session ${sessionId}`);
}

function assertWithinThreePeriods(alert: HeartbeatAlert): void {
  assert.ok(alert.lastGoodAt, 'the session had answered before');
  const lag = Date.parse(alert.at) - Date.parse(alert.lastGoodAt);
  assert.ok(lag <= 3 * PERIOD_MS, `alert ${lag} ms after the last good answer (limit ${3 * PERIOD_MS})`);
}

describe('heartbeat with a real enclave', () => {
  test('a live enclave raises no alert; kill -9 raises MISSED_HEARTBEAT within 3 periods', async () => {
    const { enclave, sessionId } = await registeredEnclave();
    const abort = new AbortController();
    const relay = relayHeartbeats({ authority: { url: t.url }, sessionId, enclave }, abort.signal);
    try {
      await until('six good answers', () => (t.heartbeats.state(sessionId).lastGoodSeq ?? 0) >= 6);
      assert.equal(t.heartbeats.state(sessionId).lastStatus, 0, 'registered enclave reports it can see');
      assert.deepEqual((await t.heartbeats.alerts()).filter((a) => a.sessionId === sessionId), []);

      const seqBeforeKill = t.heartbeats.state(sessionId).lastGoodSeq ?? 0;
      enclave.child.kill('SIGKILL');
      const alert = await nextAlert(sessionId);
      assert.equal(alert.kind, 'MISSED_HEARTBEAT');
      assert.equal(alert.vmId, VM_ID);
      assert.equal(alert.hostId, HOST_ID);
      assert.ok((alert.lastGoodSeq ?? 0) >= seqBeforeKill);
      assertWithinThreePeriods(alert);
      const onDisk = await readAlertsFile(join(t.dir, ALERTS_FILE));
      assert.ok(onDisk.some((a) => a.id === alert.id && a.kind === 'MISSED_HEARTBEAT'), 'the alert is persisted');
    } finally {
      abort.abort();
      enclave.child.kill('SIGKILL');
      await enclave.exited;
      await relay;
    }
  });

  test('SIGSTOP raises MISSED_HEARTBEAT within 3 periods; answers resume after SIGCONT', async () => {
    const { enclave, sessionId } = await registeredEnclave();
    const abort = new AbortController();
    const relay = relayHeartbeats({ authority: { url: t.url }, sessionId, enclave, answerTimeoutMs: 1000 }, abort.signal);
    try {
      await until('three good answers', () => (t.heartbeats.state(sessionId).lastGoodSeq ?? 0) >= 3);
      enclave.child.kill('SIGSTOP');
      const alert = await nextAlert(sessionId);
      assert.equal(alert.kind, 'MISSED_HEARTBEAT');
      assertWithinThreePeriods(alert);
      const stoppedAt = alert.lastGoodSeq ?? 0;
      enclave.child.kill('SIGCONT');
      await until('answers after SIGCONT', () => (t.heartbeats.state(sessionId).lastGoodSeq ?? 0) > stoppedAt && !t.heartbeats.state(sessionId).missing);
    } finally {
      abort.abort();
      enclave.child.kill('SIGCONT');
      await enclave.stop();
      await relay;
    }
  });

  test('a wrong MAC raises BAD_HEARTBEAT at once, recorded before the refusal', async () => {
    const { enclave, sessionId } = await registeredEnclave();
    try {
      const challenge = await jsonCall({ url: t.url }, 'GET', `/v1/ids/sessions/${sessionId}/challenge?after=0&waitMs=5000`, challengeSchema);
      assert.ok(challenge);
      const answer = await enclave.heartbeat(challenge.seq, challenge.nonce);
      const forged = Buffer.from(answer.mac);
      forged[0] = (forged[0] ?? 0) ^ 1;
      await assert.rejects(
        jsonCall({ url: t.url }, 'POST', `/v1/ids/sessions/${sessionId}/heartbeat`, idsOk, { seq: challenge.seq, status: answer.status, mac: forged.toString('base64') }),
        (err: unknown) => err instanceof IdsHostRequestError && err.code === 'BAD_MAC',
      );
      const onDisk = (await readAlertsFile(join(t.dir, ALERTS_FILE))).filter((a) => a.sessionId === sessionId);
      assert.equal(onDisk.length, 1);
      assert.equal(onDisk[0]?.kind, 'BAD_HEARTBEAT');
      assert.equal(onDisk[0]?.lastGoodSeq, null);

      // The real enclave's answer to a fresh challenge is accepted; the spent challenge is not.
      const next = await jsonCall({ url: t.url }, 'GET', `/v1/ids/sessions/${sessionId}/challenge?after=${challenge.seq}&waitMs=5000`, challengeSchema);
      assert.ok(next);
      const good = await enclave.heartbeat(next.seq, next.nonce);
      await jsonCall({ url: t.url }, 'POST', `/v1/ids/sessions/${sessionId}/heartbeat`, idsOk, { seq: next.seq, status: good.status, mac: good.mac.toString('base64') });
      assert.equal(t.heartbeats.state(sessionId).lastGoodSeq, next.seq);
      await assert.rejects(
        jsonCall({ url: t.url }, 'POST', `/v1/ids/sessions/${sessionId}/heartbeat`, idsOk, { seq: challenge.seq, status: answer.status, mac: answer.mac.toString('base64') }),
        (err: unknown) => err instanceof IdsHostRequestError && err.code === 'STALE_CHALLENGE',
      );
    } finally {
      await enclave.stop();
    }
  });

  test('heartbeat routes refuse unknown sessions and malformed answers', async () => {
    const unknown = 'ffffffffffffffffffffffffffffffff';
    await assert.rejects(
      jsonCall({ url: t.url }, 'GET', `/v1/ids/sessions/${unknown}/challenge?waitMs=0`, challengeSchema),
      (err: unknown) => err instanceof IdsHostRequestError && err.code === 'UNKNOWN_SESSION',
    );
    await assert.rejects(
      jsonCall({ url: t.url }, 'POST', `/v1/ids/sessions/${unknown}/heartbeat`, idsOk, { seq: 1, status: 0, mac: 'AAAA' }),
      (err: unknown) => err instanceof IdsHostRequestError && err.status === 400,
    );
  });
});


