import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { CryptoPool } from '../../src/monitor/disk/crypto-pool.ts';
import { SectorCrypto, type SectorKeys } from '../../src/monitor/disk/sector-crypto.ts';

const keys = (ess: 512 | 4096): SectorKeys => ({ volumeKey: randomBytes(64), integrityKey: randomBytes(32), encryptionSectorSize: ess });

/** Seals through `seal`, gathering the parts the sink receives (in any order) into whole buffers. */
async function sealAll(seal: (first: number, plain: Buffer, sink: (s: number, c: Buffer, l: Buffer) => void) => Promise<void>, first: number, plain: Buffer) {
  const ciphertext = Buffer.alloc(plain.length);
  const leaves = Buffer.alloc((plain.length / 4096) * 32);
  let seen = 0;
  await seal(first, plain, (s, c, l) => {
    c.copy(ciphertext, (s - first) * 4096);
    l.copy(leaves, (s - first) * 32);
    seen += c.length;
  });
  assert.equal(seen, plain.length);
  return { ciphertext, leaves };
}

test('worker results equal inline results, for 4096- and 512-byte encryption sectors, and tampering is found', { timeout: 60_000 }, async (t) => {
  const pool = new CryptoPool(2);
  t.after(() => pool.close());
  for (const ess of [4096, 512] as const) {
    const k = keys(ess);
    const reference = new SectorCrypto(k);
    const ctx = pool.context(k, 0);
    t.after(() => ctx.close());
    const plain = randomBytes(300 * 4096); // several parts of unequal size
    const first = 2 ** 33; // beyond 32 bits
    const got = await sealAll((f, p, s) => ctx.seal(f, p, s), first, plain);
    const want = { ciphertext: Buffer.alloc(plain.length), leaves: Buffer.alloc(300 * 32) };
    reference.seal(first, plain, want.ciphertext, want.leaves);
    assert.ok(got.ciphertext.equals(want.ciphertext), `ess ${ess}: ciphertext`);
    assert.ok(got.leaves.equals(want.leaves), `ess ${ess}: leaves`);

    const out = Buffer.alloc(plain.length);
    assert.deepEqual(await ctx.open(first, Buffer.from(got.ciphertext), got.leaves, out), []);
    assert.ok(out.equals(plain), `ess ${ess}: decrypts`);
    const damaged = Buffer.from(got.ciphertext);
    damaged[7 * 4096 + 9] = damaged[7 * 4096 + 9]! ^ 1;
    damaged[250 * 4096] = damaged[250 * 4096]! ^ 0x80;
    assert.deepEqual(await ctx.open(first, damaged, got.leaves, Buffer.alloc(plain.length)), [7, 250]);
  }
  assert.ok(pool.parallel);
});

test('jobs cut off by the workers going away finish inline with the same results', { timeout: 60_000 }, async (t) => {
  const pool = new CryptoPool(2);
  const k = keys(4096);
  const reference = new SectorCrypto(k);
  const ctx = pool.context(k, 0);
  t.after(() => ctx.close());
  const plain = randomBytes(1024 * 4096);
  const sealing = sealAll((f, p, s) => ctx.seal(f, p, s), 0, plain);
  await pool.close(); // queued and running parts are refused by the pool
  const got = await sealing;
  const want = { ciphertext: Buffer.alloc(plain.length), leaves: Buffer.alloc(1024 * 32) };
  reference.seal(0, plain, want.ciphertext, want.leaves);
  assert.ok(got.ciphertext.equals(want.ciphertext));
  assert.ok(got.leaves.equals(want.leaves));
  assert.equal(pool.parallel, false);
  const out = Buffer.alloc(plain.length);
  assert.deepEqual(await ctx.open(0, got.ciphertext, got.leaves, out), []);
  assert.ok(out.equals(plain));
});
