// The guest's vmseal-tpm-grant script, run by the very busybox the guest is made of (busybox-static), with a
// stand-in tpm2_send that records what it is given: the bytes must be exactly guestGrantCommand's, a success
// exits 0, a TPM error exits 1 naming the response code, bad arguments exit 2 before anything is sent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorResponse, guestGrantCommand, guestGrantResponse } from '../../src/formats/tpm2/index.ts';
import { findBusybox } from '../../src/guest/busybox.ts';
import { GUEST_GRANT_TOOL_SCRIPT } from '../../src/guest/rootfs.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmseal-grant-tool-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const VM = '00112233445566778899aabbccddeeff';
let busybox = '';

before(async () => {
  busybox = (await findBusybox()).path;
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  for (const applet of ['od', 'tr', 'sed', 'dd', 'mktemp', 'rm']) symlinkSync(busybox, join(bin, applet));
  // tpm2_send -T device:/dev/tpm0 -o FILE < command
  writeFileSync(join(bin, 'tpm2_send'), `#!${busybox} sh\necho "$*" > "$FAKE/args"\ncat > "$FAKE/sent"\ncat "$FAKE/rsp" > "$4"\n`, { mode: 0o755 });
  writeFileSync(join(dir, 'tool'), GUEST_GRANT_TOOL_SCRIPT);
});

function run(args: string[], response: Buffer) {
  rmSync(join(dir, 'sent'), { force: true });
  writeFileSync(join(dir, 'rsp'), response);
  const r = spawnSync(busybox, ['sh', join(dir, 'tool'), ...args], { env: { PATH: join(dir, 'bin'), FAKE: dir }, encoding: 'utf8', timeout: 30_000 });
  const sentPath = join(dir, 'sent');
  return { status: r.status, out: r.stdout + r.stderr, sent: existsSync(sentPath) ? readFileSync(sentPath) : undefined };
}

test('share and revoke send exactly the vendor command, over /dev/tpm0', () => {
  const ok = guestGrantResponse(0);
  let r = run(['share', '0x01800010', VM, 'pw!'], ok);
  assert.equal(r.status, 0, r.out);
  assert.equal(r.sent?.toString('hex'), guestGrantCommand('share', 0x01800010, VM, Buffer.from('pw!')).toString('hex'));
  assert.equal(readFileSync(join(dir, 'args'), 'utf8').trim().split(' ').slice(0, 3).join(' '), '-T device:/dev/tpm0 -o');
  r = run(['revoke', '25165840', VM], ok);
  assert.equal(r.status, 0, r.out);
  assert.deepEqual(r.sent, guestGrantCommand('revoke', 0x01800010, VM));
  const raw = Buffer.from([0x00, 0xff, 0x25, 0x5c, 0x41]);
  r = run(['share', '0x1800011', VM, `hex:${raw.toString('hex').toUpperCase()}`], ok);
  assert.equal(r.status, 0, r.out);
  assert.deepEqual(r.sent, guestGrantCommand('share', 0x01800011, VM, raw));
  const long = 'p'.repeat(64);
  r = run(['share', '0x01800010', VM, long], ok);
  assert.deepEqual(r.sent, guestGrantCommand('share', 0x01800010, VM, Buffer.from(long)));
});

test('a TPM error exits 1 with its code; bad arguments exit 2 and send nothing', () => {
  let r = run(['share', '0x01800010', VM, 'wrong'], errorResponse(0x9a2));
  assert.equal(r.status, 1);
  assert.match(r.out, /TPM_RC 0x000009a2: wrong index password/);
  r = run(['share', '0x01800010', VM], errorResponse(0x1c4));
  assert.equal(r.status, 1);
  assert.match(r.out, /0x000001c4/);
  for (const args of [
    ['share', '0x01800010'],
    ['grant', '0x01800010', VM],
    ['share', '0x81000001', VM],
    ['share', 'index', VM],
    ['share', '0x01800010', VM.toUpperCase()],
    ['share', '0x01800010', VM.slice(2)],
    ['share', '0x01800010', VM, 'hex:abc'],
    ['share', '0x01800010', VM, 'hex:zz'],
    ['share', '0x01800010', VM, 'p'.repeat(65)],
  ]) {
    r = run(args, guestGrantResponse(0));
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.out}`);
    assert.equal(r.sent, undefined);
  }
});
