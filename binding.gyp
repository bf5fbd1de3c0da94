{
  "variables": {
    # The official BLAKE3 C implementation as Debian installs it (package librust-blake3-dev, see
    # scripts/setup.sh); native/blake3/ includes its files from there, nothing is copied into this repository.
    "blake3_dir": "/usr/share/cargo/registry/blake3-1.3.1/c"
  },
  "targets": [
    {
      "target_name": "sector_crypto",
      "sources": ["native/sector_crypto.c", "native/blake3/blake3_lib.c"],
      "include_dirs": ["<(blake3_dir)"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "OPENSSL_NO_DEPRECATED"],
      "conditions": [
        ["target_arch=='x64'", {
          "sources": ["native/blake3/sse2.S", "native/blake3/sse41.S", "native/blake3/avx2.S", "native/blake3/avx512.S"]
        }]
      ]
    },
    {
      "target_name": "fd_passing",
      "sources": ["native/fd_passing.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
