// TPM 2.0 codecs against a real swtpm and tpm2-tools: every command and response tpm2-tools exchanges
// (recorded by a TCP proxy) parses; NV commands name the index given on the tool's command line; the NV
// Name we compute equals the one tpm2_nvreadpublic prints; our own command bytes work on swtpm; our quote
// parsing and signature check agree with tpm2_checkquote; mutated real commands give only typed errors.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import {
  TPM_ALG,
  TPM_CC,
  TPM_RC,
  TPM_RH,
  TPM_ST,
  TPMA_NV,
  Tpm2FormatError,
  akTemplate,
  createCommand,
  createPrimaryCommand,
  encodeSignature,
  extendPcr,
  flushContextCommand,
  getRandomCommand,
  loadCommand,
  nvAccess,
  nvDefineSpaceCommand,
  nvName,
  nvReadCommand,
  nvReadPublicCommand,
  nvUndefineSpaceCommand,
  nvWriteCommand,
  objectName,
  buildCommand,
  passwordSession,
  parseAttest,
  parseCommand,
  parseCreatePrimaryResponse,
  parseCreateResponse,
  parseGetRandomResponse,
  parseLoadResponse,
  parseNvReadPublicResponse,
  parseNvReadResponse,
  parsePcrReadResponse,
  parsePublic,
  parseQuoteResponse,
  parseResponse,
  parseSignature,
  pcrDigest,
  pcrExtendCommand,
  pcrReadCommand,
  quoteCommand,
  storageTemplate,
  type ParsedResponse,
  type PcrValues,
} from '../../src/formats/tpm2/index.ts';
import { tpmPublicKey, verifyTpmSignature } from '../../src/crypto/tpm2-key.ts';
import { startRecorder, startSwtpm, tool, transact, type Exchange, type Swtpm } from './tpm2-fixtures/swtpm.ts';

const run = promisify(execFile);
const NV_INDEX = 0x1500016;
const NONCE = '00112233445566778899';

let dir: string;
let tpm: Swtpm;
let recorded: Exchange[] = [];
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-tpm2-'));
  tpm = await startSwtpm();
});
after(async () => {
  await tpm?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function send(cmd: Buffer): Promise<ParsedResponse> {
  return parseResponse(await transact(tpm.port, cmd), parseCommand(cmd).commandCode);
}

function sha256(b: Buffer | string): Buffer {
  return createHash('sha256').update(b).digest();
}

/** PCR values from tpm2_pcrread's YAML: bank name → pcr → value. */
function pcrYaml(yaml: string): Map<string, Map<number, Buffer>> {
  const out = new Map<string, Map<number, Buffer>>();
  let bank: Map<number, Buffer> | undefined;
  for (const line of yaml.split('\n')) {
    const b = /^\s*(sha1|sha256):\s*$/.exec(line);
    if (b) out.set(b[1]!, (bank = new Map()));
    const v = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)/.exec(line);
    if (v && bank) bank.set(Number(v[1]), Buffer.from(v[2]!, 'hex'));
  }
  return out;
}

async function checkquote(args: string[]): Promise<boolean> {
  try {
    await run('tpm2_checkquote', args, { cwd: dir });
    return true;
  } catch {
    return false;
  }
}

test('every command and response tpm2-tools exchanges with swtpm parses; NV commands name the index on the command line', async () => {
  const rec = await startRecorder(tpm.port);
  // Without a resource manager tpm2-tools leaves transient objects loaded; flush them after each tool.
  const T = async (args: string[]) => {
    const out = await tool(rec.port, args, dir);
    await tool(rec.port, ['tpm2_flushcontext', '-t'], dir);
    return out;
  };
  const idx = `0x${NV_INDEX.toString(16)}`;
  writeFileSync(join(dir, 'nvdata'), 'vmseal nv data');
  try {
    await T(['tpm2_pcrread', 'sha1:0+sha256:0,16']);
    await T(['tpm2_pcrextend', `16:sha256=${'ab'.repeat(32)}`]);
    await T(['tpm2_nvdefine', idx, '-C', 'o', '-s', '32', '-a', 'ownerread|ownerwrite|authread|authwrite']);
    await T(['tpm2_nvwrite', idx, '-C', 'o', '-i', 'nvdata']);
    const read = await T(['tpm2_nvread', idx, '-C', 'o', '-s', '14']);
    assert.equal(read, 'vmseal nv data');
    const pub = await T(['tpm2_nvreadpublic', idx]);
    const printedName = /name:\s*([0-9a-f]+)/.exec(pub)![1]!;
    await T(['tpm2_nvundefine', idx, '-C', 'o']);
    await T(['tpm2_createprimary', '-C', 'o', '-G', 'ecc', '-c', 'primary.ctx']);
    await T(['tpm2_create', '-C', 'primary.ctx', '-G', 'ecc256:ecdsa-sha256:null', '-u', 'ak.pub', '-r', 'ak.priv', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign']);
    await T(['tpm2_load', '-C', 'primary.ctx', '-u', 'ak.pub', '-r', 'ak.priv', '-c', 'ak.ctx']);
    await T(['tpm2_quote', '-c', 'ak.ctx', '-l', 'sha256:0,16', '-q', NONCE, '-m', 'q.msg', '-s', 'q.sig', '-o', 'q.pcrs', '-g', 'sha256']);
    const rnd = await T(['tpm2_getrandom', '--hex', '16']);
    assert.match(rnd, /^[0-9a-f]{32}$/);

    recorded = rec.exchanges.slice();
    const seen = new Set<string>();
    for (const x of recorded) {
      const c = parseCommand(x.command);
      const r = parseResponse(x.response, c.commandCode);
      seen.add(c.name);
      if (r.responseCode === TPM_RC.SUCCESS) assert.equal(r.handles.length, c.name === 'ContextLoad' || c.name === 'StartAuthSession' || c.name === 'CreatePrimary' || c.name === 'Load' ? 1 : 0, c.name);
      if (c.tag === TPM_ST.SESSIONS) assert.ok(c.sessions.length >= 1, c.name);
      const nv = nvAccess(c);
      if (c.name.startsWith('NV_')) {
        assert.ok(nv, c.name);
        assert.equal(nv.nvIndex, NV_INDEX, c.name);
        if (c.name === 'NV_DefineSpace') {
          assert.equal(nv.publicInfo!.dataSize, 32);
          assert.equal(nv.publicInfo!.attributes, TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE);
        }
        if (c.name === 'NV_Write') assert.deepEqual([nv.authHandle, nv.offset, nv.data!.toString()], [TPM_RH.OWNER, 0, 'vmseal nv data']);
        if (c.name === 'NV_Read') assert.deepEqual([nv.kind, nv.authHandle, nv.size, nv.offset], ['read', TPM_RH.OWNER, 14, 0]);
        if (c.name === 'NV_UndefineSpace') assert.deepEqual([nv.kind, nv.handlePosition], ['write', 1]);
        if (c.name === 'NV_ReadPublic' && r.responseCode === TPM_RC.SUCCESS) {
          const p = parseNvReadPublicResponse(r);
          assert.deepEqual(nvName(p.nvPublic), p.nvName);
        }
      }
    }
    for (const name of ['PCR_Read', 'PCR_Extend', 'NV_DefineSpace', 'NV_Write', 'NV_Read', 'NV_ReadPublic', 'NV_UndefineSpace', 'CreatePrimary', 'Create', 'Load', 'Quote', 'GetRandom', 'StartAuthSession', 'ContextLoad', 'FlushContext']) {
      assert.ok(seen.has(name), `no ${name} recorded`);
    }
    // The Name tpm2_nvreadpublic printed equals ours from the last NV_ReadPublic before it.
    const lastPub = recorded.filter((x) => parseCommand(x.command).name === 'NV_ReadPublic').map((x) => parseNvReadPublicResponse(parseResponse(x.response, TPM_CC.NV_ReadPublic)));
    assert.ok(lastPub.some((p) => nvName(p.nvPublic).toString('hex') === printedName));
  } finally {
    await rec.close();
  }
});

test('a tpm2_quote parses, its signature verifies with node:crypto, and tpm2_checkquote gives the same verdicts', async () => {
  const attestBytes = readFileSync(join(dir, 'q.msg'));
  const attest = parseAttest(attestBytes);
  assert.equal(attest.type, TPM_ST.ATTEST_QUOTE);
  assert.equal(attest.extraData.toString('hex'), NONCE);
  assert.ok('pcrSelect' in attest.attested);
  assert.deepEqual(attest.attested.pcrSelect, [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 16] }]);
  const pub = parsePublic(readFileSync(join(dir, 'ak.pub')));
  assert.equal(pub.type, TPM_ALG.ECC);
  assert.deepEqual(attest.qualifiedSigner.subarray(0, 2), Buffer.from('000b', 'hex'));
  const sigBytes = readFileSync(join(dir, 'q.sig'));
  const sig = parseSignature(sigBytes);
  assert.equal(sig.sigAlg, TPM_ALG.ECDSA);
  assert.deepEqual(encodeSignature(sig), sigBytes);
  assert.equal(tpmPublicKey(pub).asymmetricKeyType, 'ec');
  assert.equal(verifyTpmSignature(pub, attestBytes, sig), true);
  const pcr16 = extendPcr(TPM_ALG.SHA256, Buffer.alloc(32), Buffer.from('ab'.repeat(32), 'hex'));
  const values: PcrValues = new Map([
    [0, new Map([[TPM_ALG.SHA256, Buffer.alloc(32)]])],
    [16, new Map([[TPM_ALG.SHA256, pcr16]])],
  ]);
  assert.deepEqual(pcrDigest(TPM_ALG.SHA256, attest.attested.pcrSelect, values), attest.attested.pcrDigest);
  // The quote command and response recorded from tpm2_quote parse too.
  const q = recorded.find((x) => parseCommand(x.command).name === 'Quote')!;
  assert.equal(parseCommand(q.command).handles.length, 1);

  const base = ['-u', 'ak.pub', '-m', 'q.msg', '-s', 'q.sig', '-f', 'q.pcrs', '-g', 'sha256'];
  assert.equal(await checkquote([...base, '-q', NONCE]), true);
  // Wrong nonce: checkquote refuses; ours: extraData differs.
  assert.equal(await checkquote([...base, '-q', '0011223344556677889a']), false);
  assert.notEqual(attest.extraData.toString('hex'), '0011223344556677889a');
  // Bad signature: flip a bit of s.
  const badSig = { ...sig } as typeof sig & { s: Buffer };
  badSig.s = Buffer.from(badSig.s);
  badSig.s[5]! ^= 1;
  writeFileSync(join(dir, 'bad.sig'), encodeSignature(badSig));
  assert.equal(await checkquote(['-u', 'ak.pub', '-m', 'q.msg', '-s', 'bad.sig', '-f', 'q.pcrs', '-g', 'sha256', '-q', NONCE]), false);
  assert.equal(verifyTpmSignature(pub, attestBytes, badSig), false);
  // Tampered PCR value: change PCR 16 in the PCR file; our digest over the tampered values differs too.
  const pcrs = readFileSync(join(dir, 'q.pcrs'));
  const at = pcrs.indexOf(pcr16);
  assert.ok(at > 0);
  pcrs[at]! ^= 1;
  writeFileSync(join(dir, 'bad.pcrs'), pcrs);
  assert.equal(await checkquote(['-u', 'ak.pub', '-m', 'q.msg', '-s', 'q.sig', '-f', 'bad.pcrs', '-g', 'sha256', '-q', NONCE]), false);
  const tampered = Buffer.from(pcr16);
  tampered[0]! ^= 1;
  values.get(16)!.set(TPM_ALG.SHA256, tampered);
  assert.notDeepEqual(pcrDigest(TPM_ALG.SHA256, attest.attested.pcrSelect, values), attest.attested.pcrDigest);
});

test('our PCR_Extend and PCR_Read on swtpm agree with tpm2_pcrread', async () => {
  const d256 = sha256('vmseal measurement');
  const d1 = createHash('sha1').update('vmseal measurement').digest();
  const ext = await send(pcrExtendCommand(23, [{ hashAlg: TPM_ALG.SHA1, digest: d1 }, { hashAlg: TPM_ALG.SHA256, digest: d256 }]));
  assert.equal(ext.responseCode, TPM_RC.SUCCESS);
  const read = parsePcrReadResponse(await send(pcrReadCommand([{ hashAlg: TPM_ALG.SHA256, pcrs: [16, 23] }, { hashAlg: TPM_ALG.SHA1, pcrs: [23] }])));
  assert.equal(read.digests.length, 3);
  const expected = extendPcr(TPM_ALG.SHA256, Buffer.alloc(32), d256);
  assert.deepEqual(read.values.get(23)!.get(TPM_ALG.SHA256), expected);
  const theirs = pcrYaml(await tool(tpm.port, ['tpm2_pcrread', 'sha1:23+sha256:16,23']));
  assert.deepEqual(theirs.get('sha256')!.get(23), expected);
  assert.deepEqual(theirs.get('sha256')!.get(16), read.values.get(16)!.get(TPM_ALG.SHA256));
  assert.deepEqual(theirs.get('sha1')!.get(23), read.values.get(23)!.get(TPM_ALG.SHA1));
  // PCR 23 is resettable; 24 does not exist: the TPM answers an error we parse.
  const bad = await send(pcrExtendCommand(24, [{ hashAlg: TPM_ALG.SHA256, digest: d256 }]));
  assert.notEqual(bad.responseCode, TPM_RC.SUCCESS);
});

test('our NV_DefineSpace / NV_Write / NV_Read / NV_ReadPublic work on swtpm; the Name matches tpm2_nvreadpublic', async () => {
  const idx = 0x1500020;
  const pub = { nvIndex: idx, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA, authPolicy: Buffer.alloc(0), dataSize: 16 };
  assert.equal((await send(nvDefineSpaceCommand(pub))).responseCode, TPM_RC.SUCCESS);
  assert.equal((await send(nvDefineSpaceCommand(pub))).responseCode, TPM_RC.NV_DEFINED);
  assert.equal((await send(nvWriteCommand(idx, Buffer.from('0123456789abcdef')))).responseCode, TPM_RC.SUCCESS);
  const data = parseNvReadResponse(await send(nvReadCommand(idx, 10, 6, { authHandle: TPM_RH.OWNER })));
  assert.equal(data.toString(), '6789abcdef');
  const rp = parseNvReadPublicResponse(await send(nvReadPublicCommand(idx)));
  assert.equal(rp.nvPublic.attributes, pub.attributes | TPMA_NV.WRITTEN);
  assert.deepEqual(nvName(rp.nvPublic), rp.nvName);
  const printed = /name:\s*([0-9a-f]+)/.exec(await tool(tpm.port, ['tpm2_nvreadpublic', `0x${idx.toString(16)}`]))![1];
  assert.equal(nvName(rp.nvPublic).toString('hex'), printed);
  // A missing index: TPM_RC_HANDLE for handle 1, exactly as the spec encodes it.
  assert.equal((await send(nvReadPublicCommand(0x1500021))).responseCode, 0x18b);
  assert.equal((await send(nvUndefineSpaceCommand(idx))).responseCode, TPM_RC.SUCCESS);
});

for (const kind of ['ecc', 'rsa'] as const) {
  test(`our CreatePrimary/Create/Load/Quote (${kind} AK) on swtpm: the signature verifies with node:crypto and tpm2_checkquote`, async () => {
    const prim = parseCreatePrimaryResponse(await send(createPrimaryCommand(TPM_RH.OWNER, storageTemplate('ecc'))));
    assert.deepEqual(objectName(prim.outPublic), prim.name);
    const created = parseCreateResponse(await send(createCommand(prim.handle, akTemplate(kind))));
    const loaded = parseLoadResponse(await send(loadCommand(prim.handle, created.outPrivate, created.outPublicBytes)));
    assert.deepEqual(objectName(created.outPublic), loaded.name);
    const nonce = randomBytes(20);
    const sel = [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 16, 23] }];
    const { quoted, signature } = parseQuoteResponse(await send(quoteCommand(loaded.handle, nonce, sel)));
    for (const h of [loaded.handle, prim.handle]) assert.equal((await send(flushContextCommand(h))).responseCode, TPM_RC.SUCCESS);
    const attest = parseAttest(quoted);
    assert.deepEqual(attest.extraData, nonce);
    assert.deepEqual(attest.qualifiedSigner.subarray(0, 2), Buffer.from('000b', 'hex'));
    assert.equal(signature.sigAlg, kind === 'ecc' ? TPM_ALG.ECDSA : TPM_ALG.RSASSA);
    assert.equal(verifyTpmSignature(created.outPublic, quoted, signature), true);
    assert.equal(verifyTpmSignature(created.outPublic, Buffer.concat([quoted, Buffer.alloc(1)]), signature), false);
    const read = parsePcrReadResponse(await send(pcrReadCommand(sel)));
    assert.ok('pcrDigest' in attest.attested);
    assert.deepEqual(pcrDigest(TPM_ALG.SHA256, sel, read.values), attest.attested.pcrDigest);

    const f = (n: string) => join(dir, `${kind}-${n}`);
    writeFileSync(f('ak.pub'), Buffer.concat([Buffer.from([created.outPublicBytes.length >> 8, created.outPublicBytes.length & 0xff]), created.outPublicBytes]));
    writeFileSync(f('q.msg'), quoted);
    writeFileSync(f('q.sig'), encodeSignature(signature));
    await tool(tpm.port, ['tpm2_pcrread', 'sha256:0,16,23', '-F', 'serialized', '-o', f('q.pcrs')]);
    const args = ['-u', f('ak.pub'), '-m', f('q.msg'), '-s', f('q.sig'), '-f', f('q.pcrs'), '-g', 'sha256'];
    assert.equal(await checkquote([...args, '-q', nonce.toString('hex')]), true);
    assert.equal(await checkquote([...args, '-q', randomBytes(20).toString('hex')]), false);
  });
}

test('malformed commands: our typed error carries the response code swtpm answers the same bytes with', async () => {
  const idx = 0x1500030;
  const pub = { nvIndex: idx, nameAlg: TPM_ALG.SHA256, attributes: TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE, authPolicy: Buffer.alloc(0), dataSize: 8 };
  assert.equal((await send(nvDefineSpaceCommand(pub))).responseCode, TPM_RC.SUCCESS);
  // The index exists, so swtpm gets past its handle checks to the framing and session checks.
  const good = nvWriteCommand(idx, Buffer.from('data'), 0);
  const authAt = 18;
  const mk = (f: (b: Buffer) => void, src = good): Buffer => {
    const b = Buffer.from(src);
    f(b);
    return b;
  };
  const missingHandle = buildCommand(TPM_CC.NV_ReadPublic, [idx], Buffer.alloc(0));
  missingHandle.writeUInt32BE(TPM_CC.NV_Read, 6);
  const cases: Record<string, Buffer> = {
    unknownCode: mk((b) => b.writeUInt32BE(0x123, 6)),
    vendorCode: mk((b) => b.writeUInt32BE(0x20000000, 6)),
    badTag: mk((b) => b.writeUInt16BE(0x8003, 0)),
    tpm12Tag: mk((b) => b.writeUInt16BE(0x00c1, 0)),
    sizeAbove: mk((b) => b.writeUInt32BE(b.length + 1, 2)),
    sizeBelow: mk((b) => b.writeUInt32BE(b.length - 1, 2)),
    authSizeZero: mk((b) => b.writeUInt32BE(0, authAt)),
    authSizeEight: mk((b) => b.writeUInt32BE(8, authAt)),
    authSizeHuge: mk((b) => b.writeUInt32BE(0xffff, authAt)),
    secondSessionCut: mk((b) => b.writeUInt32BE(10, authAt)),
    notASession: mk((b) => b.writeUInt32BE(TPM_RH.OWNER, authAt + 4)),
    reservedAttr: mk((b) => (b[authAt + 4 + 4 + 2] = 0x10)),
    fourSessions: buildCommand(TPM_CC.NV_Read, [TPM_RH.OWNER, idx], Buffer.from([0, 1, 0, 0]), [1, 2, 3, 4].map(() => passwordSession())),
    longHmac: buildCommand(TPM_CC.NV_Read, [TPM_RH.OWNER, idx], Buffer.from([0, 1, 0, 0]), [passwordSession(Buffer.alloc(65))]),
    missingHandle,
  };
  for (const [what, bytes] of Object.entries(cases)) {
    let ours: number = TPM_RC.SUCCESS;
    try {
      parseCommand(bytes);
    } catch (e) {
      assert.ok(e instanceof Tpm2FormatError);
      ours = e.rc;
    }
    const theirs = (await transact(tpm.port, bytes)).readUInt32BE(6);
    assert.notEqual(ours, TPM_RC.SUCCESS, what);
    assert.equal(ours.toString(16), theirs.toString(16), what);
  }
  assert.equal((await send(nvUndefineSpaceCommand(idx))).responseCode, TPM_RC.SUCCESS);
});

test('GetRandom builder', async () => {
  const r = parseGetRandomResponse(await send(getRandomCommand(32)));
  assert.equal(r.length, 32);
});

test('a few thousand mutations of recorded real commands give a parse or a Tpm2FormatError, never another error', () => {
  assert.ok(recorded.length > 20);
  let refused = 0;
  let accepted = 0;
  const rcs = new Set<number>();
  for (let i = 0; i < 4000; i++) {
    const src = recorded[i % recorded.length]!.command;
    let m = Buffer.from(src);
    switch (i % 4) {
      case 0:
        for (let k = 0; k < 1 + (i % 3); k++) m[Math.floor(Math.random() * m.length)] = Math.floor(Math.random() * 256);
        break;
      case 1:
        m = m.subarray(0, Math.floor(Math.random() * m.length));
        break;
      case 2: {
        // Mutate the body but keep the header size honest, so the deeper checks run.
        const at = 10 + Math.floor(Math.random() * Math.max(1, m.length - 10));
        if (at < m.length) m[at] = Math.floor(Math.random() * 256);
        break;
      }
      case 3: {
        m = Buffer.concat([m, randomBytes(1 + Math.floor(Math.random() * 8))]);
        if (i % 8 === 3) m.writeUInt32BE(m.length, 2);
        break;
      }
    }
    try {
      const c = parseCommand(m);
      nvAccess(c);
      accepted++;
    } catch (e) {
      assert.ok(e instanceof Tpm2FormatError, String(e));
      assert.ok(Number.isInteger(e.rc) && e.rc > 0 && e.rc < 0x1000);
      rcs.add(e.rc);
      refused++;
    }
  }
  assert.ok(refused > 1000 && accepted > 100, `${refused} refused, ${accepted} accepted`);
  assert.ok(rcs.has(TPM_RC.COMMAND_SIZE));
});
