/** The authority client against a misbehaving server: it must fail clearly, never trust or hang. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AuthorityRequestError, enrollHost, fetchCaCertificate, parseAuthorityUrl } from '../../src/authority/http-client.ts';

async function serve(t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/prefix`;
}

async function rejects(promise: Promise<unknown>, pattern: RegExp, code?: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof AuthorityRequestError, String(err));
    assert.match(err.message, pattern);
    if (code !== undefined) assert.equal(err.code, code);
    return true;
  });
}

test('the client sends the enrollment to the base path and reads the certificate', { timeout: 20_000 }, async (t) => {
  let seen: { url?: string; body?: string; type?: string } = {};
  const url = await serve(t, (req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      seen = { url: req.url!, body, type: req.headers['content-type']! };
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ certificate: 'PEM' }));
    });
  });
  const key = Buffer.alloc(32, 9);
  assert.deepEqual(await enrollHost(url, { hostId: 'h', hpkePublicKey: key, token: 't' }), { certificate: 'PEM' });
  assert.equal(seen.url, '/prefix/v1/hosts/enroll');
  assert.equal(seen.type, 'application/json');
  assert.deepEqual(JSON.parse(seen.body!), { hostId: 'h', hpkePublicKey: key.toString('base64'), token: 't' });
});

test('oversized, non-JSON, wrongly shaped, redirecting and refusing answers are clear errors', { timeout: 20_000 }, async (t) => {
  const url = await serve(t, (_req, res) => {
    // Written in pieces, so chunked, with no content-length to go by.
    for (let i = 0; i < 20; i++) res.write('x'.repeat(10_000));
    res.end();
  });
  await rejects(fetchCaCertificate(url), /exceeds 65536 bytes/);

  const cases: Array<[(res: ServerResponse) => void, RegExp, string?]> = [
    [(res) => res.end('<html>'), /not JSON/],
    [(res) => res.end(JSON.stringify({ certificate: 42 })), /unexpected body/],
    [(res) => { res.statusCode = 302; res.setHeader('location', 'http://example.invalid/'); res.end('{}'); }, /cannot reach/],
    [(res) => { res.statusCode = 403; res.end(JSON.stringify({ error: 'enrollment token has already been used', code: 'TOKEN_USED' })); }, /403 TOKEN_USED/, 'TOKEN_USED'],
    [(res) => { res.statusCode = 500; res.end('{}'); }, /answered 500/],
    [(res) => { res.setHeader('content-length', '1000000'); res.end(); }, /too large/],
  ];
  for (const [respond, pattern, code] of cases) {
    const caseUrl = await serve(t, (_req, res) => respond(res));
    await rejects(fetchCaCertificate(caseUrl), pattern, code);
  }
});

test('authority URLs must be plain http(s) bases', () => {
  assert.equal(parseAuthorityUrl('http://a:1').href, 'http://a:1/');
  assert.equal(parseAuthorityUrl('https://a/x').href, 'https://a/x/');
  for (const bad of ['ftp://a/', 'file:///etc', 'http://u:p@a/', 'http://a/?q=1', 'http://a/#f', 'not a url']) {
    assert.throws(() => parseAuthorityUrl(bad), AuthorityRequestError, bad);
  }
});
