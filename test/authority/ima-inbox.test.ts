// The verifier's IMA inbox: a list is taken only if it answers a request made after the quote, only
// from a live session of the VM; unknown sessions and unasked-for answers are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ImaInbox, UnknownImaSession } from '../../src/authority/attest/ima-inbox.ts';

const S1 = 'aa'.repeat(16);
const VM = 'bb'.repeat(16);

test('ima inbox: request, answer, freshness, unknown sessions', async () => {
  const inbox = new ImaInbox((sid) => (sid === S1 ? VM : undefined));
  // No session has polled: no list, at once.
  assert.equal(await inbox.fetch(VM, 50), undefined);
  await assert.rejects(inbox.poll('cc'.repeat(16), 0, 0), UnknownImaSession);

  // The host library polls; the verifier asks; the library answers.
  const polled = inbox.poll(S1, 0, 5000);
  const fetched = inbox.fetch(VM, 5000);
  const seq = await polled;
  assert.equal(seq, 1);
  assert.throws(() => inbox.upload(S1, 2, Buffer.from('future')), UnknownImaSession, 'an answer to a request not made');
  inbox.upload(S1, 1, Buffer.from('list-1'));
  assert.deepEqual(await fetched, Buffer.from('list-1'));

  // The next request is not answered by the old list: after the timeout there is none.
  void inbox.poll(S1, 1, 0);
  assert.equal(await inbox.fetch(VM, 50), undefined);
  // An answer to the old request does not satisfy a new one either.
  const again = inbox.fetch(VM, 200);
  inbox.upload(S1, 1, Buffer.from('stale'));
  assert.equal(await again, undefined);
  inbox.close();
});
