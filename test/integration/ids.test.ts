/**
 * The offloaded IDS end to end on the real Debian guest, one boot for the file: authority (with its
 * heartbeat service), monitor, management plane and tenant talk over their real sockets; the tenant's
 * launch policy allows one enclave measurement, which the authority approves for this VM. The host
 * library starts the enclave; everything it reads crosses the sealed channel. The channel's attack
 * tests (tamper, replay, reorder) are in test/ids/sealed-channel.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEMO_CHECKS, DEMO_GUEST_ALLOWLIST, lastHeartbeatAlertId, startIdsWorld, waitForHeartbeatAlert } from '../../src/cli/demo/ids.ts';
import type { PsRow } from '../../src/ids/checks/pslist.ts';
import { assertAgreesWithPs } from '../ids/ps-compare.ts';
import { measureEnclave } from '../../src/ids/enclave/loader.ts';
import { startIdsSession } from '../../src/ids/host/sgmonitor.ts';
import { fetchEnclaveConfig } from '../../src/ids/host/enclave-config.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';

const HEARTBEAT_MS = 400;

test('the IDS on a real guest: pslist, an attack, a missed heartbeat, an unapproved enclave', { timeout: 900_000 }, async (t) => {
  const guest = await buildGuest();
  const world = await startIdsWorld({ guest, accel: 'tcg', log: () => undefined, heartbeatMs: HEARTBEAT_MS });
  t.after(() => world.close());
  const sh = async (cmd: string) => {
    const r = await runInGuest(world.guestConsole, cmd, 60_000);
    assert.equal(r.exitCode, 0, `${cmd}: ${r.output}`);
    return r.output;
  };
  const session = await world.startSession();
  t.after(() => session.close());
  assert.equal(session.measurement, world.measurement, 'the enclave measured itself as the loader did');
  assert.equal(session.enclave.broken, undefined);

  await t.test('the process list through the sealed channel agrees with ps in the guest', async () => {
    const passwd = await sh('cat /etc/passwd');
    const psOut = await sh('ps -o pid,ppid,user,comm | cat');
    const rows = (await session.enclave.pslist()) as PsRow[];
    assertAgreesWithPs(passwd, psOut, rows);
    for (const name of ['init', 'syslogd', 'httpd', 'vmseal-sensord']) assert.ok(rows.some((r) => r.comm === name && !r.kthread), `${name} is listed`);
  });

  await t.test('every enabled check runs clean through the channel on the untouched guest', async () => {
    for (const name of Object.keys(DEMO_CHECKS)) {
      const r = await session.enclave.runCheck(name);
      assert.deepEqual(r.alerts, [], `${name} is quiet`);
    }
  });

  await t.test('an unauthorized program is reported once, with its evidence, by the enclave', async () => {
    await sh('cp /bin/busybox /tmp/busybox-evil && (/tmp/busybox-evil sleep 100000 &) && until pidof busybox-evil >/dev/null; do sleep 0.1; done');
    const first = await session.enclave.runCheck('allowlist');
    assert.equal(first.alerts.length, 1, JSON.stringify(first.alerts));
    const alert = first.alerts[0] as { kind: string; evidence: Record<string, unknown> };
    assert.equal(alert.kind, 'unauthorized-program');
    assert.equal(alert.evidence.comm, 'busybox-evil');
    assert.equal(alert.evidence.exe, '/tmp/busybox-evil');
    assert.equal(alert.evidence.uid, 0);
    assert.match(String(alert.evidence.task), /^0xffff/);
    // The enclave keeps the check's state across scans: the same process is not reported again.
    assert.deepEqual((await session.enclave.runCheck('allowlist')).alerts, []);
    await sh('killall busybox-evil; rm -f /tmp/busybox-evil');
  });

  await t.test('a check name the registry does not know is refused by the enclave', async () => {
    await assert.rejects(session.enclave.runCheck('no-such-check'), /unknown check: no-such-check/);
  });

  await t.test('an enclave with a configuration the authority never approved is refused at registration', async () => {
    const widened = await fetchEnclaveConfig({
      authorityUrl: new URL(world.cloud.authorityUrl),
      profileText: world.profileText,
      checks: { ...DEMO_CHECKS, allowlist: { ...DEMO_GUEST_ALLOWLIST, comms: [...DEMO_GUEST_ALLOWLIST.comms, 'busybox-evil'] } },
    });
    assert.notEqual(await measureEnclave(widened), world.measurement);
    const before = world.cloud.monitor.alerts.list().length;
    await assert.rejects(
      startIdsSession({ vmId: world.vmId, monitorSocket: world.cloud.monitorSocket, authorityUrl: new URL(world.cloud.authorityUrl), config: widened, profile: world.profileText }),
      /UNAPPROVED_IDS|not approved/i,
    );
    // The authority refused before anything reached the monitor.
    assert.equal(world.cloud.monitor.alerts.list().length, before);
  });

  await t.test('a stopped enclave misses its heartbeat and the authority raises MISSED_HEARTBEAT', async () => {
    const pid = session.enclave.pid;
    assert.ok(pid);
    const after = await lastHeartbeatAlertId(world.cloud);
    // The enclave has been answering (no timing is asserted: a loaded machine may delay an answer).
    const good = world.cloud.heartbeats.state(session.sessionId);
    assert.ok(good.lastGoodSeq !== null, 'the authority has had a correct answer');
    assert.equal(good.lastStatus, 0, 'the enclave reports that it sees the guest');
    process.kill(pid, 'SIGSTOP');
    try {
      const missed = await waitForHeartbeatAlert(world.cloud, session.sessionId, 'MISSED_HEARTBEAT', after, 60_000);
      assert.ok(missed, 'MISSED_HEARTBEAT raised');
      assert.equal(missed.vmId, world.vmId);
      assert.equal(missed.measurement, world.measurement);
      assert.ok((missed.lastGoodSeq ?? 0) >= (good.lastGoodSeq ?? 1), 'the alert names the last answer that arrived');
      t.diagnostic(`MISSED_HEARTBEAT ${Date.parse(missed.at) - Date.parse(missed.lastGoodAt ?? missed.at)} ms after the last good answer (period ${HEARTBEAT_MS} ms)`);
    } finally {
      process.kill(pid, 'SIGKILL');
    }
    await session.enclave.exited;
  });
});
