#!/usr/bin/env bash
# Installs everything vmseal needs on a Debian machine, then builds the demo guest.
# Idempotent: packages already present are not reinstalled, the guest is built only when missing.
# Runs as root, or through sudo when it is available.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

# Debian packages the whole project uses: QEMU and its tools, swtpm, the guest's building blocks,
# the independent tools the tests use as oracles, and what node-gyp needs to build the native
# addons (ours in native/, which compiles BLAKE3's C code from librust-blake3-dev, and better-sqlite3).
PACKAGES=(
  qemu-system-x86 qemu-utils swtpm swtpm-tools tpm2-tools busybox-static cpio e2fsprogs
  cryptsetup-bin libnbd-bin python3-libnbd fio nbdkit ntfs-3g attr xz-utils lz4 zstd gzip
  bpftool ima-evm-utils b3sum
  g++ make python3 librust-blake3-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all ${#PACKAGES[@]} present"
fi

say "installing npm packages (npm ci)"
npm ci --no-audit --no-fund

say "building the demo guest (cached under \${VMSEAL_CACHE:-~/.cache/vmseal})"
node bin/vmseal.js guest build

say "setup complete"
