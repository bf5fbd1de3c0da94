// The TCG crypto-agile event log against tpm2_eventlog (it must parse our log and its replayed PCRs must
// equal ours) and against a real swtpm (extending the same digests gives the PCRs tpm2_pcrread shows).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { EV, EventLogError, digestsOf, encodeEventLog, measuredLaunchLog, parseEventLog, replay, type EventLog } from '../../src/formats/tcg-eventlog.ts';
import { TPM_ALG, TPM_RC, parseResponse, pcrExtendCommand, TPM_CC } from '../../src/formats/tpm2/index.ts';
import { startSwtpm, tool, transact, type Swtpm } from './tpm2-fixtures/swtpm.ts';

const run = promisify(execFile);
const BANKS = [TPM_ALG.SHA1, TPM_ALG.SHA256];
const ALG_NAME = new Map<number, string>([
  [TPM_ALG.SHA1, 'sha1'],
  [TPM_ALG.SHA256, 'sha256'],
]);

let dir: string;
let tpm: Swtpm;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-evlog-'));
  tpm = await startSwtpm();
});
after(async () => {
  await tpm?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function launchLog(banks: readonly number[]): EventLog {
  return measuredLaunchLog({
    kernel: digestsOf(randomBytes(4096), banks),
    initrd: digestsOf(randomBytes(2048), banks),
    cmdline: 'console=ttyS0 ima_policy=tcb panic=-1',
    kernelPath: '/vmlinuz-6.1.0-56-cloud-amd64',
    banks,
  });
}

/** The "pcrs:" section of tpm2_eventlog / tpm2_pcrread YAML: bank → pcr → hex value. */
function pcrsFromYaml(yaml: string): Map<string, Map<number, string>> {
  const out = new Map<string, Map<number, string>>();
  let bank: Map<number, string> | undefined;
  for (const line of yaml.slice(yaml.lastIndexOf('pcrs:') >= 0 ? yaml.lastIndexOf('pcrs:') : 0).split('\n')) {
    const b = /^\s*(sha1|sha256|sha384|sha512):\s*$/.exec(line);
    if (b) out.set(b[1]!, (bank = new Map()));
    const v = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)/.exec(line);
    if (v && bank) bank.set(Number(v[1]), v[2]!.toLowerCase());
  }
  return out;
}

test('tpm2_eventlog parses our log and replays the PCRs we replay (sha1 + sha256, and sha256 only)', async () => {
  for (const banks of [BANKS, [TPM_ALG.SHA256]]) {
    const log = launchLog(banks);
    const file = join(dir, `log-${banks.length}.bin`);
    writeFileSync(file, encodeEventLog(log));
    const { stdout } = await run('tpm2_eventlog', [file]);
    assert.match(stdout, /Spec ID Event03/);
    assert.match(stdout, /EV_IPL/);
    assert.match(stdout, /kernel_cmdline: console=ttyS0/);
    const theirs = pcrsFromYaml(stdout);
    const ours = replay(log);
    assert.deepEqual([...theirs.keys()].sort(), banks.map((b) => ALG_NAME.get(b)!).sort());
    for (const alg of banks) {
      const t = theirs.get(ALG_NAME.get(alg)!)!;
      assert.deepEqual([...t.keys()].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      for (const [pcr, hex] of t) assert.equal(ours.get(pcr)!.get(alg)!.toString('hex'), hex, `PCR ${pcr} bank ${alg}`);
    }
    // Our own parser reads back what we wrote.
    const back = parseEventLog(encodeEventLog(log));
    assert.deepEqual(back, log);
  }
});

test('extending the logged digests into swtpm gives the PCRs tpm2_pcrread shows and replay computes', async () => {
  const log = launchLog(BANKS);
  for (const e of log.events) {
    if (e.eventType === EV.NO_ACTION) continue;
    const rsp = await transact(tpm.port, pcrExtendCommand(e.pcrIndex, [...e.digests].map(([hashAlg, digest]) => ({ hashAlg, digest }))));
    assert.equal(parseResponse(rsp, TPM_CC.PCR_Extend).responseCode, TPM_RC.SUCCESS);
  }
  const yaml = await tool(tpm.port, ['tpm2_pcrread', 'sha1:0,1,2,3,4,5,6,7,8,9+sha256:0,1,2,3,4,5,6,7,8,9']);
  const read = pcrsFromYaml(yaml);
  const ours = replay(log);
  for (const alg of BANKS) {
    for (let pcr = 0; pcr <= 9; pcr++) assert.equal(read.get(ALG_NAME.get(alg)!)!.get(pcr), ours.get(pcr)!.get(alg)!.toString('hex'), `PCR ${pcr} alg ${alg}`);
  }
  // PCR 8 is H(0 ‖ H(cmdline)): the verifier can recompute it from the tenant's cmdline alone.
  const cmdDigest = createHash('sha256').update('console=ttyS0 ima_policy=tcb panic=-1').digest();
  assert.equal(ours.get(8)!.get(TPM_ALG.SHA256)!.toString('hex'), createHash('sha256').update(Buffer.alloc(32)).update(cmdDigest).digest('hex'));
});

test('hostile logs: every truncation and a few thousand mutations give EventLogError or a parse, never another error', () => {
  const bytes = encodeEventLog(launchLog(BANKS));
  for (let n = 0; n < bytes.length; n++) {
    try {
      parseEventLog(bytes.subarray(0, n));
    } catch (e) {
      assert.ok(e instanceof EventLogError, String(e));
    }
  }
  let parsed = 0;
  for (let i = 0; i < 3000; i++) {
    const m = Buffer.from(bytes);
    for (let k = 0; k < 1 + (i % 4); k++) m[Math.floor(Math.random() * m.length)] = Math.floor(Math.random() * 256);
    try {
      replay(parseEventLog(m));
      parsed++;
    } catch (e) {
      assert.ok(e instanceof EventLogError, String(e));
    }
  }
  assert.ok(parsed > 0);
  // An event claiming 4 GiB of data is refused without allocating it.
  const huge = Buffer.from(bytes);
  huge.writeUInt32LE(0xffffffff, huge.length - 4 - 17);
  assert.throws(() => parseEventLog(huge), EventLogError);
  assert.throws(() => parseEventLog(Buffer.alloc(64)), /Spec ID|EV_NO_ACTION/);
});
