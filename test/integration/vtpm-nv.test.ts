/**
 * NV access control and read-only sharing between two real guests A and B (one QEMU at a time), each with
 * its own swtpm behind the monitor's TPM proxy and the NV policy as the proxy's hook. The guests use
 * ordinary tpm2-tools; the grant goes through the sealed tpm-share command's monitor side with a proof
 * under B's key. A's guest defines and writes; then A's vTPM serves B's reads while B's guest runs (A's
 * swtpm is restarted from its encrypted state, and the NV policy reopened from the database, in between:
 * the binding survives process exit and a monitor restart).
 *
 * Grants from inside the owner guest ride along on the same boots: the tenant peers A→B (sealed tpm-peer,
 * monitor side) before A's guest runs; A's guest defines a second index and shares it with B itself
 * (vmseal-tpm-grant: the vendor command, which the proxy lists in TPM_CAP_COMMANDS, through /dev/tpmrm0; the
 * demo guest's 6.1 kernel still refuses vendor codes there, so on it the tool falls back to /dev/tpm0);
 * B's stock tpm2_nvread reads it and B's own share
 * attempt is refused; one more boot of A revokes it from inside, and B's next read through its proxy fails.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deriveVmKey } from '../../src/crypto/keys.ts';
import { grantProof, peerProof } from '../../src/crypto/tpm-grant-mac.ts';
import { TPM_CC, TPM_RC, guestGrantCommand, nvReadCommand, nvReadPublicCommand, parseNvReadResponse, parseResponse, startupCommand } from '../../src/formats/tpm2/index.ts';
import { buildGuest } from '../../src/guest/build.ts';
import { runInGuest } from '../../src/guest/console-shell.ts';
import { GUEST_READY_MARKER } from '../../src/guest/contract.ts';
import { copyGuestDisk } from '../../src/guest/workdisk.ts';
import { PlainLaunch, type DiskLaunch } from '../../src/monitor/launch/disk-launch.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { runTpmCommand, type NvVm } from '../../src/monitor/vtpm/nv-commands.ts';
import { loadOrCreateNvManagerKey } from '../../src/monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../src/monitor/vtpm/nv-policy.ts';
import { CMD } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import { vtpmStateId } from '../../src/monitor/vtpm/swtpm-instance.ts';
import { ensureVtpmCa } from '../../src/monitor/vtpm/vtpm-ca.ts';
import { Vtpm } from '../../src/monitor/vtpm/vtpm.ts';

const TIMEOUT = 20 * 60_000;
const INDEX = 0x01800010;
/** Shared by A's guest itself. */
const INDEX2 = 0x01800011;

function octal(hex: string): string {
  return Buffer.from(hex, 'hex').reduce((s, b) => s + `\\${b.toString(8).padStart(3, '0')}`, '');
}

test('two guests: A defines and writes, B is refused, A shares, B reads A\'s value, A revokes, B is refused again', { timeout: TIMEOUT }, async (t) => {
  const guest = await buildGuest();
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-vtpm-nv-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'host'));
  const disk = await copyGuestDisk(guest.disk);
  t.after(() => disk.remove());
  const ca = await ensureVtpmCa(join(dir, 'host'), 'host-nv');
  const boot = { kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline };
  const dbPath = join(dir, 'monitor.db');
  const keyPath = join(dir, 'nv-manager.key');
  const openMonitor = async () => {
    const db = MonitorDb.open(dbPath);
    return { db, control: new NvAccessControl({ ownership: new NvOwnership(db.sql, await loadOrCreateNvManagerKey(keyPath)), quota: { indices: 4, bytes: 512 }, log: (m) => t.diagnostic(m) }) };
  };
  const vk = { a: randomBytes(64), b: randomBytes(64) };
  const instance = (v: Buffer) => vtpmStateId(deriveVmKey(v, 'vtpm'));
  const vms: Record<'a' | 'b', NvVm> = {
    a: { vmId: randomBytes(16).toString('hex'), instance: instance(vk.a), commandKey: deriveVmKey(vk.a, 'command') },
    b: { vmId: randomBytes(16).toString('hex'), instance: instance(vk.b), commandKey: deriveVmKey(vk.b, 'command') },
  };
  let monitor = await openMonitor();
  const startVtpm = async (who: 'a' | 'b') => {
    const v = await Vtpm.start({ stateBase: join(dir, 'vtpm'), volumeKey: vk[who], ca, name: `vm-${who}`, boot, policy: monitor.control.policyFor(vms[who].instance) });
    monitor.control.attach(vms[who].instance, v.endpoint, vms[who].vmId);
    return v;
  };
  const running: Array<{ vtpm?: Vtpm; launch?: DiskLaunch }> = [];
  t.after(async () => {
    for (const r of running) {
      await r.launch?.stop(2000);
      await r.vtpm?.stop();
    }
    monitor.db.close();
  });
  const bootGuest = async (vtpm: Vtpm, name: string) => {
    const launch = await PlainLaunch.start({ ...boot, diskPath: disk.path, name, extraArgs: vtpm.qemuArgs() });
    running.push({ launch });
    await launch.vm.console.waitFor(GUEST_READY_MARKER, 300_000);
    await runInGuest(launch.vm.console, 'dmesg -n 1', 60_000);
    return launch;
  };
  const shell = (launch: DiskLaunch) => ({
    ok: async (cmd: string) => {
      const r = await runInGuest(launch.vm.console, cmd, 120_000);
      assert.equal(r.exitCode, 0, `${cmd}:\n${r.output}`);
      return r.output;
    },
    fails: async (cmd: string, rc: RegExp) => {
      const r = await runInGuest(launch.vm.console, cmd, 120_000);
      assert.notEqual(r.exitCode, 0, `${cmd} should fail:\n${r.output}`);
      assert.match(r.output, rc, cmd);
      return r.output;
    },
  });

  // Guest A defines a managed index and writes a value.
  const value = `vmseal-${randomBytes(12).toString('hex')}`;
  const idx = `0x${INDEX.toString(16)}`;
  const lookup = (id: string) => Object.values(vms).find((v) => v.vmId === id);
  let counterA = 0;
  // B runs on this host (its vTPM is up; its guest boots later): the tenant lets A's guest share with it.
  const vtpmB0 = await startVtpm('b');
  running.push({ vtpm: vtpmB0 });
  counterA++;
  await runTpmCommand(monitor.control, vms.a, { vmId: vms.a.vmId, counter: counterA, op: 'tpm-peer', args: { with: vms.b.vmId, proof: peerProof(vms.b.commandKey, { ownerVmId: vms.a.vmId, granteeVmId: vms.b.vmId, counter: counterA }).toString('hex') } }, lookup);
  const vtpmA = await startVtpm('a');
  running.push({ vtpm: vtpmA });
  const launchA = await bootGuest(vtpmA, 'nv-a');
  const a = shell(launchA);

  // A's guest shares a second index with B by itself: the vendor command through /dev/tpmrm0, answered by the proxy.
  const value2 = `guest-${randomBytes(8).toString('hex')}`;
  const idx2 = `0x${INDEX2.toString(16)}`;
  const pw2 = 'guest-pw';
  // The kernel read the TPM's command table at boot; tpm2_getcap (through tpmrm0) shows the vendor entries too.
  const caps = await a.ok('tpm2_getcap commands');
  for (const v of ['0x22405601', '0x22405602']) assert.match(caps, new RegExp(`^${v}:\\n  value: ${v}\\n`, 'm'), caps.slice(-800));
  assert.match(await a.ok('tpm2_getcap properties-fixed'), /TPM2_PT_VENDOR_COMMANDS:\s+raw: 0x2\b/);
  await a.ok(`tpm2_nvdefine ${idx2} -C o -s ${value2.length} -a "ownerread|ownerwrite|authread|authwrite|no_da" -p ${pw2}`);
  await a.ok(`printf %s ${value2} > /tmp/nv2.in && tpm2_nvwrite ${idx2} -C o -i /tmp/nv2.in`);
  await a.fails(`vmseal-tpm-grant share ${idx2} ${vms.b.vmId} wrong-pw`, /TPM_RC 0x000009a2/);
  await a.fails(`vmseal-tpm-grant share ${idx2} ${randomBytes(16).toString('hex')} ${pw2}`, /TPM_RC 0x000001c4/);
  // The very bytes the tool sends, through tpmrm0 by hand. Linux >= 6.3 looks the code up with its V bit
  // (tpm2_find_cc) and passes it to the proxy; older kernels compare only the low 16 bits of the table and
  // answer 80010000000a000b0143 themselves however the TPM lists it: then the tool falls back to /dev/tpm0.
  const [major, minor] = (await a.ok('uname -r')).trim().split('\n').pop()!.split('.').map(Number) as [number, number];
  const rmPassesVendor = major > 6 || (major === 6 && minor >= 3);
  const viaRm = guestGrantCommand('share', INDEX2, vms.b.vmId, Buffer.from(pw2)).toString('hex');
  const rm = (await a.ok(`printf '${octal(viaRm)}' > /tmp/rm.cmd && tpm2_send -T device:/dev/tpmrm0 < /tmp/rm.cmd | od -An -tx1`)).replace(/\s+/g, '');
  if (rmPassesVendor) assert.equal(rm.slice(0, 20), '80020000001300000000', 'TPM_RC_SUCCESS from the proxy, through tpmrm0');
  else assert.equal(rm, '80010000000a000b0143', `tpmrm0 of Linux ${major}.${minor} answers itself: TPM_RC_COMMAND_CODE in the resource-manager layer`);
  // While another process holds /dev/tpm0 (exclusive: one opener): the tool works through tpmrm0 where the
  // kernel passes vendor codes, and cannot fall back where it does not.
  await a.ok('sleep 600 3<>/dev/tpm0 & echo $! > /tmp/holder.pid; sleep 1; kill -0 $(cat /tmp/holder.pid)');
  assert.match(await a.ok('if (: 4<>/dev/tpm0) 2>/dev/null; then echo tpm0-free; else echo tpm0-busy; fi'), /tpm0-busy/);
  const held = await runInGuest(launchA.vm.console, `vmseal-tpm-grant share ${idx2} ${vms.b.vmId} ${pw2}`, 120_000);
  await a.ok('kill $(cat /tmp/holder.pid)');
  if (rmPassesVendor) assert.equal(held.exitCode, 0, held.output);
  else assert.ok(held.exitCode === 1 && /tpm0/.test(held.output), held.output);
  assert.match(await a.ok(`vmseal-tpm-grant share ${idx2} ${vms.b.vmId} ${pw2}`), /done/);
  const grant2 = monitor.control.ownership.ownerState(INDEX2);
  assert.ok(grant2.kind === 'owned' && monitor.control.ownership.hasGrant(grant2.claim, vms.b.instance), 'the guest made the grant');
  await vtpmB0.stop();
  monitor.control.detach(vms.b.instance, vtpmB0.endpoint);
  // The index has its own password: a grantee proves it knows it, under tpm2-tools' HMAC session.
  const pw = 'share-pw';
  await a.ok(`tpm2_nvdefine ${idx} -C o -s ${value.length} -a "ownerread|ownerwrite|authread|authwrite|no_da" -p ${pw}`);
  await a.ok(`printf %s ${value} > /tmp/nv.in && tpm2_nvwrite ${idx} -C o -i /tmp/nv.in`);
  assert.equal((await a.ok(`tpm2_nvread ${idx} -P ${pw} -s ${value.length} -o /tmp/nv.out && cat /tmp/nv.out`)).trim().split('\n').pop(), value);
  await launchA.stop(2000);

  // Monitor restart; A's vTPM serves from its encrypted state with no guest attached.
  monitor.db.close();
  monitor = await openMonitor();
  await vtpmA.stop();
  const vtpmA2 = await startVtpm('a');
  running.push({ vtpm: vtpmA2 });
  assert.equal((await vtpmA2.swtpm.control.request(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0), 0);
  assert.equal((await vtpmA2.endpoint.transact(startupCommand())).readUInt32BE(6), TPM_RC.SUCCESS);
  const aValue = async () => parseNvReadResponse(parseResponse(await vtpmA2.endpoint.transact(nvReadCommand(INDEX, value.length, 0, { password: Buffer.from(pw) })), TPM_CC.NV_Read)).toString();
  assert.equal(await aValue(), value);
  const owner = monitor.control.ownership.ownerState(INDEX);
  assert.equal(owner.kind === 'owned' && owner.claim.owner, vms.a.instance, 'the binding survived');

  // Guest B, no grant: A's index looks absent or refused, cannot be written, undefined or redefined.
  const vtpmB = await startVtpm('b');
  running.push({ vtpm: vtpmB });
  const launchB = await bootGuest(vtpmB, 'nv-b');
  const b = shell(launchB);
  const read = `rm -f /tmp/nv.out; tpm2_nvread ${idx} -P ${pw} -s ${value.length} -o /tmp/nv.out && cat /tmp/nv.out`;
  await b.fails(`tpm2_nvreadpublic ${idx}`, /0x0*18b/i);
  await b.fails(`tpm2_nvread ${idx} -C o -s ${value.length}`, /0x0*(149|18b)/i);
  await b.fails(`printf %s forged > /tmp/x && tpm2_nvwrite ${idx} -C o -i /tmp/x`, /0x0*(149|18b)/i);
  await b.fails(`tpm2_nvundefine ${idx} -C o`, /0x0*(149|18b)/i);
  await b.fails(`tpm2_nvdefine ${idx} -C o -s 8 -a "ownerread|ownerwrite"`, /0x0*14c/i);
  // A malformed NV_Write to A's index on /dev/tpm0 (its data size claims 32 bytes, 2 follow): a TPM error.
  const malformed = '8002000000230000013701800010018000100000000940000009000000000000204141';
  const rawOut = await b.ok(`printf '${octal(malformed)}' > /tmp/cmd && exec 3<>/dev/tpm0 && cat /tmp/cmd >&3 && dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1; exec 3<&-`);
  assert.equal(rawOut.replace(/\s+/g, ''), '80010000000a000001da', 'TPM_RC_INSUFFICIENT, parameter 1');
  // B tries to exhaust NV in the managed range: its quota stops it with TPM_RC_NV_SPACE.
  const exhaust = await runInGuest(launchB.vm.console, 'for i in 0 1 2 3 4 5 6 7; do tpm2_nvdefine 0x1800${i}00 -C o -s 128 -a "ownerread|ownerwrite" 2>&1 | grep -io "0x0*14b" | head -n 1; done', 180_000);
  assert.match(exhaust.output, /0x0*14b/i, exhaust.output);
  assert.equal(await aValue(), value, "A's value is unchanged");

  // A's guest's grant of INDEX2 survived the monitor restart: B's stock tpm2_nvread reads it from A's vTPM,
  // and B's guest cannot share A's index onward (it does not own it: the index looks absent).
  const read2 = `rm -f /tmp/nv2.out; tpm2_nvread ${idx2} -P ${pw2} -s ${value2.length} -o /tmp/nv2.out && cat /tmp/nv2.out`;
  assert.equal((await b.ok(read2)).trim().split('\n').pop(), value2, "B's tpm2_nvread returns what A's guest shared");
  await b.fails(`vmseal-tpm-grant share ${idx2} ${vms.b.vmId} ${pw2}`, /TPM_RC 0x0000018b/);
  await b.fails(`vmseal-tpm-grant revoke ${idx2} ${vms.b.vmId} ${pw2}`, /TPM_RC 0x0000018b/);

  // A shares with B (sealed tpm-share, monitor side, proof under B's key): B reads with plain tpm2_nvread.
  counterA++;
  const proof = grantProof(vms.b.commandKey, { ownerVmId: vms.a.vmId, granteeVmId: vms.b.vmId, nvIndex: INDEX, counter: counterA }).toString('hex');
  await runTpmCommand(monitor.control, vms.a, { vmId: vms.a.vmId, counter: counterA, op: 'tpm-share', args: { index: INDEX, with: vms.b.vmId, proof } }, lookup);
  // NV_Read under a password session (TPM_RS_PW with the index password), the exact bytes a TSS sends for it.
  const nvReadPw = nvReadCommand(INDEX, value.length, 0, { password: Buffer.from(pw) }).toString('hex');
  const rawRead = async () => (await b.ok(`printf '${octal(nvReadPw)}' > /tmp/rd && exec 3<>/dev/tpm0 && cat /tmp/rd >&3 && dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1; exec 3<&-`)).replace(/\s+/g, '');
  const shared = await rawRead();
  assert.equal(shared.slice(12, 20), '00000000', `NV_Read from B succeeds: ${shared}`);
  assert.equal(Buffer.from(shared.slice(32, 32 + 2 * value.length), 'hex').toString(), value, 'B reads A\'s value from A\'s vTPM');
  // Ordinary tpm2_nvread: tpm2-tools 5.4 wraps the password in an unbound HMAC session that lives in B's own
  // TPM; the proxy checks its HMAC, reads from A's TPM and answers for the session (docs/vtpm-nv.md).
  assert.equal((await b.ok(read)).trim().split('\n').pop(), value, "B's tpm2_nvread returns A's value");
  assert.equal((await b.ok(read)).trim().split('\n').pop(), value, 'and again (the session table follows B\'s TPM)');
  await b.fails(`tpm2_nvread ${idx} -P wrong-pw -s ${value.length}`, /0x0*98e/i);
  // B's own TPM still works with sessions after the shared reads.
  await b.ok('tpm2_nvdefine 0x1500016 -C o -s 8 -a "ownerread|ownerwrite|authread|authwrite" -p mine && printf 12345678 > /tmp/m && tpm2_nvwrite 0x1500016 -P mine -i /tmp/m && tpm2_nvread 0x1500016 -P mine -s 8 && tpm2_nvundefine 0x1500016 -C o');
  assert.match(await b.ok(`tpm2_nvreadpublic ${idx}`), /size: 31|size: *\d+/, 'B sees the shared index\'s public area');
  await b.fails(`printf %s forged > /tmp/x && tpm2_nvwrite ${idx} -i /tmp/x`, /0x0*148/i);

  // A revokes: B's very next read fails.
  counterA++;
  await runTpmCommand(monitor.control, vms.a, { vmId: vms.a.vmId, counter: counterA, op: 'tpm-revoke', args: { index: INDEX, from: vms.b.vmId } }, lookup);
  assert.equal((await rawRead()).slice(12, 20), '00000149', 'TPM_RC_NV_AUTHORIZATION after the revoke');
  await b.fails(read, /0x0*(149|18b)/i); // the index looks absent again: NV_ReadPublic answers TPM_RC_HANDLE
  await b.fails(`tpm2_nvreadpublic ${idx}`, /0x0*18b/i);
  assert.equal(await aValue(), value, "A's value is unchanged");

  // The management plane's view of A's state: ciphertext only.
  for (const f of readdirSync(vtpmA2.stateDir)) assert.ok(!readFileSync(join(vtpmA2.stateDir, f)).includes(value), `${f} holds the NV value in clear`);

  // A's guest revokes INDEX2 from inside (one more boot of A; B's vTPM keeps running); B's next read fails.
  await launchB.stop(2000);
  await vtpmA2.stop();
  const vtpmA3 = await startVtpm('a');
  running.push({ vtpm: vtpmA3 });
  const launchA3 = await bootGuest(vtpmA3, 'nv-a3');
  const a3 = shell(launchA3);
  await a3.fails(`vmseal-tpm-grant revoke ${idx2} ${vms.b.vmId} wrong-pw`, /TPM_RC 0x000009a2/);
  assert.match(await a3.ok(`vmseal-tpm-grant revoke ${idx2} ${vms.b.vmId} ${pw2}`), /done/);
  await a3.fails(`vmseal-tpm-grant revoke ${idx2} ${vms.b.vmId} ${pw2}`, /TPM_RC 0x000001c4/);
  await launchA3.stop(2000);
  const bRead2 = await vtpmB.proxy.handleCommand(nvReadCommand(INDEX2, value2.length, 0, { password: Buffer.from(pw2) }));
  assert.equal(bRead2.readUInt32BE(6), TPM_RC.NV_AUTHORIZATION, "B's NV_Read of INDEX2 after the guest's revoke");
  assert.equal((await vtpmB.proxy.handleCommand(nvReadPublicCommand(INDEX2))).readUInt32BE(6), 0x18b, 'and the index looks absent to B again');
});
