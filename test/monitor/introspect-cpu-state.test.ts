/**
 * The HMP `info registers` parser on dumps captured from QEMU 7.2.22 running the demo guest under
 * TCG (introspect-fixtures/): one taken while vCPU 0 ran busybox in user mode, one in the kernel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CpuStateParseError, parseInfoRegisters } from '../../src/monitor/introspect/cpu-state.ts';

const fixture = (name: string) => readFileSync(new URL(`./introspect-fixtures/${name}`, import.meta.url), 'utf8');
const user = fixture('info-registers-user.txt');
const kernel = fixture('info-registers-kernel.txt');

test('parses CR3, CR4 and the mode of a real vCPU dump', () => {
  const u = parseInfoRegisters(user);
  assert.equal(u.cpuIndex, 0);
  assert.equal(u.cpl, 3);
  assert.equal(u.rip, 0x52eff6n);
  assert.equal(u.cr0, 0x80050033n);
  assert.equal(u.cr2, 0x39b39048n);
  assert.equal(u.cr3, 0x2546000n);
  assert.equal(u.cr4, 0x6b0n);
  assert.equal(u.efer, 0xd01n);
  assert.equal(u.la57, false);
  assert.equal(u.pcide, false);

  const k = parseInfoRegisters(kernel);
  assert.equal(k.cpl, 0);
  assert.equal(k.rip, 0xffffffff97ec5e0fn);
  assert.equal(k.cr3, 0x2546000n);
});

test('CR4 bits: LA57 and PCIDE', () => {
  const la57 = parseInfoRegisters(user.replace('CR4=000006b0', 'CR4=000216b0'));
  assert.equal(la57.la57, true);
  assert.equal(la57.pcide, true);
});

test('anything but one 64-bit vCPU dump is refused', () => {
  const bad = (text: string, re: RegExp) => assert.throws(() => parseInfoRegisters(text), (e: unknown) => e instanceof CpuStateParseError && re.test(e.message));
  bad(user + kernel, /2 CPU# lines/);
  bad(user.replace(/^CR0=.*$/m, ''), /no CR0-CR4 line/);
  bad(user.replace('CR3=0000000002546000', 'CR3=02546000'), /no CR0-CR4 line/);
  bad(user.replace('CR3=0000000002546000', 'CR3=000000000254600g'), /no CR0-CR4 line/);
  bad(user.replace(/^EFER=.*$/m, 'EFER=0000000000000001'), /not in long mode/);
  bad(user.replace('CR0=80050033', 'CR0=00050033'), /not in long mode/);
  bad(user.replace(/^RIP=.*$/m, 'EIP=0052eff6 EFL=00000213 [----A-C] CPL=3 II=0 A20=1 SMM=0 HLT=0'), /no RIP line/);
  bad('', /no CPU# line/);
  bad('x'.repeat(100_000), /too long/);
});
