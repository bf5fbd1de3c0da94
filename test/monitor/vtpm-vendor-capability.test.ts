// vmseal's vendor commands advertised in a real swtpm's GetCapability answers: the counts, the kernel's own
// reading of them (tpm2_get_cc_attrs_tbl + tpm2_find_cc, modelled below), paging by moreData and count,
// start codes that include or exclude them, answers left untouched (sessions, errors, malformed or
// rule-breaking swtpm output), and the proxy doing it only with the NV policy.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  HEADER_SIZE,
  MAX_CAP_CC,
  TPM_CAP,
  TPM_CC,
  TPM_PT,
  TPM_ST,
  buildCommand,
  decodeTpmaCc,
  encodeGetCapabilityResult,
  errorResponse,
  getCapabilityCommand,
  parseCommand,
  parseGetCapabilityResult,
  parseResponse,
  passwordSession,
  splitMessages,
  type GetCapabilityResult,
} from '../../src/formats/tpm2/index.ts';
import { MonitorDb } from '../../src/monitor/state/monitor-db.ts';
import { NvOwnership } from '../../src/monitor/vtpm/nv-ownership.ts';
import { NvAccessControl } from '../../src/monitor/vtpm/nv-policy.ts';
import type { SwtpmControl } from '../../src/monitor/vtpm/swtpm-control.ts';
import type { TpmEndpoint } from '../../src/monitor/vtpm/tpm-channel.ts';
import { TpmProxy, type CommandPolicy } from '../../src/monitor/vtpm/tpm-proxy.ts';
import { VMSEAL_VENDOR_TPMA_CC, advertiseVendorCommands } from '../../src/monitor/vtpm/vendor-capability.ts';
import { startSwtpm, tool, transact, type Swtpm } from '../formats/tpm2-fixtures/swtpm.ts';

const SHARE = TPM_CC.Vmseal_NV_Share;
const REVOKE = TPM_CC.Vmseal_NV_Revoke;

let tpm: Swtpm;
let swtpmTotal: number;
const root = mkdtempSync(join(tmpdir(), 'vmseal-vendorcap-'));
before(async () => {
  tpm = await startSwtpm();
  swtpmTotal = props(await transact(tpm.port, getCapabilityCommand(TPM_CAP.TPM_PROPERTIES, TPM_PT.TOTAL_COMMANDS, 1))).get(TPM_PT.TOTAL_COMMANDS)!;
});
after(async () => {
  await tpm?.stop();
  rmSync(root, { recursive: true, force: true });
});

const result = (rsp: Buffer): GetCapabilityResult => parseGetCapabilityResult(parseResponse(rsp, TPM_CC.GetCapability).parameters);
function props(rsp: Buffer): Map<number, number> {
  const d = result(rsp).data;
  assert.ok('properties' in d);
  return new Map(d.properties.map((p) => [p.property, p.value]));
}
function commands(rsp: Buffer): { moreData: boolean; codes: number[]; attrs: number[] } {
  const r = result(rsp);
  assert.ok('commands' in r.data);
  return { moreData: r.moreData, codes: r.data.commands.map((a) => (a & 0x2000ffff) >>> 0), attrs: r.data.commands };
}

/** The guest's GetCapability as swtpm answers it, then as the rewrite hands it to the guest. */
async function through(cap: number, property: number, count: number): Promise<{ before: Buffer; after: Buffer }> {
  const cmd = getCapabilityCommand(cap, property, count);
  const before = await transact(tpm.port, cmd);
  return { before, after: advertiseVendorCommands(parseCommand(cmd), before) };
}

/** Linux drivers/char/tpm: tpm2_get_cc_attrs_tbl reads the table; tpm2_find_cc looks a code up in it. */
async function kernelTable(send: (cmd: Buffer) => Promise<Buffer>): Promise<number[]> {
  const total = props(await send(getCapabilityCommand(TPM_CAP.TPM_PROPERTIES, TPM_PT.TOTAL_COMMANDS, 1))).get(TPM_PT.TOTAL_COMMANDS)!;
  const rsp = await send(getCapabilityCommand(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, total));
  const count = rsp.readUInt32BE(HEADER_SIZE + 5);
  assert.equal(count, total, 'the kernel refuses a table whose count is not TPM_PT_TOTAL_COMMANDS');
  return commands(rsp).attrs;
}
/** tpm2_find_cc of Linux >= 6.3 masks with V|0xFFFF; 6.1 (the demo guest's) with 0xFFFF only. */
const findCc = (table: number[], cc: number, mask = 0x2000ffff) => table.findIndex((a) => ((a & mask) >>> 0) === cc);

test('the vendor TPMA_CC: V set, commandIndex = low 16 bits, one handle, no response handle', () => {
  assert.deepEqual(VMSEAL_VENDOR_TPMA_CC, [0x22405601, 0x22405602]);
  const a = decodeTpmaCc(VMSEAL_VENDOR_TPMA_CC[0]!);
  assert.deepEqual(a, { commandIndex: 0x5601, nv: true, extensive: false, flushed: false, cHandles: 1, rHandle: false, vendor: true });
});

test('TPM_PT_TOTAL_COMMANDS and TPM_PT_VENDOR_COMMANDS count two more; every other property is swtpm\'s', async () => {
  const { before, after } = await through(TPM_CAP.TPM_PROPERTIES, 0x100, 127);
  const b = props(before);
  const a = props(after);
  assert.equal(a.get(TPM_PT.TOTAL_COMMANDS), b.get(TPM_PT.TOTAL_COMMANDS)! + 2);
  assert.equal(a.get(TPM_PT.VENDOR_COMMANDS), 2);
  assert.equal(a.get(TPM_PT.LIBRARY_COMMANDS), b.get(TPM_PT.LIBRARY_COMMANDS));
  assert.equal(a.get(TPM_PT.TOTAL_COMMANDS), a.get(TPM_PT.LIBRARY_COMMANDS)! + a.get(TPM_PT.VENDOR_COMMANDS)!);
  for (const [k, v] of b) if (k !== TPM_PT.TOTAL_COMMANDS && k !== TPM_PT.VENDOR_COMMANDS) assert.equal(a.get(k), v, `0x${k.toString(16)}`);
  assert.equal(after.length, before.length);
  assert.equal(result(after).moreData, result(before).moreData);
});

test('a property range without the command counts is left as swtpm sent it', async () => {
  // The count counts entries swtpm returns, not property values (it skips some): find where TOTAL_COMMANDS sits.
  const at = [...props((await through(TPM_CAP.TPM_PROPERTIES, 0x100, 127)).before).keys()].indexOf(TPM_PT.TOTAL_COMMANDS);
  assert.ok(at > 0);
  for (const [start, count] of [
    [0x100, at], // ends just before TOTAL_COMMANDS
    [0x12c, 10],
    [0x200, 127], // PT_VAR
  ] as const) {
    const { before, after } = await through(TPM_CAP.TPM_PROPERTIES, start, count);
    assert.ok(!props(before).has(TPM_PT.TOTAL_COMMANDS));
    assert.equal(after, before, `0x${start.toString(16)}+${count}`);
  }
  const last = await through(TPM_CAP.TPM_PROPERTIES, 0x100, at + 1); // ends at TOTAL_COMMANDS
  assert.equal(props(last.after).get(TPM_PT.TOTAL_COMMANDS), swtpmTotal + 2);
  assert.equal(props(last.after).get(TPM_PT.VENDOR_COMMANDS), undefined);
});

test('the kernel reads the advertised table and finds both vendor codes with one handle', async () => {
  const table = await kernelTable(async (cmd) => advertiseVendorCommands(parseCommand(cmd), await transact(tpm.port, cmd)));
  assert.equal(table.length, swtpmTotal + 2);
  for (const cc of [SHARE, REVOKE]) {
    const i = findCc(table, cc);
    assert.ok(i >= swtpmTotal, `0x${cc.toString(16)} listed after the library commands`);
    assert.equal((table[i]! >>> 25) & 7, 1);
  }
  assert.equal(findCc(table, TPM_CC.NV_Read) >= 0, true);
  // Linux 6.1 compares 16 bits: no entry can equal a code with the V bit, so its tpmrm0 still refuses them.
  assert.equal(findCc(table, SHARE, 0xffff), -1);
  assert.equal(findCc(table, TPM_CC.NV_Read, 0xffff) >= 0, true);
  // Without the rewrite the kernel's table has no vendor code: what /dev/tpmrm0 refused with 0x0b0143.
  const plain = await kernelTable((cmd) => transact(tpm.port, cmd));
  assert.equal(findCc(plain, SHARE), -1);
});

test('paging: the count limits the vendor entries, moreData says what is left, the next page brings it', async () => {
  const all = await through(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, MAX_CAP_CC);
  const lib = commands(all.before).codes;
  assert.equal(lib.length, swtpmTotal);
  assert.deepEqual(commands(all.after), { moreData: false, codes: [...lib, SHARE, REVOKE], attrs: [...commands(all.before).attrs, ...VMSEAL_VENDOR_TPMA_CC] });

  // swtpm still has more: its moreData YES page goes out untouched.
  const short = await through(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, 5);
  assert.equal(commands(short.before).moreData, true);
  assert.equal(short.after, short.before);

  // Exactly swtpm's commands fit: none added, moreData YES; the next page (after the last code) has both.
  const exact = await through(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, swtpmTotal);
  assert.deepEqual(commands(exact.after), { moreData: true, codes: lib, attrs: commands(exact.before).attrs });
  const next = await through(TPM_CAP.COMMANDS, lib.at(-1)! + 1, MAX_CAP_CC);
  assert.deepEqual(commands(next.after).codes, [SHARE, REVOKE]);
  assert.equal(commands(next.after).moreData, false);

  // Room for one: Share now, moreData YES; Revoke from its own code on.
  const one = await through(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, swtpmTotal + 1);
  assert.deepEqual(commands(one.after).codes, [...lib, SHARE]);
  assert.equal(commands(one.after).moreData, true);
  const rest = await through(TPM_CAP.COMMANDS, SHARE + 1, MAX_CAP_CC);
  assert.deepEqual(commands(rest.after), { moreData: false, codes: [REVOKE], attrs: [VMSEAL_VENDOR_TPMA_CC[1]!] });

  // A count of 0 from past the library: nothing listed, but there is more.
  const zero = await through(TPM_CAP.COMMANDS, 0x20000000, 0);
  assert.deepEqual(commands(zero.after), { moreData: true, codes: [], attrs: [] });
});

test('start codes: from a vendor code on, none after them, and codes no command can have', async () => {
  const from = async (p: number) => commands((await through(TPM_CAP.COMMANDS, p, MAX_CAP_CC)).after).codes;
  assert.deepEqual(await from(0x20000000), [SHARE, REVOKE]);
  assert.deepEqual(await from(SHARE), [SHARE, REVOKE]);
  assert.deepEqual(await from(REVOKE), [REVOKE]);
  for (const p of [REVOKE + 1, 0x2000ffff, 0x00010000, 0x40000000, 0xffffffff]) {
    const { before, after } = await through(TPM_CAP.COMMANDS, p, MAX_CAP_CC);
    assert.equal(after, before, `0x${p.toString(16)}`);
    assert.deepEqual(commands(after).codes, []);
  }
});

test('the entry limit is MAX_CAP_CC whatever count the guest asks for', () => {
  const cmd = parseCommand(getCapabilityCommand(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, 100000));
  const listed = Array.from({ length: MAX_CAP_CC - 1 }, (_, i) => 0x11f + i);
  const params = encodeGetCapabilityResult({ moreData: false, data: { capability: TPM_CAP.COMMANDS, commands: listed } });
  const rsp = Buffer.concat([errorResponse(0), params]);
  rsp.writeUInt32BE(rsp.length, 2);
  const out = commands(advertiseVendorCommands(cmd, rsp));
  assert.equal(out.attrs.length, MAX_CAP_CC);
  assert.deepEqual(out.codes.slice(-1), [SHARE]);
  assert.equal(out.moreData, true);
});

test('answers it cannot judge go to the guest as swtpm sent them', async () => {
  const cmdBytes = getCapabilityCommand(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, MAX_CAP_CC);
  const cmd = parseCommand(cmdBytes);
  const good = await transact(tpm.port, cmdBytes);
  const same = (rsp: Buffer, c = cmd) => assert.equal(advertiseVendorCommands(c, rsp), rsp);
  same(errorResponse(0x1c4));
  same(good.subarray(0, good.length - 1)); // header size disagrees
  const trailing = Buffer.concat([good, Buffer.alloc(4)]);
  trailing.writeUInt32BE(trailing.length, 2);
  same(trailing);
  const badMore = Buffer.from(good);
  badMore[HEADER_SIZE] = 7;
  same(badMore);
  const otherCap = Buffer.from(good);
  otherCap.writeUInt32BE(TPM_CAP.PCRS, HEADER_SIZE + 1);
  same(otherCap);
  // More entries than the guest asked for: a TPM never does that.
  same(good, parseCommand(getCapabilityCommand(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, 3)));
  // Already listing a vendor code at or above vmseal's.
  const listed = [...commands(good).attrs, 0x20005700];
  const vend = Buffer.concat([errorResponse(0), encodeGetCapabilityResult({ moreData: false, data: { capability: TPM_CAP.COMMANDS, commands: listed } })]);
  vend.writeUInt32BE(vend.length, 2);
  same(vend, parseCommand(getCapabilityCommand(TPM_CAP.COMMANDS, 0x11f, 200)));
  // A count that would overflow.
  const huge = Buffer.concat([errorResponse(0), encodeGetCapabilityResult({ moreData: false, data: { capability: TPM_CAP.TPM_PROPERTIES, properties: [{ property: TPM_PT.TOTAL_COMMANDS, value: 0xffffffff }] } })]);
  huge.writeUInt32BE(huge.length, 2);
  same(huge, parseCommand(getCapabilityCommand(TPM_CAP.TPM_PROPERTIES, TPM_PT.TOTAL_COMMANDS, 1)));
  // With a session (e.g. audit) the response authorization covers the parameters: never rewritten.
  const withSession = buildCommand(TPM_CC.GetCapability, [], parseCommand(cmdBytes).parameters, [passwordSession()]);
  const sessionRsp = await transact(tpm.port, withSession);
  same(sessionRsp, parseCommand(withSession));
  // Not a GetCapability.
  same(good, { ...cmd, commandCode: TPM_CC.NV_Read });
});

test('the proxy advertises them only with the NV policy', async () => {
  const endpoint: TpmEndpoint = { name: 'swtpm', transact: (c) => transact(tpm.port, c) };
  const proxy = (policy?: CommandPolicy) => {
    const p = TpmProxy.listen({ ctrlPath: join(root, `ctrl-${randomBytes(6).toString('hex')}.sock`), swtpm: { control: {} as SwtpmControl, tpm: endpoint }, ...(policy ? { policy } : {}) });
    after(() => p.close());
    return p;
  };
  const db = MonitorDb.open(join(root, 'monitor.db'));
  after(() => db.close());
  const control = new NvAccessControl({ ownership: new NvOwnership(db.sql, randomBytes(32)) });
  const instance = randomBytes(16).toString('hex');
  const withPolicy = proxy(control.policyFor(instance));
  // Also before the swtpm is attached (the guard state): the answer does not depend on it.
  const early = await kernelTable((c) => withPolicy.handleCommand(c));
  assert.ok(findCc(early, SHARE) >= 0);
  control.attach(instance, endpoint, randomBytes(16).toString('hex'));
  const table = await kernelTable((c) => withPolicy.handleCommand(c));
  assert.ok(findCc(table, SHARE) >= 0 && findCc(table, REVOKE) >= 0);
  assert.equal(withPolicy.stats.forwarded, 4);

  const plain = await kernelTable((c) => proxy().handleCommand(c));
  assert.equal(findCc(plain, SHARE), -1);
  assert.equal(plain.length, swtpmTotal);
  assert.equal(TPM_ST.NO_SESSIONS, getCapabilityCommand(TPM_CAP.COMMANDS, 0, 1).readUInt16BE(0));
});

/** A TCP relay to swtpm's port pair that hands every data-port response through the rewrite, as the proxy does. */
async function rewritingRelay(target: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<import('node:net').Socket>();
  const serve = (to: number, rewrite: boolean) =>
    createServer((client) => {
      const upstream = connect(to, '127.0.0.1');
      sockets.add(client).add(upstream);
      const pending: Buffer[] = [];
      let cmdBuf = Buffer.alloc(0);
      let rspBuf = Buffer.alloc(0);
      client.on('data', (d: Buffer) => {
        if (rewrite) {
          const { messages, rest } = splitMessages(Buffer.concat([cmdBuf, d]));
          cmdBuf = Buffer.from(rest);
          pending.push(...messages.map((m) => Buffer.from(m)));
        }
        upstream.write(d);
      });
      upstream.on('data', (d: Buffer) => {
        if (!rewrite) return void client.write(d);
        const { messages, rest } = splitMessages(Buffer.concat([rspBuf, d]));
        rspBuf = Buffer.from(rest);
        for (const m of messages) client.write(advertiseVendorCommands(parseCommand(pending.shift()!), Buffer.from(m)));
      });
      const end = () => (client.destroy(), upstream.destroy());
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
    });
  const listen = (s: Server, port: number) =>
    new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => resolve(true));
    });
  for (let i = 0; i < 50; i++) {
    const port = 20000 + 2 * Math.floor(Math.random() * 19000);
    const data = serve(target, true);
    const ctrl = serve(target + 1, false);
    if ((await listen(data, port)) && (await listen(ctrl, port + 1))) {
      return {
        port,
        close: async () => {
          for (const s of sockets) s.destroy();
          await Promise.all([data, ctrl].map((s) => new Promise((r) => s.close(r))));
        },
      };
    }
    data.close();
    ctrl.close();
  }
  throw new Error('no free port pair');
}

test('tpm2_getcap reads the rewritten answers: the vendor entries by their TPMA_CC value, the counts +2', async () => {
  const relay = await rewritingRelay(tpm.port);
  try {
    const cmds = await tool(relay.port, ['tpm2_getcap', 'commands']);
    // tpm2-tools 5.4 names a code it does not know by the whole TPMA_CC value.
    for (const v of VMSEAL_VENDOR_TPMA_CC) {
      const block = new RegExp(`^0x${v.toString(16).toUpperCase()}:\\n  value: 0x${v.toString(16).toUpperCase()}\\n  commandIndex: 0x${(v & 0xffff).toString(16)}\\n(?:  .*\\n)*?  cHandles:     0x1\\n  rHandle:      0\\n  V:            1\\n`, 'm');
      assert.match(cmds, block);
    }
    assert.equal(cmds.match(/^\S.*:$/gm)!.length, swtpmTotal + 2);
    const fixed = await tool(relay.port, ['tpm2_getcap', 'properties-fixed']);
    assert.match(fixed, new RegExp(`TPM2_PT_TOTAL_COMMANDS:\\n  raw: 0x${(swtpmTotal + 2).toString(16).toUpperCase()}\\n`));
    assert.match(fixed, /TPM2_PT_VENDOR_COMMANDS:\n  raw: 0x2\n/);
  } finally {
    await relay.close();
  }
});
