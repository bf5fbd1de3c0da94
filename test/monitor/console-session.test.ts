/** The sealed console's monitor end against a tenant end built from the same protocol pieces. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { open, seal } from '../../src/crypto/aead.ts';
import { deriveConsoleSessionKey } from '../../src/crypto/keys.ts';
import { consoleAad, decodeConsoleFrame, encodeConsoleFrame } from '../../src/formats/protocol/console-frame.ts';
import { ConsoleSession } from '../../src/monitor/identity/console-session.ts';
import { RefusalError } from '../../src/monitor/identity/refusal.ts';

class FakeSerial extends EventEmitter {
  written: Buffer[] = [];
  write(b: Uint8Array) {
    this.written.push(Buffer.from(b));
  }
  lastOutput() {
    return 'vmseal-guest# ';
  }
}

function tenantEnd(consoleKey: Buffer, tenantNonce: Buffer, session: ConsoleSession) {
  const key = deriveConsoleSessionKey(consoleKey, tenantNonce, Buffer.from(session.sessionId, 'hex'));
  return {
    input: (seq: number, text: string) => seal(key, encodeConsoleFrame(seq, Buffer.from(text)), consoleAad('in', session.sessionId)),
    output: (frame: Buffer) => decodeConsoleFrame(open(key, frame, consoleAad('out', session.sessionId))),
  };
}

const refused = (code: string) => (e: unknown) => e instanceof RefusalError && e.code === code;

test('console output is sealed in order, starting with the current screen; input is taken strictly in order', () => {
  const serial = new FakeSerial();
  const consoleKey = randomBytes(32);
  const nonce = randomBytes(16);
  const s = new ConsoleSession(consoleKey, nonce, serial);
  const t = tenantEnd(consoleKey, nonce, s);
  serial.emit('data', 'hello\r\n');
  const frames = s.framesAfter(0).map((f) => t.output(f.frame));
  assert.deepEqual(frames.map((f) => f.seq), [1, 2]);
  assert.equal(frames.map((f) => f.data.toString()).join(''), 'vmseal-guest# hello\r\n');
  assert.deepEqual(s.framesAfter(1).map((f) => f.seq), [2]);

  const one = t.input(1, 'ls\n');
  s.input(one);
  assert.equal(Buffer.concat(serial.written).toString(), 'ls\n');
  assert.throws(() => s.input(one), refused('REPLAY'));
  assert.throws(() => s.input(t.input(3, 'x')), refused('TAMPER'), 'a gap: frame 2 was withheld');
  const tampered = Buffer.from(t.input(2, 'rm -rf /\n'));
  tampered[tampered.length - 1]! ^= 1;
  assert.throws(() => s.input(tampered), refused('TAMPER'));
  s.input(t.input(2, 'id\n'));
  assert.equal(Buffer.concat(serial.written).toString(), 'ls\nid\n');

  // A frame from an earlier session does not open in a new one, even with the same tenant nonce.
  const s2 = new ConsoleSession(consoleKey, nonce, serial);
  assert.throws(() => s2.input(one), refused('TAMPER'));
  // Another VM's console key opens nothing.
  const other = tenantEnd(randomBytes(32), nonce, s2);
  assert.throws(() => s2.input(other.input(1, 'x')), refused('TAMPER'));
  s.close();
  s2.close();
  serial.emit('data', 'after close');
  assert.equal(s.framesAfter(2).length, 0);
});
