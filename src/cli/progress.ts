/**
 * Progress of long CLI work on a stream (stderr): one line per step, and a byte-count bar when
 * the stream is a terminal. Without a terminal (CI, pipes) only the lines are written.
 */
import cliProgress from 'cli-progress';

export interface Progress {
  onProgress: (msg: string) => void;
  onTransfer: (doneBytes: number, totalBytes: number) => void;
  /** Stops a bar still on screen (call when the build ends, also on failure). */
  stop: () => void;
}

export function createProgress(stream: NodeJS.WriteStream, prefix: string): Progress {
  let bar: cliProgress.SingleBar | undefined;
  const stop = () => {
    bar?.stop();
    bar = undefined;
  };
  return {
    onProgress: (msg) => {
      stop();
      stream.write(`${prefix}${msg}\n`);
    },
    onTransfer: (done, total) => {
      if (!stream.isTTY) return;
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            stream,
            format: `${prefix}  [{bar}] {percentage}% {value}/{total} MB`,
            formatValue: (v, _o, type) => (type === 'value' || type === 'total' ? (v / 1e6).toFixed(1) : String(v)),
            hideCursor: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0);
      }
      bar.update(done);
    },
    stop,
  };
}
