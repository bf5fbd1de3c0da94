{
  "targets": [
    {
      "target_name": "sector_crypto",
      "sources": ["native/sector_crypto.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "OPENSSL_NO_DEPRECATED"]
    },
    {
      "target_name": "fd_passing",
      "sources": ["native/fd_passing.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
