/** A stand-in for QEMU's tpm-emulator backend: it speaks swtpm's control protocol to the proxy and sends TPM commands on its data fd. */
import { Socket } from 'node:net';
import { closeFd, connectUnix, socketPair } from '../../src/monitor/unix/fd-passing.ts';
import { NativeSocket } from '../../src/monitor/vtpm/native-socket.ts';
import { ctrlCommand } from '../../src/monitor/vtpm/swtpm-ctrl.ts';

export class FakeQemu {
  #ctrl: NativeSocket;
  #ctrlBuf = Buffer.alloc(0);
  #dataBuf = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  data: Socket | undefined;
  closed = false;

  constructor(ctrlPath: string) {
    this.#ctrl = new NativeSocket(connectUnix(ctrlPath), {
      onData: (d) => {
        this.#ctrlBuf = Buffer.concat([this.#ctrlBuf, d]);
        this.#wake();
      },
      onClose: () => {
        this.closed = true;
        this.#wake();
      },
    });
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  async #until(ok: () => boolean): Promise<void> {
    while (!ok()) {
      if (this.closed) throw new Error('control connection closed');
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  async ctrl(code: number, request: Buffer, responseSize: number, fds: number[] = []): Promise<Buffer> {
    this.#ctrl.send(ctrlCommand(code, request), fds);
    await this.#until(() => this.#ctrlBuf.length >= responseSize);
    const r = this.#ctrlBuf.subarray(0, responseSize);
    this.#ctrlBuf = this.#ctrlBuf.subarray(responseSize);
    return r;
  }

  sendRawCtrl(bytes: Buffer): void {
    this.#ctrl.send(bytes);
  }

  waitClosed(): Promise<void> {
    return this.#until(() => this.closed).catch(() => undefined);
  }

  /** Makes a socketpair, passes one end with CMD_SET_DATAFD, keeps the other as the data channel. */
  async setDataFd(): Promise<Buffer> {
    const [mine, theirs] = socketPair();
    const r = await this.ctrl(0x10, Buffer.alloc(0), 4, [theirs]);
    closeFd(theirs);
    this.data = new Socket({ fd: mine, readable: true, writable: true });
    this.data.on('data', (d: Buffer) => {
      this.#dataBuf = Buffer.concat([this.#dataBuf, d]);
      this.#wake();
    });
    return r;
  }

  /** Sends `bytes` as one command and returns the one response. */
  async tpm(bytes: Buffer): Promise<Buffer> {
    this.data!.write(bytes);
    await this.#until(() => this.#dataBuf.length >= 10 && this.#dataBuf.length >= this.#dataBuf.readUInt32BE(2));
    const size = this.#dataBuf.readUInt32BE(2);
    const r = this.#dataBuf.subarray(0, size);
    this.#dataBuf = this.#dataBuf.subarray(size);
    return r;
  }

  close(): void {
    this.data?.destroy();
    this.#ctrl.close();
  }
}
