/**
 * The data paths bench/vtpm.ts times, set up once and shared with test/monitor/vtpm-bench-path.test.ts (which
 * proves each path returns what the direct one does, so the bench measures real work):
 *
 *   direct  the monitor's own channel to VM A's swtpm (TpmChannel over the data socketpair);
 *   proxy   what QEMU uses: a stand-in client (test/monitor/vtpm-fixtures.ts FakeQemu) on A's proxy control
 *           socket, a SET_DATAFD socketpair, every command parsed and judged by the NV access policy
 *           (NvAccessControl over a real monitor database) before it reaches A's swtpm;
 *   shared  VM B's stand-in client reading A's index through B's proxy and a read grant: the policy sends it
 *           to A's swtpm.
 *
 * Two real swtpm instances, provisioned with EK certificates like every vTPM, booted as QEMU boots them
 * (SET_DATAFD, CMD_INIT, Startup: the proxy performs the measured launch).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { deriveVmKey } from '../../src/crypto/keys.ts';
import {
  TPM_ALG,
  TPM_RC,
  TPM_RH,
  TPMA_NV,
  nvDefineSpaceCommand,
  nvReadCommand,
  nvUndefineSpaceCommand,
  nvWriteCommand,
  pcrExtendCommand,
  quoteCommand,
  startupCommand,
  type NvPublic,
} from '../../src/formats/tpm2/index.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { flushAk, loadAk, type LoadedAk } from '../../src/monitor/vtpm/attestation-key.ts';
import { loadOrCreateNvManagerKey } from '../../src/monitor/vtpm/nv-manager-key.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../src/monitor/vtpm/nv-policy.ts';
import { CMD, PTM_RES } from '../../src/monitor/vtpm/swtpm-ctrl.ts';
import { vtpmStateId } from '../../src/monitor/vtpm/swtpm-instance.ts';
import { ensureVtpmCa } from '../../src/monitor/vtpm/vtpm-ca.ts';
import { Vtpm } from '../../src/monitor/vtpm/vtpm.ts';
import { FakeQemu } from '../../test/monitor/vtpm-fixtures.ts';

/** A's private index (read, write), the index it shares with B, and the one defined and undefined per round. */
export const INDEX_PRIVATE = 0x01800100;
export const INDEX_SHARED = 0x01800101;
export const INDEX_SCRATCH = 0x01800102;
/** Claimed and released in the monitor database only, never defined in a TPM. */
const INDEX_PROBE = 0x0180fff0;
export const NV_SIZE = 32;
export const EXTEND_PCR = 16; // the debug PCR: resettable, measures nothing of the boot

/** One operation, sent the same way down each path; `check` throws unless a response succeeded. */
export interface BenchOp {
  name: 'nv_read' | 'nv_write' | 'nv_define' | 'nv_undefine' | 'pcr_extend' | 'quote';
  command(): Buffer;
}

export type Send = (command: Buffer) => Promise<Buffer>;

export interface VtpmBenchPath {
  ops: BenchOp[];
  /** A's swtpm, straight. */
  direct: Send;
  /** A's swtpm through A's proxy and the NV policy. */
  proxy: Send;
  /** B's proxy; the grant routes reads of INDEX_SHARED to A's swtpm. */
  sharedProxy: Send;
  sharedRead(): Buffer;
  /**
   * One ownership commit as the policy makes it around NV_DefineSpace/NV_UndefineSpace (claim, then release,
   * of an index no VM uses; each a SQLite transaction with synchronous=FULL); returns [claim ms, release ms].
   */
  commitProbe(): [number, number];
  /** Proxy statistics of A and B, to show which way commands went. */
  stats(): { a: Vtpm['proxy']['stats']; b: Vtpm['proxy']['stats'] };
  close(): Promise<void>;
}

export const rcOf = (rsp: Buffer): number => rsp.readUInt32BE(6);

function ok(rsp: Buffer, what: string): Buffer {
  if (rcOf(rsp) !== TPM_RC.SUCCESS) throw new Error(`${what}: TPM_RC 0x${rcOf(rsp).toString(16)}`);
  return rsp;
}

function nvPublic(nvIndex: number): NvPublic {
  return { nvIndex, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.NO_DA, authPolicy: Buffer.alloc(0), dataSize: NV_SIZE };
}

/** Connects a stand-in QEMU and boots the TPM the way QEMU and SeaBIOS do. */
async function bootClient(v: Vtpm): Promise<FakeQemu> {
  const q = new FakeQemu(v.ctrlPath);
  if ((await q.setDataFd()).readUInt32BE(0) !== PTM_RES.SUCCESS) throw new Error('SET_DATAFD failed');
  if ((await q.ctrl(CMD.INIT, Buffer.alloc(4), 4)).readUInt32BE(0) !== PTM_RES.SUCCESS) throw new Error('CMD_INIT failed');
  ok(await q.tpm(startupCommand()), 'Startup');
  return q;
}

export async function openVtpmBenchPath(log: (m: string) => void = () => undefined): Promise<VtpmBenchPath> {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-vtpm-bench-'));
  const cleanup: Array<() => unknown> = [() => rmSync(dir, { recursive: true, force: true })];
  const close = async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  };
  try {
    const boot = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), cmdline: 'console=ttyS0 ima_policy=tcb panic=-1' };
    writeFileSync(boot.kernel, randomBytes(64 * 1024));
    writeFileSync(boot.initrd, randomBytes(32 * 1024));
    mkdirSync(join(dir, 'host'), { mode: 0o700 });
    const ca = await ensureVtpmCa(join(dir, 'host'), 'bench-host');
    const db = MonitorDb.open(join(dir, 'host', 'monitor.db'));
    cleanup.push(() => db.close());
    const managerKey = await loadOrCreateNvManagerKey(join(dir, 'host', 'nv-manager.key'));
    const control = new NvAccessControl({ ownership: new NvOwnership(db.sql, managerKey) });

    const startVm = async (name: string) => {
      const volumeKey = randomBytes(64);
      const instance = vtpmStateId(deriveVmKey(volumeKey, 'vtpm'));
      log(`starting ${name}'s swtpm (provisioning an EK certificate)`);
      const v = await Vtpm.start({ stateBase: join(dir, 'vtpm'), runDirBase: dir, volumeKey, ca, name, boot, policy: control.policyFor(instance) });
      cleanup.push(() => v.stop());
      control.attach(instance, v.endpoint);
      const client = await bootClient(v);
      cleanup.push(() => client.close());
      return { v, instance, client };
    };
    const a = await startVm('vm-a');
    const b = await startVm('vm-b');
    const proxy: Send = (c) => a.client.tpm(c);
    const direct: Send = (c) => a.v.endpoint.transact(c);
    const sharedProxy: Send = (c) => b.client.tpm(c);

    // A's indices are defined through its proxy, so the policy records A as their owner.
    for (const index of [INDEX_PRIVATE, INDEX_SHARED]) {
      ok(await proxy(nvDefineSpaceCommand(nvPublic(index))), `define 0x${index.toString(16)}`);
      ok(await proxy(nvWriteCommand(index, randomBytes(NV_SIZE))), `write 0x${index.toString(16)}`);
    }
    const shared = control.ownership.ownerState(INDEX_SHARED);
    if (shared.kind !== 'owned' || shared.claim.owner !== a.instance) throw new Error('the policy did not record A as the owner');
    control.ownership.grant(shared.claim, b.instance, randomBytes(16).toString('hex'));

    // The AK, created once as the monitor's attestation makes it; both paths quote with the same handle.
    const ak: LoadedAk = await loadAk(a.v.endpoint);
    cleanup.push(() => flushAk(a.v.endpoint, ak).catch(() => undefined));
    const quoteSel = [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }];
    const extendDigest = [{ hashAlg: TPM_ALG.SHA256, digest: randomBytes(32) }];

    const ops: BenchOp[] = [
      { name: 'nv_read', command: () => nvReadCommand(INDEX_PRIVATE, NV_SIZE) },
      { name: 'nv_write', command: () => nvWriteCommand(INDEX_PRIVATE, randomBytes(NV_SIZE)) },
      { name: 'nv_define', command: () => nvDefineSpaceCommand(nvPublic(INDEX_SCRATCH)) },
      { name: 'nv_undefine', command: () => nvUndefineSpaceCommand(INDEX_SCRATCH, { authHandle: TPM_RH.OWNER }) },
      { name: 'pcr_extend', command: () => pcrExtendCommand(EXTEND_PCR, extendDigest) },
      { name: 'quote', command: () => quoteCommand(ak.handle, randomBytes(32), quoteSel) },
    ];
    return {
      ops,
      direct,
      proxy,
      sharedProxy,
      sharedRead: () => nvReadCommand(INDEX_SHARED, NV_SIZE),
      commitProbe: () => {
        const t0 = performance.now();
        control.ownership.claim(a.instance, INDEX_PROBE, NV_SIZE);
        const t1 = performance.now();
        control.ownership.release(INDEX_PROBE);
        return [t1 - t0, performance.now() - t1];
      },
      stats: () => ({ a: { ...a.v.proxy.stats }, b: { ...b.v.proxy.stats } }),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
