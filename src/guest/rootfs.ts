/**
 * The guest's root filesystem tree, all busybox: init with an inittab, a start script that mounts
 * the kernel filesystems (securityfs too, so the IMA log is readable), starts a handful of
 * long-running services and prints the ready marker, a root shell on ttyS0, and a clean
 * shutdown path for ACPI power-off (button + evdev modules -> acpid -> poweroff -> init).
 * tpm2-tools and its shared libraries come from Debian packages (see tpm-tools.ts); an
 * unprivileged user lets tests run processes as someone other than root (su).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Busybox } from './busybox.ts';
import { GUEST_HOSTNAME, GUEST_PROMPT, GUEST_READY_MARKER, GUEST_USER } from './contract.ts';
import type { DebPackage } from './debian-packages.ts';
import { writeTree, type TreeEntry } from './file-tree.ts';
import { GUEST_TPM_TCTI, type PackagedFiles } from './tpm-tools.ts';

export interface GuestService {
  /** The process name `ps` shows. */
  name: string;
  /** Shell command in the start script; each daemon detaches itself. */
  start: string;
}

/** Long-running services, so the guest's process list (and what introspection sees) is not trivial. */
export const GUEST_SERVICES: readonly GuestService[] = [
  { name: 'syslogd', start: 'syslogd -O /var/log/messages' },
  { name: 'klogd', start: 'klogd' },
  { name: 'crond', start: 'crond -c /var/spool/cron/crontabs' },
  { name: 'httpd', start: 'httpd -h /srv/www -p 80' },
  { name: 'acpid', start: 'acpid' },
  { name: 'vmseal-sensord', start: 'start-stop-daemon -S -b -x /usr/sbin/vmseal-sensord' },
];

const PATH_LINE = 'export PATH=/sbin:/bin:/usr/sbin:/usr/bin';

const INITTAB = `# busybox init: start the system, keep a root shell on the serial console, stop cleanly.
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::shutdown:/etc/init.d/rcK
`;

function startScript(): string {
  const starts = GUEST_SERVICES.map((s) => `${s.start} || echo "${GUEST_HOSTNAME}: ${s.name} failed to start"`).join('\n');
  return `#!/bin/sh
# Run once by init: mount the kernel filesystems, start the services, announce readiness.
${PATH_LINE}

mounted() { grep -q "^[^ ]* $1 " /proc/mounts; }

mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
# The initramfs moves its devtmpfs here; mount one only when booted without it.
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# mke2fs -d copies the build host's owners (root); the unprivileged user owns its home.
chown ${GUEST_USER.name}:${GUEST_USER.name} ${GUEST_USER.home}
hostname -F /etc/hostname
ip link set lo up

${starts}

{
	echo "boot $(date -u +%Y-%m-%dT%H:%M:%SZ) kernel $(uname -r)"
	echo "cmdline: $(cat /proc/cmdline)"
	echo "services: ${GUEST_SERVICES.map((s) => s.name).join(' ')}"
} >> /var/log/boot.log

echo "${GUEST_READY_MARKER}"
`;
}

/** Run by init on power-off or reboot, before it kills what is left and stops the machine. */
const STOP_SCRIPT = `#!/bin/sh
# Stop every process (they hold log files open for writing), then make the root filesystem
# read-only so the disk is clean when the VM stops.
${PATH_LINE}

echo "${GUEST_HOSTNAME}: stopping"
kill -TERM -1
sleep 1
kill -KILL -1
sync
if mount -o remount,ro /; then
	echo "${GUEST_HOSTNAME}: root filesystem is read-only"
else
	echo "${GUEST_HOSTNAME}: cannot remount / read-only"
fi
`;

const SENSOR_DAEMON = `#!/bin/sh
# vmseal-sensord: a demo "sensor" daemon. Every 5 s it samples the load average and free memory
# into /run/vmseal-sensor and, once a minute, logs the reading to syslog.
n=0
while :; do
	read -r load1 load5 load15 tasks last </proc/loadavg
	while read -r key value unit; do
		[ "$key" = MemAvailable: ] && mem=$value && break
	done </proc/meminfo
	echo "load=$load1 tasks=$tasks mem_available_kb=$mem" >/run/vmseal-sensor
	[ $((n % 12)) -eq 0 ] && logger -t vmseal-sensord "load=$load1 tasks=$tasks mem_available_kb=$mem"
	n=$((n + 1))
	sleep 5
done
`;

/**
 * vmseal-tpm-grant: the owner guest's own share / revoke of one of its NV indices (docs/vtpm-nv.md, "Grants
 * from inside the owner guest"). It frames vmseal's vendor command (formats/tpm2/vmseal-vendor.ts) with printf
 * and sends it with tpm2_send through the kernel's resource manager (/dev/tpmrm0, the guest's default TCTI),
 * which passes only codes the TPM lists in TPM_CAP_COMMANDS: the monitor's proxy lists vmseal's two
 * (monitor/vtpm/vendor-capability.ts). Unlike /dev/tpm0 it is not exclusive. Linux before 6.3 compares only
 * the low 16 bits of a listed command (tpm2_find_cc), so its resource manager refuses every vendor code
 * itself (0x000b0143, the command never reached the TPM); only then does the tool use /dev/tpm0, which
 * admits one opener at a time. The demo guest's 6.1 kernel is such a kernel.
 */
export const GUEST_GRANT_TOOL = 'usr/bin/vmseal-tpm-grant';

export const GUEST_GRANT_TOOL_SCRIPT = `#!/bin/sh
# vmseal-tpm-grant share|revoke INDEX VMID [PASSWORD]
# Asks the vmseal monitor, through this VM's own vTPM, to let VM VMID read NV index INDEX of this VM
# (VMID must be a peer the tenant approved: vmseal vm tpm peer), or to withdraw that. PASSWORD is the
# index's auth value ("hex:..." for raw bytes), as given to tpm2_nvdefine -p.
usage() {
	echo "usage: vmseal-tpm-grant share|revoke INDEX VMID [PASSWORD]" >&2
	exit 2
}
[ $# -ge 3 ] && [ $# -le 4 ] || usage
case $1 in
share) cc=20005601 ;;
revoke) cc=20005602 ;;
*) usage ;;
esac
index=$(printf %08x "$2" 2>/dev/null) || usage
case $index in 01??????) ;; *) usage ;; esac
vmid=$3
[ \${#vmid} -eq 32 ] || usage
case $vmid in *[!0-9a-f]*) usage ;; esac
hexof() { od -An -tx1 -v | tr -d ' \\n'; }
case \${4-} in
hex:*) pw=$(echo "\${4#hex:}" | tr 'A-F' 'a-f') ;;
*) pw=$(printf %s "\${4-}" | hexof) ;;
esac
case $pw in *[!0-9a-f]*) usage ;; esac
pwlen=$((\${#pw} / 2))
[ $((pwlen * 2)) -eq \${#pw} ] && [ $pwlen -le 64 ] || usage
# header, handle, auth area (TPM_RS_PW, no nonce, no attributes, the password), TPM2B grantee VM id
cmd=8002$(printf %08x $((61 + pwlen)))$cc$index$(printf %08x $((9 + pwlen)))40000009000000$(printf %04x $pwlen)\${pw}0020$(printf %s "$vmid" | hexof)
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
printf "$(echo "$cmd" | sed 's/../\\\\x&/g')" >"$tmp/cmd"
send() {
	tpm2_send -T "$1" -o "$tmp/rsp" <"$tmp/cmd" || exit 1
	rc=$(dd if="$tmp/rsp" bs=1 skip=6 count=4 2>/dev/null | hexof)
}
# the resource manager, unless the caller chose another TCTI (a login shell's /etc/profile sets the same)
send "\${TPM2TOOLS_TCTI:-${GUEST_TPM_TCTI}}"
# Linux < 6.3 refuses any vendor code in its resource manager (the TPM never saw it): the raw device
[ "$rc" = 000b0143 ] && send device:/dev/tpm0
if [ "$rc" = 00000000 ]; then
	echo "vmseal-tpm-grant: $1 0x$index $vmid done"
	exit 0
fi
case $rc in
0000018b) why="this VM owns no managed NV index 0x$index" ;;
000009a2) why="wrong index password" ;;
0000012f) why="the monitor does not know this index's password (defined with parameter encryption)" ;;
000001c4) why="$vmid is not a running peer of this VM (share) or has no grant (revoke)" ;;
0000014b) why="too many grants on this index" ;;
00000143) why="no vmseal monitor behind this TPM" ;;
*) why="TPM error" ;;
esac
echo "vmseal-tpm-grant: $1 failed: TPM_RC 0x$rc: $why" >&2
exit 1
`;

/** busybox acpid maps the power button (KEY_POWER) to /etc/acpi/PWRF/00000080. */
const POWER_BUTTON = `#!/bin/sh
# ACPI power button (QMP system_powerdown): power off through init's shutdown actions.
exec poweroff
`;

const u = GUEST_USER;

function rootfsEntries(busybox: Busybox, busyboxBytes: Uint8Array, packaged: readonly TreeEntry[]): TreeEntry[] {
  const dir = (path: string, mode = 0o755): TreeEntry => ({ kind: 'dir', path, mode });
  const file = (path: string, content: string, mode = 0o644): TreeEntry => ({ kind: 'file', path, mode, content });
  return [
    ...['dev', 'proc', 'sys', 'run', 'mnt', 'home', 'var/log'].map((p) => dir(p)),
    dir('tmp', 0o1777),
    dir('root', 0o700),
    { kind: 'file', path: 'bin/busybox', mode: 0o755, content: busyboxBytes },
    ...busybox.applets.map((path): TreeEntry => ({ kind: 'symlink', path, target: '/bin/busybox' })),
    file('etc/inittab', INITTAB),
    file('etc/init.d/rcS', startScript(), 0o755),
    file('etc/init.d/rcK', STOP_SCRIPT, 0o755),
    file('etc/hostname', `${GUEST_HOSTNAME}\n`),
    file('etc/hosts', `127.0.0.1\tlocalhost\n127.0.1.1\t${GUEST_HOSTNAME}\n`),
    dir(u.home.slice(1)),
    file('etc/passwd', `root:x:0:0:root:/root:/bin/sh\n${u.name}:x:${u.uid}:${u.uid}:${u.name}:${u.home}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n`),
    file('etc/group', `root:x:0:\n${u.name}:x:${u.uid}:\nnogroup:x:65534:\n`),
    file('etc/shadow', `root:*:19000:0:99999:7:::\n${u.name}:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n`, 0o600),
    file('etc/shells', '/bin/sh\n'),
    // A login shell reads this; init starts the console shell with HOME=/, su sets the user's own.
    file('etc/profile', `${PATH_LINE}\nif [ "$(id -u)" = 0 ]; then export HOME=/root; fi\nexport PS1='${GUEST_PROMPT}'\nexport TPM2TOOLS_TCTI=${GUEST_TPM_TCTI}\n`),
    file('etc/acpi/PWRF/00000080', POWER_BUTTON, 0o755),
    file('var/spool/cron/crontabs/root', '# heartbeat, so crond has work and the log grows\n* * * * * date -u >> /var/log/cron-heartbeat.log\n', 0o600),
    file('srv/www/index.html', '<!doctype html>\n<title>vmseal demo guest</title>\n<p>Served by busybox httpd inside the vmseal demo guest.</p>\n'),
    file('usr/sbin/vmseal-sensord', SENSOR_DAEMON, 0o755),
    file(GUEST_GRANT_TOOL, GUEST_GRANT_TOOL_SCRIPT, 0o755),
    ...packaged,
  ];
}

/** Writes the root filesystem, with the packaged files, into the empty directory `dir`. */
export async function buildRootfs(dir: string, busybox: Busybox, packaged: PackagedFiles): Promise<void> {
  await writeTree(dir, rootfsEntries(busybox, await readFile(busybox.path), packaged.entries));
}

/**
 * Identifies what buildRootfs would produce from these package versions, so a cached disk is
 * rebuilt when the recipe, busybox or any package the rootfs takes files from changes.
 */
export function rootfsRecipe(busybox: Busybox, packages: readonly DebPackage[]): string {
  const entries = rootfsEntries(busybox, Buffer.from(`busybox-static ${busybox.version}`), []);
  const versions = packages.map((p) => `${p.name}=${p.version}`).sort();
  const json = JSON.stringify({ entries, packages: versions }, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('base64') : v));
  return createHash('sha256').update(json).digest('hex');
}
