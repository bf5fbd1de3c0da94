// TPM2_GetCapability codec against a real swtpm: the bytes tpm2_getcap exchanges (recorded by a TCP proxy)
// parse into exactly what tpm2_getcap prints for `commands` (every TPMA_CC field) and `properties-fixed`;
// re-encoding gives the same bytes; swtpm's paging (moreData, count) is what the codec reports; hostile
// variants of real answers give typed errors.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_CAP_CC,
  TPM_CAP,
  TPM_CC,
  TPM_PT,
  Tpm2FormatError,
  decodeTpmaCc,
  encodeGetCapabilityResult,
  encodeTpmaCc,
  getCapabilityCommand,
  parseCommand,
  parseGetCapabilityParameters,
  parseGetCapabilityResult,
  parseResponse,
  tpmaCcCommandCode,
  type GetCapabilityResult,
} from '../../src/formats/tpm2/index.ts';
import { startRecorder, startSwtpm, tool, transact, type Exchange, type Swtpm } from './tpm2-fixtures/swtpm.ts';

let tpm: Swtpm;
before(async () => {
  tpm = await startSwtpm();
});
after(() => tpm?.stop());

/** Runs tpm2_getcap through a recorder; returns its stdout and the GetCapability exchanges it made. */
async function getcap(what: string): Promise<{ stdout: string; exchanges: Exchange[] }> {
  const rec = await startRecorder(tpm.port);
  try {
    const stdout = await tool(rec.port, ['tpm2_getcap', what]);
    return { stdout, exchanges: rec.exchanges.filter((e) => e.command.length >= 10 && e.command.readUInt32BE(6) === TPM_CC.GetCapability) };
  } finally {
    await rec.close();
  }
}

const result = (rsp: Buffer): GetCapabilityResult => parseGetCapabilityResult(parseResponse(rsp, TPM_CC.GetCapability).parameters);
const ask = async (cap: number, property: number, count: number) => result(await transact(tpm.port, getCapabilityCommand(cap, property, count)));

/** tpm2_getcap's YAML blocks: "NAME:" then indented "key: value" lines. */
function blocks(stdout: string): Array<{ name: string; fields: Map<string, string> }> {
  const out: Array<{ name: string; fields: Map<string, string> }> = [];
  for (const line of stdout.split('\n')) {
    const head = /^(\S.*):\s*$/.exec(line);
    if (head) out.push({ name: head[1]!, fields: new Map() });
    const kv = /^\s+(\w+):\s*(\S+)/.exec(line);
    if (kv && out.length > 0) out.at(-1)!.fields.set(kv[1]!, kv[2]!);
  }
  return out;
}

test('TPM_CAP_COMMANDS: our parse of the recorded bytes is what tpm2_getcap commands prints, field by field', async () => {
  const { stdout, exchanges } = await getcap('commands');
  const cmds = exchanges.filter((e) => parseGetCapabilityParameters(parseCommand(e.command).parameters).capability === TPM_CAP.COMMANDS);
  assert.ok(cmds.length >= 1);
  const all = cmds.flatMap((e) => {
    const r = result(e.response);
    assert.equal(r.data.capability, TPM_CAP.COMMANDS);
    assert.deepEqual(encodeGetCapabilityResult(r), parseResponse(e.response, TPM_CC.GetCapability).parameters, 're-encodes to the same bytes');
    return 'commands' in r.data ? r.data.commands : [];
  });
  assert.equal(result(cmds.at(-1)!.response).moreData, false);
  const printed = blocks(stdout);
  assert.equal(all.length, printed.length);
  assert.ok(all.length > 100, `swtpm lists ${all.length} commands`);
  all.forEach((v, i) => {
    const p = printed[i]!;
    const a = decodeTpmaCc(v);
    assert.equal(Number(p.fields.get('value')), v, p.name);
    assert.equal(Number(p.fields.get('commandIndex')), a.commandIndex, p.name);
    assert.equal(p.fields.get('nv'), a.nv ? '1' : '0', p.name);
    assert.equal(p.fields.get('extensive'), a.extensive ? '1' : '0', p.name);
    assert.equal(p.fields.get('flushed'), a.flushed ? '1' : '0', p.name);
    assert.equal(Number(p.fields.get('cHandles')), a.cHandles, p.name);
    assert.equal(p.fields.get('rHandle'), a.rHandle ? '1' : '0', p.name);
    assert.equal(p.fields.get('V'), a.vendor ? '1' : '0', p.name);
    assert.equal(encodeTpmaCc(a), v, `${p.name} round trip`);
    assert.equal(tpmaCcCommandCode(v), a.commandIndex, 'no vendor commands in swtpm');
  });
  // Spot checks against Part 3: NV_UndefineSpaceSpecial takes 2 handles and writes NV; CreatePrimary returns a handle.
  assert.equal(printed[0]!.name, 'TPM2_CC_NV_UndefineSpaceSpecial');
  const createPrimary = decodeTpmaCc(all.find((v) => (v & 0xffff) === TPM_CC.CreatePrimary)!);
  assert.equal(createPrimary.cHandles, 1);
  assert.equal(createPrimary.rHandle, true);
});

test('TPM_CAP_TPM_PROPERTIES: the counts tpm2_getcap properties-fixed prints; MAX_CAP_BUFFER gives MAX_CAP_CC', async () => {
  const { stdout, exchanges } = await getcap('properties-fixed');
  const props = exchanges.flatMap((e) => {
    const r = result(e.response);
    assert.deepEqual(encodeGetCapabilityResult(r), parseResponse(e.response, TPM_CC.GetCapability).parameters);
    return 'properties' in r.data ? r.data.properties : [];
  });
  const printed = new Map(blocks(stdout).map((b) => [b.name, Number(b.fields.get('raw') ?? b.fields.get('value'))]));
  const value = (pt: number) => props.find((p) => p.property === pt)?.value;
  assert.equal(value(TPM_PT.TOTAL_COMMANDS), printed.get('TPM2_PT_TOTAL_COMMANDS'));
  assert.equal(value(TPM_PT.LIBRARY_COMMANDS), printed.get('TPM2_PT_LIBRARY_COMMANDS'));
  assert.equal(value(TPM_PT.VENDOR_COMMANDS), printed.get('TPM2_PT_VENDOR_COMMANDS'));
  assert.equal(value(TPM_PT.VENDOR_COMMANDS), 0);
  // tpm2-tools 5.4 does not print TPM_PT_MAX_CAP_BUFFER; its neighbour TPM_PT_NV_BUFFER_MAX (0x12c) checks the position.
  assert.equal(props.find((p) => p.property === TPM_PT.VENDOR_COMMANDS + 1)?.value, printed.get('TPM2_PT_NV_BUFFER_MAX'));
  assert.equal(value(TPM_PT.MAX_CAP_BUFFER), 1024);
  // MAX_CAP_DATA = MAX_CAP_BUFFER - sizeof(TPM_CAP) - sizeof(UINT32), in 4-byte TPMA_CC entries.
  assert.equal((value(TPM_PT.MAX_CAP_BUFFER)! - 8) / 4, MAX_CAP_CC);
});

test('swtpm pages TPM_CAP_COMMANDS by count and start code; the kernel request gets all of them', async () => {
  const total = (await ask(TPM_CAP.TPM_PROPERTIES, TPM_PT.TOTAL_COMMANDS, 1)).data;
  assert.ok('properties' in total);
  const n = total.properties[0]!.value;
  const kernel = await ask(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, n);
  assert.ok('commands' in kernel.data);
  assert.equal(kernel.data.commands.length, n);
  assert.equal(kernel.moreData, false);
  const page = await ask(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, 5);
  assert.ok('commands' in page.data);
  assert.equal(page.moreData, true);
  assert.deepEqual(page.data.commands, kernel.data.commands.slice(0, 5));
  const last = kernel.data.commands.at(-1)! & 0xffff;
  const tail = await ask(TPM_CAP.COMMANDS, last + 1, MAX_CAP_CC);
  assert.deepEqual(tail, { moreData: false, data: { capability: TPM_CAP.COMMANDS, commands: [] } });
  const vendor = await ask(TPM_CAP.COMMANDS, 0x20000000, MAX_CAP_CC);
  assert.deepEqual(vendor, { moreData: false, data: { capability: TPM_CAP.COMMANDS, commands: [] } });
});

test('hostile variants of a real answer give Tpm2FormatError', async () => {
  const rsp = await transact(tpm.port, getCapabilityCommand(TPM_CAP.COMMANDS, TPM_CC.NV_UndefineSpaceSpecial, 3));
  const params = parseResponse(rsp, TPM_CC.GetCapability).parameters;
  assert.equal(params.length, 1 + 4 + 4 + 3 * 4);
  const bad = (b: Buffer) => assert.throws(() => parseGetCapabilityResult(b), Tpm2FormatError);
  bad(params.subarray(0, params.length - 1));
  bad(Buffer.concat([params, Buffer.alloc(1)]));
  const more = Buffer.from(params);
  more[0] = 2;
  bad(more);
  const huge = Buffer.from(params);
  huge.writeUInt32BE(0xffffffff, 5);
  bad(huge);
  const over = Buffer.concat([params.subarray(0, 5), Buffer.from([0, 0, 0, MAX_CAP_CC + 1]), Buffer.alloc(4 * (MAX_CAP_CC + 1))]);
  bad(over);
  const props = parseResponse(await transact(tpm.port, getCapabilityCommand(TPM_CAP.TPM_PROPERTIES, TPM_PT.TOTAL_COMMANDS, 3)), TPM_CC.GetCapability).parameters;
  bad(props.subarray(0, props.length - 2));
  assert.throws(() => parseGetCapabilityParameters(Buffer.alloc(11)), Tpm2FormatError);
  assert.throws(() => parseGetCapabilityParameters(Buffer.alloc(13)), Tpm2FormatError);
  assert.throws(() => encodeTpmaCc({ ...decodeTpmaCc(0), cHandles: 8 }), RangeError);
});

test('other capabilities are carried as opaque bytes', async () => {
  const rsp = await transact(tpm.port, getCapabilityCommand(TPM_CAP.PCRS, 0, 1));
  const params = parseResponse(rsp, TPM_CC.GetCapability).parameters;
  const r = parseGetCapabilityResult(params);
  assert.equal(r.data.capability, TPM_CAP.PCRS);
  assert.ok('raw' in r.data && r.data.raw.length > 0);
  assert.deepEqual(encodeGetCapabilityResult(r), params);
});
