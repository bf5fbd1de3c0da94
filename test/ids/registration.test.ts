/**
 * IDS key registration end to end without QEMU: the enclave's createRegistration, the authority's
 * POST /v1/ids/sign (real authority directory, approvals, enrolled host) and the monitor's IdsSessions
 * on a real monitor DB. Every refusal the issue names is provoked, and the monitor's alert log checked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createCa } from '../../src/authority/ca.ts';
import { approveIdsMeasurement } from '../../src/authority/ids-approvals.ts';
import { ed25519Sign, generateEd25519KeyPair } from '../../src/crypto/sign.ts';
import { HostCertificateError } from '../../src/crypto/host-certificate.ts';
import { idsRegistrationSignedMessage } from '../../src/formats/protocol/ids-registration.ts';
import { AuthorityKeyError, createRegistration, signRequestOf } from '../../src/ids/channel/registration.ts';
import { RefusalError } from '../../src/monitor/identity/refusal.ts';
import { IdsSessions } from '../../src/monitor/introspect/ids-sessions.ts';
import { openCompact } from '../../src/crypto/hpke.ts';
import { pinnedCaPublicKey } from '../../src/crypto/host-certificate.ts';
import { AlertLog } from '../../src/monitor/state/alerts.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { HOST_ID, MEASUREMENT, OTHER_MEASUREMENT, askAuthority, authorityKey, newRegistration, signedRegistration, tempDir, world } from './ids-fixtures.ts';

async function refused(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => err instanceof RefusalError && err.code === code);
}

test('an approved IDS registers: the authority gets the heartbeat key, the monitor the session key', async (t) => {
  const w = await world(t);
  const { reg, request } = await signedRegistration(w);
  assert.equal(w.heartbeats.registered.length, 1);
  const hb = w.heartbeats.registered[0]!;
  assert.equal(hb.sessionId, reg.header.sessionId);
  assert.deepEqual(hb.binding, { vmId: w.vmId, hostId: HOST_ID, measurement: MEASUREMENT });
  assert.deepEqual(hb.key, reg.heartbeatKey);
  const { sessionId } = await w.sessions.register({ vmId: w.vmId, idsMeasurements: [OTHER_MEASUREMENT, MEASUREMENT] }, request);
  assert.equal(sessionId, reg.header.sessionId);
  assert.equal(w.alerts.list().length, 0);
  // The header is the exact JSON that was sealed and signed.
  assert.deepEqual(JSON.parse(reg.headerBytes.toString('utf8')), reg.header);
  // The session key is sealed to the host, not readable by the authority's key.
  await assert.rejects(openCompact(w.authority.idsKey.privateKey, reg.sealedSessionKey, { info: Buffer.from('vmseal/v1/ids-session'), aad: reg.headerBytes }));
});

test('the authority refuses an unapproved measurement, and a scoped approval for another VM or host', async (t) => {
  const w = await world(t, { approve: false });
  const other = '0'.repeat(31) + '1';
  await approveIdsMeasurement(w.authority.paths, MEASUREMENT, { vmId: other });
  await approveIdsMeasurement(w.authority.paths, MEASUREMENT, { hostId: 'host-2' });
  for (const over of [{ measurement: OTHER_MEASUREMENT }, {}]) {
    const r = await askAuthority(w, await newRegistration(w, over));
    assert.equal(r.status, 403);
    assert.equal(r.body.code, 'UNAPPROVED_IDS');
  }
  assert.equal(w.heartbeats.registered.length, 0);
  await approveIdsMeasurement(w.authority.paths, MEASUREMENT, { vmId: w.vmId, hostId: HOST_ID, note: 'scoped' });
  assert.equal((await askAuthority(w, await newRegistration(w))).status, 200);
});

test('the authority refuses an unenrolled host, a replayed session id and a heartbeat key sealed elsewhere', async (t) => {
  const w = await world(t);
  const reg = await newRegistration(w);
  assert.equal((await askAuthority(w, reg)).status, 200);
  const again = await askAuthority(w, reg);
  assert.deepEqual([again.status, again.body.code], [403, 'REPLAY']);

  const other = await newRegistration(w);
  const swapped = await w.authorityApp.inject({
    method: 'POST',
    url: '/v1/ids/sign',
    payload: { ...signRequestOf(other), sealedHeartbeatKey: reg.sealedHeartbeatKey.toString('base64') },
  });
  assert.deepEqual([swapped.statusCode, swapped.json().code], [400, 'BAD_KEY']);

  // A host the authority never enrolled (the enclave itself would refuse: it checks the certificate).
  const header = { ...other.header, hostId: 'host-9', sessionId: 'cd'.repeat(16) };
  const headerBytes = Buffer.from(JSON.stringify(header));
  const r = await w.authorityApp.inject({ method: 'POST', url: '/v1/ids/sign', payload: { ...signRequestOf(other), header: headerBytes.toString('base64') } });
  assert.deepEqual([r.statusCode, r.json().code], [403, 'HOST_UNKNOWN']);
  assert.equal(w.heartbeats.registered.length, 1);
});

test('the monitor refuses a measurement its tenant policy does not allow (a changed bundle)', async (t) => {
  const w = await world(t);
  await approveIdsMeasurement(w.authority.paths, OTHER_MEASUREMENT);
  const { request } = await signedRegistration(w, { measurement: OTHER_MEASUREMENT });
  await refused(w.sessions.register({ vmId: w.vmId, idsMeasurements: [MEASUREMENT] }, request), 'POLICY');
  await refused(w.sessions.register({ vmId: w.vmId, idsMeasurements: [] }, request), 'POLICY');
  assert.deepEqual(w.alerts.list().map((a) => [a.kind, a.vmId]), [['POLICY', w.vmId], ['POLICY', w.vmId]]);
});

test('the monitor refuses forged signatures', async (t) => {
  const w = await world(t);
  const vm = { vmId: w.vmId, idsMeasurements: [MEASUREMENT, OTHER_MEASUREMENT] };
  const { reg, request } = await signedRegistration(w);
  // A signature by a key that is not the CA's, over the right message.
  const forger = generateEd25519KeyPair();
  const forged = ed25519Sign(forger.privateKey, idsRegistrationSignedMessage(reg.headerBytes, reg.sealedSessionKey, reg.sealedHeartbeatKey));
  await refused(w.sessions.register(vm, { ...request, signature: forged.toString('base64') }), 'BAD_SIGNATURE');
  // The genuine signature with one bit flipped.
  const flipped = Buffer.from(request.signature, 'base64');
  flipped[10]! ^= 1;
  await refused(w.sessions.register(vm, { ...request, signature: flipped.toString('base64') }), 'BAD_SIGNATURE');
  // The genuine signature moved onto another header (another measurement, same session key).
  const moved = { ...reg.header, measurement: OTHER_MEASUREMENT };
  await refused(w.sessions.register(vm, { ...request, header: Buffer.from(JSON.stringify(moved)).toString('base64') }), 'BAD_SIGNATURE');
  // The genuine signature with another sealed session key (the host's own choice of key).
  const mine = await newRegistration(w);
  await refused(w.sessions.register(vm, { ...request, sealedSessionKey: mine.sealedSessionKey.toString('base64') }), 'BAD_SIGNATURE');
  // A monitor that pinned another CA.
  const dir = tempDir(t);
  const db = MonitorDb.open(join(dir, 'm.db'));
  t.after(() => db.close());
  const alerts = new AlertLog(db.sql);
  const otherCa = await createCa({ commonName: 'other' });
  const elsewhere = new IdsSessions({ db: db.sql, hostId: HOST_ID, hostPrivateKey: w.hostKeys.privateKey, caPublicKey: pinnedCaPublicKey(otherCa.certPem), alerts });
  await refused(elsewhere.register(vm, request), 'BAD_SIGNATURE');
  const unpinned = new IdsSessions({ db: db.sql, hostId: HOST_ID, hostPrivateKey: w.hostKeys.privateKey, caPublicKey: undefined, alerts });
  await refused(unpinned.register(vm, request), 'BAD_SIGNATURE');
  assert.equal(w.alerts.list().filter((a) => a.kind === 'BAD_SIGNATURE').length, 4);
  // None of the refusals consumed the session id: the genuine request still registers.
  await w.sessions.register(vm, request);
});

test('the monitor refuses a replayed registration, also after a restart', async (t) => {
  const w = await world(t);
  const vm = { vmId: w.vmId, idsMeasurements: [MEASUREMENT] };
  const { request } = await signedRegistration(w);
  await w.sessions.register(vm, request);
  await refused(w.sessions.register(vm, request), 'REPLAY');
  const restarted = new IdsSessions({ db: w.db.sql, hostId: HOST_ID, hostPrivateKey: w.hostKeys.privateKey, caPublicKey: pinnedCaPublicKey(w.authority.ca.certPem), alerts: w.alerts });
  await refused(restarted.register(vm, request), 'REPLAY');
  assert.equal(w.alerts.list().filter((a) => a.kind === 'REPLAY').length, 2);
});

test('the monitor refuses a registration for another VM or another host', async (t) => {
  const w = await world(t);
  const { request } = await signedRegistration(w);
  const otherVm = 'ef'.repeat(16);
  await refused(w.sessions.register({ vmId: otherVm, idsMeasurements: [MEASUREMENT] }, request), 'WRONG_VM');
  assert.equal(w.alerts.list().at(-1)?.vmId, otherVm);

  const dir = tempDir(t);
  const db = MonitorDb.open(join(dir, 'm.db'));
  t.after(() => db.close());
  const host2 = new IdsSessions({ db: db.sql, hostId: 'host-2', hostPrivateKey: w.hostKeys.privateKey, caPublicKey: pinnedCaPublicKey(w.authority.ca.certPem), alerts: new AlertLog(db.sql) });
  await refused(host2.register({ vmId: w.vmId, idsMeasurements: [MEASUREMENT] }, request), 'WRONG_VM');
  await w.sessions.register({ vmId: w.vmId, idsMeasurements: [MEASUREMENT] }, request);
});

test('the enclave refuses a host certificate for another host, or an authority key the CA did not sign', async (t) => {
  const w = await world(t);
  const key = await authorityKey(w);
  const base = { vmId: w.vmId, measurement: MEASUREMENT, hostCertificatePem: w.hostCertificatePem, caCertificatePem: w.authority.ca.certPem, authorityHpkePublicKey: key.publicKey, authorityKeySignature: key.signature };
  await assert.rejects(createRegistration({ ...base, hostId: 'host-2' }), (e: unknown) => e instanceof HostCertificateError && e.code === 'HOST_MISMATCH');
  const otherCa = await createCa({ commonName: 'other' });
  await assert.rejects(createRegistration({ ...base, hostId: HOST_ID, caCertificatePem: otherCa.certPem }), HostCertificateError);
  const badSig = Buffer.from(key.signature);
  badSig[0]! ^= 1;
  await assert.rejects(createRegistration({ ...base, hostId: HOST_ID, authorityKeySignature: badSig }), AuthorityKeyError);
  await assert.rejects(createRegistration({ ...base, hostId: HOST_ID, authorityHpkePublicKey: w.hostKeys.publicKey }), AuthorityKeyError);
});

test('malformed registration requests are refused without touching state', async (t) => {
  const w = await world(t);
  const vm = { vmId: w.vmId, idsMeasurements: [MEASUREMENT] };
  const { request } = await signedRegistration(w);
  for (const bad of [
    { ...request, header: Buffer.from('{"v":1}').toString('base64') },
    { ...request, header: Buffer.from('not json').toString('base64') },
    { ...request, sealedSessionKey: Buffer.alloc(79).toString('base64') },
    { ...request, signature: Buffer.alloc(63).toString('base64') },
  ]) {
    await assert.rejects(w.sessions.register(vm, bad), /IDS registration header|sealed session key|signature/);
  }
  await w.sessions.register(vm, request);
});
