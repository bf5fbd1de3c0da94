/**
 * bench/vtpm measures something real: each op sent down the bench's proxy path (stand-in QEMU client, control
 * socket + SET_DATAFD socketpair, NV policy) reaches A's swtpm and gets the answer the direct path gets, and
 * the shared read really is served from A's swtpm through B's grant (while the policy refuses B elsewhere).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  TPM_ALG,
  TPM_CC,
  TPM_RC,
  TPM_ST,
  extendPcr,
  nvReadCommand,
  nvWriteCommand,
  parseAttest,
  parseNvReadResponse,
  parsePcrReadResponse,
  parseQuoteResponse,
  parseResponse,
  pcrExtendCommand,
  pcrReadCommand,
} from '../../src/formats/tpm2/index.ts';
import { EXTEND_PCR, INDEX_PRIVATE, INDEX_SHARED, NV_SIZE, openVtpmBenchPath, rcOf, type BenchOp } from '../../bench/lib/vtpm-path.ts';

/** libtpms now and then answers an ECDSA signing with TPM_RC_RETRY; a client resends. */
const TPM_RC_RETRY = 0x922;

test('the bench paths: proxy and shared read give the direct path\'s answers, through the policy', { timeout: 120_000 }, async (t) => {
  const path = await openVtpmBenchPath();
  t.after(() => path.close());
  const op = (name: BenchOp['name']) => path.ops.find((o) => o.name === name)!;
  const send = async (s: (c: Buffer) => Promise<Buffer>, c: Buffer) => {
    let r = await s(c);
    for (let i = 0; i < 5 && rcOf(r) === TPM_RC_RETRY; i++) r = await s(c);
    return r;
  };
  const before = path.stats();

  // NV_Read: byte-identical responses.
  const read = op('nv_read').command();
  const direct = await path.direct(read);
  assert.equal(rcOf(direct), TPM_RC.SUCCESS);
  assert.deepEqual(await path.proxy(read), direct);

  // NV_Write through the proxy lands in A's swtpm: the direct path reads it back, and the responses match.
  const value = randomBytes(NV_SIZE);
  const viaProxy = await path.proxy(nvWriteCommand(INDEX_PRIVATE, value));
  assert.equal(rcOf(viaProxy), TPM_RC.SUCCESS);
  assert.deepEqual(parseNvReadResponse(parseResponse(await path.direct(nvReadCommand(INDEX_PRIVATE, NV_SIZE)), TPM_CC.NV_Read)), value);
  assert.deepEqual(await path.direct(nvWriteCommand(INDEX_PRIVATE, value)), viaProxy);

  // Define and undefine, on each path in turn: same answers; a second define of the live index fails on both.
  const define = op('nv_define').command();
  const undefine = op('nv_undefine').command();
  const answers = [];
  for (const s of [path.direct, path.proxy]) {
    const first = await s(define);
    assert.equal(rcOf(first), TPM_RC.SUCCESS);
    assert.equal(rcOf(await s(define)), TPM_RC.NV_DEFINED);
    const gone = await s(undefine);
    assert.equal(rcOf(gone), TPM_RC.SUCCESS);
    answers.push([first, gone]);
  }
  assert.deepEqual(answers[1], answers[0]);

  // PCR_Extend through the proxy changes A's PCR 16 exactly as the extend rule says.
  const sel = [{ hashAlg: TPM_ALG.SHA256, pcrs: [EXTEND_PCR] }];
  const pcr = async () => parsePcrReadResponse(parseResponse(await path.direct(pcrReadCommand(sel)), TPM_CC.PCR_Read)).values.get(EXTEND_PCR)!.get(TPM_ALG.SHA256)!;
  const old = await pcr();
  const digest = randomBytes(32);
  const extend = pcrExtendCommand(EXTEND_PCR, [{ hashAlg: TPM_ALG.SHA256, digest }]);
  const extended = await path.proxy(extend);
  assert.equal(rcOf(extended), TPM_RC.SUCCESS);
  assert.deepEqual(await pcr(), extendPcr(TPM_ALG.SHA256, old, digest));
  assert.deepEqual(await path.direct(extend), extended);

  // Quote: the same AK, nonce and PCR digest on both paths (signatures differ: ECDSA is randomized).
  const quote = op('quote').command();
  const attest = async (s: (c: Buffer) => Promise<Buffer>) => {
    const r = await send(s, quote);
    assert.equal(rcOf(r), TPM_RC.SUCCESS);
    return parseAttest(parseQuoteResponse(parseResponse(r, TPM_CC.Quote)).quoted);
  };
  const qd = await attest(path.direct);
  const qp = await attest(path.proxy);
  assert.equal(qp.type, TPM_ST.ATTEST_QUOTE);
  assert.deepEqual(qp.qualifiedSigner, qd.qualifiedSigner);
  assert.deepEqual(qp.extraData, qd.extraData);
  assert.deepEqual(qp.attested, qd.attested);

  // The shared read: B gets A's value, served by A's swtpm; B's reads of A's private index are refused.
  const shared = await path.direct(path.sharedRead());
  assert.equal(rcOf(shared), TPM_RC.SUCCESS);
  assert.deepEqual(await path.sharedProxy(path.sharedRead()), shared);
  assert.equal(rcOf(await path.sharedProxy(nvReadCommand(INDEX_PRIVATE, NV_SIZE))), TPM_RC.NV_AUTHORIZATION);
  assert.equal(rcOf(await path.sharedProxy(nvWriteCommand(INDEX_SHARED, randomBytes(NV_SIZE)))), TPM_RC.NV_LOCKED);
  const after = path.stats();
  assert.equal(after.b.forwardedElsewhere - before.b.forwardedElsewhere, 1, 'B\'s shared read went to A\'s swtpm');
  assert.equal(after.b.answeredByPolicy - before.b.answeredByPolicy, 2, 'the policy answered B\'s other two');
  assert.ok(after.a.forwarded > before.a.forwarded, 'A\'s proxy path forwarded to its swtpm');

});
