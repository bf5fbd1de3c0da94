/**
 * Builds NTFS test images with the real tools: mkntfs formats, ntfs-3g (FUSE) populates a
 * Windows-like tree. Everything the NTFS tests compare against comes from ntfs-3g's own tools.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * A 64 MiB image holding Windows/System32 (small, large, fragmented binaries, one with an alternate
 * data stream), inetpub/wwwroot/index.html, a sparse file, a compressed directory, a directory with
 * a DOS 8.3 alias, and a directory large enough to need $INDEX_ALLOCATION.
 */
export function buildNtfsImage(dir: string): string {
  const image = path.join(dir, 'win.ntfs');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  execFileSync('truncate', ['-s', '64M', image]);
  run('mkntfs', ['-F', '-Q', '-q', '-L', 'WIN', image]);
  run('ntfs-3g', ['-o', 'streams_interface=windows,compression', image, mnt]);
  try {
    const sys32 = path.join(mnt, 'Windows', 'System32');
    fs.mkdirSync(sys32, { recursive: true });
    fs.mkdirSync(path.join(mnt, 'inetpub', 'wwwroot'), { recursive: true });
    fs.writeFileSync(path.join(mnt, 'inetpub', 'wwwroot', 'index.html'), '<html><body>IIS Windows Server</body></html>\r\n');
    fs.writeFileSync(path.join(sys32, 'cmd.exe'), randomBytes(300_000));
    fs.writeFileSync(path.join(sys32, 'cmd.exe:Zone.Identifier'), '[ZoneTransfer]\r\nZoneId=3\r\n');
    fs.writeFileSync(path.join(sys32, 'tiny.ini'), '[boot]\r\n'); // resident $DATA
    fs.writeFileSync(path.join(sys32, 'ntoskrnl.exe'), randomBytes(5 << 20));
    // Fill with small files, free every other one, then write: the new file lands in the holes.
    const filler = path.join(mnt, 'Windows', 'Temp');
    fs.mkdirSync(filler);
    for (let i = 0; i < 160; i++) fs.writeFileSync(path.join(filler, `f${i}.tmp`), randomBytes(8192));
    // Take all remaining free space (keeping room for $MFT growth) so only the holes are left.
    const st = fs.statfsSync(mnt);
    const fill = path.join(mnt, 'fill.bin');
    const fd = fs.openSync(fill, 'w');
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    for (let left = st.bavail * st.bsize - (2 << 20); left > 0; left -= chunk.length) fs.writeSync(fd, chunk, 0, Math.min(left, chunk.length));
    fs.closeSync(fd);
    for (let i = 0; i < 160; i += 2) fs.unlinkSync(path.join(filler, `f${i}.tmp`));
    fs.writeFileSync(path.join(sys32, 'fragmented.exe'), randomBytes(400_000));
    fs.unlinkSync(fill);
    const sparse = path.join(mnt, 'sparse.vhd');
    fs.writeFileSync(sparse, 'head');
    fs.truncateSync(sparse, 8 << 20);
    fs.appendFileSync(sparse, 'tail');
    const comp = path.join(mnt, 'Compressed');
    fs.mkdirSync(comp);
    run('setfattr', ['-h', '-v', '0x00000800', '-n', 'system.ntfs_attrib_be', comp]);
    fs.writeFileSync(path.join(comp, 'log.txt'), 'hello compression\n'.repeat(20000));
    const pf = path.join(mnt, 'Program Files');
    fs.mkdirSync(pf);
    run('setfattr', ['-h', '-v', '"PROGRA~1"', '-n', 'system.ntfs_dos_name', pf]);
    fs.writeFileSync(path.join(pf, 'app.exe'), randomBytes(5000));
  } finally {
    run('umount', [mnt]);
  }
  return image;
}

/** Every path `ntfsls -R -F` lists (directories without their trailing slash). */
export function ntfslsPaths(image: string): Array<{ path: string; isDirectory: boolean }> {
  const out: Array<{ path: string; isDirectory: boolean }> = [];
  let dir = '/';
  for (const line of run('ntfsls', ['-R', '-F', image]).split('\n')) {
    if (line === '') continue;
    if (line.startsWith('/') && line.endsWith(':')) {
      dir = line.slice(0, -1);
      continue;
    }
    if (line === './' || line === '../') continue;
    const isDirectory = line.endsWith('/');
    const name = isDirectory ? line.slice(0, -1) : line;
    out.push({ path: `${dir.endsWith('/') ? dir : `${dir}/`}${name}`, isDirectory });
  }
  return out;
}

export function ntfscat(image: string, file: string): Buffer {
  return execFileSync('ntfscat', [image, file], { maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
}
