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
  // tpm2_send -T TCTI -o FILE < command; answers with rsp-DEVICE if there is one, else rsp
  writeFileSync(
    join(bin, 'tpm2_send'),
    `#!${busybox} sh\necho "$*" >> "$FAKE/args"\ncat > "$FAKE/sent"\nif [ -f "$FAKE/rsp-\${2##*/}" ]; then cat "$FAKE/rsp-\${2##*/}"; else cat "$FAKE/rsp"; fi > "$4"\n`,
    { mode: 0o755 },
  );
  writeFileSync(join(dir, 'tool'), GUEST_GRANT_TOOL_SCRIPT);
});

function run(args: string[], response: Buffer, env: Record<string, string> = {}, perDevice: Record<string, Buffer> = {}) {
  for (const f of ['sent', 'args', 'rsp-tpmrm0', 'rsp-tpm0']) rmSync(join(dir, f), { force: true });
  writeFileSync(join(dir, 'rsp'), response);
  for (const [dev, rsp] of Object.entries(perDevice)) writeFileSync(join(dir, `rsp-${dev}`), rsp);
  const r = spawnSync(busybox, ['sh', join(dir, 'tool'), ...args], { env: { PATH: join(dir, 'bin'), FAKE: dir, ...env }, encoding: 'utf8', timeout: 30_000 });
  const sentPath = join(dir, 'sent');
  return { status: r.status, out: r.stdout + r.stderr, sent: existsSync(sentPath) ? readFileSync(sentPath) : undefined };
}

test('share and revoke send exactly the vendor command, through the resource manager, /dev/tpm0 only if it refuses the code', () => {
  const ok = guestGrantResponse(0);
  let r = run(['share', '0x01800010', VM, 'pw!'], ok);
  assert.equal(r.status, 0, r.out);
  assert.equal(r.sent?.toString('hex'), guestGrantCommand('share', 0x01800010, VM, Buffer.from('pw!')).toString('hex'));
  const tctis = () => readFileSync(join(dir, 'args'), 'utf8').trim().split('\n').map((l) => l.split(' ').slice(0, 3).join(' '));
  assert.deepEqual(tctis(), ['-T device:/dev/tpmrm0 -o']);
  r = run(['share', '0x01800010', VM, 'pw!'], ok, { TPM2TOOLS_TCTI: 'swtpm:port=2321' });
  assert.equal(r.status, 0, r.out);
  assert.deepEqual(tctis(), ['-T swtpm:port=2321 -o']);
  // Linux < 6.3: the resource manager answers any vendor code itself (tpm2-space.c); then, and only then, /dev/tpm0.
  const rmRefusal = Buffer.from('80010000000a000b0143', 'hex');
  r = run(['share', '0x01800010', VM, 'pw!'], ok, {}, { tpmrm0: rmRefusal });
  assert.equal(r.status, 0, r.out);
  assert.deepEqual(tctis(), ['-T device:/dev/tpmrm0 -o', '-T device:/dev/tpm0 -o']);
  assert.deepEqual(r.sent, guestGrantCommand('share', 0x01800010, VM, Buffer.from('pw!')));
  r = run(['share', '0x01800010', VM, 'pw!'], errorResponse(0x143), {}, { tpmrm0: errorResponse(0x9a2) });
  assert.equal(r.status, 1);
  assert.deepEqual(tctis(), ['-T device:/dev/tpmrm0 -o'], 'a TPM answer through tpmrm0 is final');
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
  // Refused by the resource manager and no vmseal monitor behind the raw device either.
  r = run(['share', '0x01800010', VM], errorResponse(0x143), {}, { tpmrm0: Buffer.from('80010000000a000b0143', 'hex') });
  assert.equal(r.status, 1);
  assert.match(r.out, /TPM_RC 0x00000143: no vmseal monitor behind this TPM/);
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
