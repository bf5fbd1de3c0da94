// Batch sector crypto for the sealed disk: AES-256-XTS and the integrity tree's leaf HMACs over many sectors
// per call, so the per-call cost of Node's crypto API is paid once per batch instead of once per sector.
//
// OpenSSL is Node's own (headers from the Node install, symbols exported by the node binary): nothing is
// linked in, and the addon uses exactly the library Node's crypto module uses.
//
// Every argument comes from JavaScript and is checked before any byte is touched; a bad one throws a
// TypeError/RangeError, never aborts the process.
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XTS_KEY_BYTES 64
#define XTS_IV_BYTES 16
#define MIN_SECTOR 512
#define MAX_SECTOR 65536
#define HASH_BYTES 32
#define MIN_HMAC_KEY 16
#define MAX_HMAC_KEY 64
#define LEAF_HEADER 12

// Fetched once per Node environment (main thread or worker): an implicit fetch on every init would take
// OpenSSL's method-store lock once per batch.
typedef struct {
  EVP_CIPHER *xts;
  EVP_MAC *hmac;
} algorithms;

typedef struct {
  uint8_t *data;
  size_t length;
} bytes;

static void throw_range(napi_env env, const char *msg) { napi_throw_range_error(env, NULL, msg); }
static void throw_type(napi_env env, const char *msg) { napi_throw_type_error(env, NULL, msg); }

static bool get_bytes(napi_env env, napi_value v, const char *name, bytes *out) {
  bool is_ta = false;
  char msg[96];
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) {
    snprintf(msg, sizeof msg, "%s must be a Buffer or Uint8Array", name);
    throw_type(env, msg);
    return false;
  }
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    snprintf(msg, sizeof msg, "%s must be a Buffer or Uint8Array", name);
    throw_type(env, msg);
    return false;
  }
  out->data = data;
  out->length = length;
  return true;
}

static bool get_u32(napi_env env, napi_value v, const char *name, uint32_t *out) {
  napi_valuetype t;
  double d = 0;
  char msg[96];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
      !(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) {
    snprintf(msg, sizeof msg, "%s must be an integer from 0 to 2^32-1", name);
    throw_range(env, msg);
    return false;
  }
  *out = (uint32_t)d;
  return true;
}

static bool get_u64(napi_env env, napi_value v, const char *name, uint64_t *out) {
  napi_valuetype t;
  bool lossless = false;
  char msg[96];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_bigint ||
      napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok || !lossless) {
    snprintf(msg, sizeof msg, "%s must be a bigint from 0 to 2^64-1", name);
    throw_range(env, msg);
    return false;
  }
  return true;
}

static bool get_sector_size(napi_env env, napi_value v, uint32_t *out) {
  if (!get_u32(env, v, "sectorSize", out)) return false;
  if (*out < MIN_SECTOR || *out > MAX_SECTOR || (*out & (*out - 1)) != 0) {
    throw_range(env, "sectorSize must be a power of two from 512 to 65536");
    return false;
  }
  return true;
}

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, algorithms **algs) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, (void **)algs) != napi_ok) return false;
  if (argc != want) {
    char msg[64];
    snprintf(msg, sizeof msg, "expected %zu arguments, got %zu", want, argc);
    throw_type(env, msg);
    return false;
  }
  return true;
}

// OpenSSL refuses partially overlapping in/out; exactly in place is fine.
static bool overlaps_partially(const uint8_t *a, const uint8_t *b, size_t n) {
  return a != b && a < b + n && b < a + n;
}

// xtsEncrypt/xtsDecrypt(key64, firstIv: bigint, ivStep, sectorSize, data, out): sector s of data gets the
// plain64 tweak firstIv + s * ivStep (little-endian, zero-extended to 16 bytes).
static napi_value xts_run(napi_env env, napi_callback_info info, int enc) {
  napi_value argv[6];
  algorithms *algs = NULL;
  if (!get_args(env, info, 6, argv, &algs)) return NULL;
  bytes key, data, out;
  uint64_t first_iv;
  uint32_t iv_step, sector_size;
  if (!get_bytes(env, argv[0], "key", &key) || !get_u64(env, argv[1], "firstIv", &first_iv) ||
      !get_u32(env, argv[2], "ivStep", &iv_step) || !get_sector_size(env, argv[3], &sector_size) ||
      !get_bytes(env, argv[4], "data", &data) || !get_bytes(env, argv[5], "out", &out)) {
    return NULL;
  }
  if (key.length != XTS_KEY_BYTES) {
    throw_range(env, "xts key must be 64 bytes (two AES-256 keys)");
    return NULL;
  }
  if (CRYPTO_memcmp(key.data, key.data + XTS_KEY_BYTES / 2, XTS_KEY_BYTES / 2) == 0) {
    throw_range(env, "xts key halves must differ");
    return NULL;
  }
  if (iv_step == 0) {
    throw_range(env, "ivStep must be at least 1");
    return NULL;
  }
  if (data.length % sector_size != 0) {
    throw_range(env, "data length is not a multiple of sectorSize");
    return NULL;
  }
  if (out.length < data.length) {
    throw_range(env, "out is smaller than data");
    return NULL;
  }
  if (overlaps_partially(data.data, out.data, data.length)) {
    throw_range(env, "out overlaps data without being the same memory");
    return NULL;
  }
  size_t sectors = data.length / sector_size;
  if (sectors == 0) return NULL;
  // The last tweak must fit in 64 bits: (sectors - 1) * ivStep <= 2^64-1 - firstIv.
  if ((uint64_t)(sectors - 1) > (UINT64_MAX - first_iv) / iv_step) {
    throw_range(env, "sector range is beyond the 64-bit IV range");
    return NULL;
  }

  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  bool ok = ctx != NULL && EVP_CipherInit_ex(ctx, algs->xts, NULL, key.data, NULL, enc) == 1;
  uint8_t iv[XTS_IV_BYTES] = {0};
  uint64_t tweak = first_iv;
  for (size_t s = 0; ok && s < sectors; s++, tweak += iv_step) {
    for (int b = 0; b < 8; b++) iv[b] = (uint8_t)(tweak >> (8 * b));
    int written = 0;
    const size_t at = s * (size_t)sector_size;
    // In XTS each sector is one complete data unit: re-initialise with its IV, then one update.
    ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc) == 1 &&
         EVP_CipherUpdate(ctx, out.data + at, &written, data.data + at, (int)sector_size) == 1 &&
         written == (int)sector_size;
  }
  EVP_CIPHER_CTX_free(ctx);
  OPENSSL_cleanse(iv, sizeof iv);
  if (!ok) throw_range(env, "OpenSSL AES-XTS failed");
  return NULL;
}

static napi_value xts_encrypt(napi_env env, napi_callback_info info) { return xts_run(env, info, 1); }
static napi_value xts_decrypt(napi_env env, napi_callback_info info) { return xts_run(env, info, 0); }

// hmacLeaves(key, firstSector: bigint, sectorSize, data, outLeaves):
//   leaf_i = HMAC-SHA256(key, "leaf" || u64le(firstSector + i) || sector_i), written to outLeaves[32i..].
static napi_value hmac_leaves(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  algorithms *algs = NULL;
  if (!get_args(env, info, 5, argv, &algs)) return NULL;
  bytes key, data, out;
  uint64_t first;
  uint32_t sector_size;
  if (!get_bytes(env, argv[0], "key", &key) || !get_u64(env, argv[1], "firstSector", &first) ||
      !get_sector_size(env, argv[2], &sector_size) || !get_bytes(env, argv[3], "data", &data) ||
      !get_bytes(env, argv[4], "outLeaves", &out)) {
    return NULL;
  }
  if (key.length < MIN_HMAC_KEY || key.length > MAX_HMAC_KEY) {
    throw_range(env, "integrity key must be 16..64 bytes");
    return NULL;
  }
  if (data.length % sector_size != 0) {
    throw_range(env, "data length is not a multiple of sectorSize");
    return NULL;
  }
  size_t sectors = data.length / sector_size;
  if (out.length / HASH_BYTES < sectors) {
    throw_range(env, "outLeaves is smaller than 32 bytes per sector");
    return NULL;
  }
  if (sectors == 0) return NULL;
  if ((uint64_t)(sectors - 1) > UINT64_MAX - first) {
    throw_range(env, "sector range is beyond 2^64");
    return NULL;
  }

  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(algs->hmac);
  bool ok = ctx != NULL && EVP_MAC_init(ctx, key.data, key.length, params) == 1;
  uint8_t header[LEAF_HEADER] = {'l', 'e', 'a', 'f'};
  for (size_t s = 0; ok && s < sectors; s++) {
    uint64_t n = first + s;
    for (int b = 0; b < 8; b++) header[4 + b] = (uint8_t)(n >> (8 * b));
    size_t written = 0;
    // A NULL key re-initialises with the key set above (OpenSSL keeps the padded-key digests).
    ok = (s == 0 || EVP_MAC_init(ctx, NULL, 0, NULL) == 1) && EVP_MAC_update(ctx, header, sizeof header) == 1 &&
         EVP_MAC_update(ctx, data.data + s * (size_t)sector_size, sector_size) == 1 &&
         EVP_MAC_final(ctx, out.data + s * HASH_BYTES, &written, HASH_BYTES) == 1 && written == HASH_BYTES;
  }
  EVP_MAC_CTX_free(ctx);
  if (!ok) throw_range(env, "OpenSSL HMAC-SHA256 failed");
  return NULL;
}

// ---- Whole requests on libuv's thread pool ----------------------------------------------------------------
// One job per NBD request: the disk I/O (pread/pwrite) and the crypto run together on a pool thread, directly
// on the caller's buffers (held by references until the callback), so the main thread neither copies nor
// computes, and both cores work when several requests are in flight.

#define TREE_SECTOR 4096
#define JOB_XTS_READ 0
#define JOB_XTS_WRITE 1
#define JOB_OPEN 2
#define JOB_SEAL 3
#define JOB_READ_OPEN 4
// Job status codes besides 0 (ok) and a positive errno.
#define STATUS_CRYPTO_FAILED (-1)
#define STATUS_SHORT_READ (-2)

typedef struct {
  algorithms *algs;
  napi_async_work work;
  napi_ref callback, data_ref, out_ref, leaves_ref;
  int kind;
  uint8_t xts_key[XTS_KEY_BYTES];
  uint8_t hmac_key[MAX_HMAC_KEY];
  size_t hmac_key_len;
  uint64_t first_sector;  // in 4096-byte tree sectors
  uint32_t ess;           // the image's encryption sector size
  int fd;
  int64_t position;
  bytes data, out, leaves;
  int status;
  uint32_t bad;
} job;

// XTS over len bytes (whole ess sectors) starting at tree sector `first`: plain64 tweak counts 512-byte units.
static bool xts_sectors(algorithms *algs, const uint8_t *key, uint64_t first, uint32_t ess, const uint8_t *in, uint8_t *out,
                        size_t len, int enc) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  bool ok = ctx != NULL && EVP_CipherInit_ex(ctx, algs->xts, NULL, key, NULL, enc) == 1;
  uint8_t iv[XTS_IV_BYTES] = {0};
  uint64_t tweak = first * (TREE_SECTOR / 512);
  const uint32_t step = ess / 512;
  for (size_t at = 0; ok && at < len; at += ess, tweak += step) {
    for (int b = 0; b < 8; b++) iv[b] = (uint8_t)(tweak >> (8 * b));
    int written = 0;
    ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc) == 1 && EVP_CipherUpdate(ctx, out + at, &written, in + at, (int)ess) == 1 &&
         written == (int)ess;
  }
  EVP_CIPHER_CTX_free(ctx);
  OPENSSL_cleanse(iv, sizeof iv);
  return ok;
}

// Leaf i of len bytes (whole tree sectors) from tree sector `first`; with `expected`, compares instead of
// storing and sets flags[i] to 1 for a sector that does not match, counting them in *bad.
static bool leaves_of(algorithms *algs, const uint8_t *key, size_t key_len, uint64_t first, const uint8_t *data, size_t len,
                      uint8_t *out, const uint8_t *expected, uint8_t *flags, uint32_t *bad) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(algs->hmac);
  bool ok = ctx != NULL && EVP_MAC_init(ctx, key, key_len, params) == 1;
  uint8_t header[LEAF_HEADER] = {'l', 'e', 'a', 'f'};
  uint8_t leaf[HASH_BYTES];
  const size_t sectors = len / TREE_SECTOR;
  for (size_t s = 0; ok && s < sectors; s++) {
    uint64_t n = first + s;
    for (int b = 0; b < 8; b++) header[4 + b] = (uint8_t)(n >> (8 * b));
    size_t written = 0;
    uint8_t *dst = expected ? leaf : out + s * HASH_BYTES;
    ok = (s == 0 || EVP_MAC_init(ctx, NULL, 0, NULL) == 1) && EVP_MAC_update(ctx, header, sizeof header) == 1 &&
         EVP_MAC_update(ctx, data + s * TREE_SECTOR, TREE_SECTOR) == 1 && EVP_MAC_final(ctx, dst, &written, HASH_BYTES) == 1 &&
         written == HASH_BYTES;
    if (ok && expected) {
      flags[s] = CRYPTO_memcmp(leaf, expected + s * HASH_BYTES, HASH_BYTES) != 0;
      *bad += flags[s];
    }
  }
  EVP_MAC_CTX_free(ctx);
  return ok;
}

static int pread_fully(int fd, uint8_t *buf, size_t len, int64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, (off_t)(pos + (int64_t)done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return STATUS_SHORT_READ;
    done += (size_t)n;
  }
  return 0;
}

static int pwrite_fully(int fd, const uint8_t *buf, size_t len, int64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(pos + (int64_t)done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    done += (size_t)n;
  }
  return 0;
}

static void job_execute(napi_env env, void *arg) {
  (void)env;
  job *j = arg;
  algorithms *a = j->algs;
  switch (j->kind) {
    case JOB_XTS_READ:
      j->status = pread_fully(j->fd, j->data.data, j->data.length, j->position);
      if (j->status == 0 && !xts_sectors(a, j->xts_key, j->first_sector, j->ess, j->data.data, j->data.data, j->data.length, 0)) {
        j->status = STATUS_CRYPTO_FAILED;
      }
      break;
    case JOB_XTS_WRITE:
      if (!xts_sectors(a, j->xts_key, j->first_sector, j->ess, j->data.data, j->out.data, j->data.length, 1)) j->status = STATUS_CRYPTO_FAILED;
      else j->status = pwrite_fully(j->fd, j->out.data, j->data.length, j->position);
      break;
    case JOB_READ_OPEN:
      j->status = pread_fully(j->fd, j->data.data, j->data.length, j->position);
      if (j->status != 0) break;
      // fall through - verify and decrypt what was read
    case JOB_OPEN:
      // Every sector is checked first; nothing is decrypted unless all of them matched.
      if (!leaves_of(a, j->hmac_key, j->hmac_key_len, j->first_sector, j->data.data, j->data.length, NULL, j->leaves.data, j->out.data, &j->bad) ||
          (j->bad == 0 && !xts_sectors(a, j->xts_key, j->first_sector, j->ess, j->data.data, j->data.data, j->data.length, 0))) {
        j->status = STATUS_CRYPTO_FAILED;
      }
      break;
    case JOB_SEAL:
      if (!xts_sectors(a, j->xts_key, j->first_sector, j->ess, j->data.data, j->out.data, j->data.length, 1) ||
          !leaves_of(a, j->hmac_key, j->hmac_key_len, j->first_sector, j->out.data, j->data.length, j->leaves.data, NULL, NULL, NULL)) {
        j->status = STATUS_CRYPTO_FAILED;
      }
      break;
  }
}

static void job_free(napi_env env, job *j) {
  if (j->work) napi_delete_async_work(env, j->work);
  if (j->callback) napi_delete_reference(env, j->callback);
  if (j->data_ref) napi_delete_reference(env, j->data_ref);
  if (j->out_ref) napi_delete_reference(env, j->out_ref);
  if (j->leaves_ref) napi_delete_reference(env, j->leaves_ref);
  OPENSSL_cleanse(j->xts_key, sizeof j->xts_key);
  OPENSSL_cleanse(j->hmac_key, sizeof j->hmac_key);
  OPENSSL_free(j);
}

static void job_complete(napi_env env, napi_status status, void *arg) {
  job *j = arg;
  napi_value cb, undefined, argv[2];
  if (status != napi_ok) j->status = STATUS_CRYPTO_FAILED;
  if (napi_get_reference_value(env, j->callback, &cb) == napi_ok && napi_get_undefined(env, &undefined) == napi_ok &&
      napi_create_int32(env, j->status, &argv[0]) == napi_ok && napi_create_uint32(env, j->bad, &argv[1]) == napi_ok) {
    job_free(env, j);
    napi_call_function(env, undefined, cb, 2, argv, NULL);
    return;
  }
  job_free(env, j);
}

// sectorJob(kind, xtsKey, hmacKey, firstSector, ess, fd, position, data, out, leaves, callback(status, bad)):
//   XTS_READ  pread data.length bytes at position into data, decrypt in place;
//   XTS_WRITE encrypt data into out, pwrite out at position;
//   OPEN      leaves of data compared with leaves (expected), out[i] = 1 for a mismatch; decrypt in place if none;
//   SEAL      encrypt data into out, leaves of out into leaves;
//   READ_OPEN pread data.length bytes at position into data, then OPEN.
// firstSector counts 4096-byte sectors; data is whole 4096-byte sectors. Buffers must not be touched until the
// callback runs. Unused buffers may be empty.
static napi_value sector_job(napi_env env, napi_callback_info info) {
  napi_value argv[11];
  algorithms *algs = NULL;
  if (!get_args(env, info, 11, argv, &algs)) return NULL;
  uint32_t kind, ess, fd_u;
  uint64_t first;
  double position = 0;
  bytes xts_key, hmac_key, data, out, leaves;
  napi_valuetype cb_type;
  if (!get_u32(env, argv[0], "kind", &kind) || !get_bytes(env, argv[1], "xtsKey", &xts_key) || !get_bytes(env, argv[2], "hmacKey", &hmac_key) ||
      !get_u64(env, argv[3], "firstSector", &first) || !get_sector_size(env, argv[4], &ess) || !get_u32(env, argv[5], "fd", &fd_u) ||
      !get_bytes(env, argv[7], "data", &data) || !get_bytes(env, argv[8], "out", &out) || !get_bytes(env, argv[9], "leaves", &leaves)) {
    return NULL;
  }
  if (napi_get_value_double(env, argv[6], &position) != napi_ok || !(position >= 0 && position <= 9007199254740991.0) ||
      position != (double)(int64_t)position) {
    throw_range(env, "position must be a safe non-negative integer");
    return NULL;
  }
  if (napi_typeof(env, argv[10], &cb_type) != napi_ok || cb_type != napi_function) {
    throw_type(env, "callback must be a function");
    return NULL;
  }
  if (kind > JOB_READ_OPEN) {
    throw_range(env, "unknown job kind");
    return NULL;
  }
  if (ess > TREE_SECTOR) {
    throw_range(env, "encryption sector size must not exceed 4096");
    return NULL;
  }
  if (xts_key.length != XTS_KEY_BYTES || CRYPTO_memcmp(xts_key.data, xts_key.data + XTS_KEY_BYTES / 2, XTS_KEY_BYTES / 2) == 0) {
    throw_range(env, "xts key must be 64 bytes with differing halves");
    return NULL;
  }
  const bool hashes = kind == JOB_OPEN || kind == JOB_SEAL || kind == JOB_READ_OPEN;
  if (hashes && (hmac_key.length < MIN_HMAC_KEY || hmac_key.length > MAX_HMAC_KEY)) {
    throw_range(env, "integrity key must be 16..64 bytes");
    return NULL;
  }
  if (data.length == 0 || data.length % TREE_SECTOR != 0 || data.length > INT32_MAX) {
    throw_range(env, "data must be a positive whole number of 4096-byte sectors");
    return NULL;
  }
  const size_t sectors = data.length / TREE_SECTOR;
  if (first > (UINT64_MAX / (TREE_SECTOR / 512)) - sectors) {
    throw_range(env, "sector range is beyond the 64-bit IV range");
    return NULL;
  }
  if ((kind == JOB_XTS_WRITE || kind == JOB_SEAL) && (out.length < data.length || overlaps_partially(data.data, out.data, data.length))) {
    throw_range(env, "out must hold data.length bytes and not overlap data");
    return NULL;
  }
  if ((kind == JOB_OPEN || kind == JOB_READ_OPEN) && (out.length < sectors || leaves.length / HASH_BYTES < sectors)) {
    throw_range(env, "open needs one flag byte and one 32-byte expected leaf per sector");
    return NULL;
  }
  if (kind == JOB_SEAL && leaves.length / HASH_BYTES < sectors) {
    throw_range(env, "leaves is smaller than 32 bytes per sector");
    return NULL;
  }
  if ((kind == JOB_XTS_READ || kind == JOB_XTS_WRITE || kind == JOB_READ_OPEN) && fd_u > INT32_MAX) {
    throw_range(env, "fd is out of range");
    return NULL;
  }

  job *j = OPENSSL_zalloc(sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, NULL, "sector crypto: out of memory");
    return NULL;
  }
  j->algs = algs;
  j->kind = (int)kind;
  memcpy(j->xts_key, xts_key.data, XTS_KEY_BYTES);
  if (hashes) {
    memcpy(j->hmac_key, hmac_key.data, hmac_key.length);
    j->hmac_key_len = hmac_key.length;
  }
  j->first_sector = first;
  j->ess = ess;
  j->fd = (int)fd_u;
  j->position = (int64_t)position;
  j->data = data;
  j->out = out;
  j->leaves = leaves;
  napi_value name;
  if (napi_create_reference(env, argv[10], 1, &j->callback) != napi_ok || napi_create_reference(env, argv[7], 1, &j->data_ref) != napi_ok ||
      napi_create_reference(env, argv[8], 1, &j->out_ref) != napi_ok || napi_create_reference(env, argv[9], 1, &j->leaves_ref) != napi_ok ||
      napi_create_string_utf8(env, "vmseal:sectorJob", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, job_execute, job_complete, j, &j->work) != napi_ok || napi_queue_async_work(env, j->work) != napi_ok) {
    job_free(env, j);
    napi_throw_error(env, NULL, "sector crypto: cannot queue the job");
    return NULL;
  }
  return NULL;
}

static void free_algorithms(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  algorithms *algs = data;
  EVP_CIPHER_free(algs->xts);
  EVP_MAC_free(algs->hmac);
  OPENSSL_free(algs);
}

NAPI_MODULE_INIT() {
  algorithms *algs = OPENSSL_zalloc(sizeof *algs);
  if (algs == NULL) {
    napi_throw_error(env, NULL, "sector crypto: out of memory");
    return NULL;
  }
  algs->xts = EVP_CIPHER_fetch(NULL, "AES-256-XTS", NULL);
  algs->hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (algs->xts == NULL || algs->hmac == NULL) {
    free_algorithms(env, algs, NULL);
    napi_throw_error(env, NULL, "sector crypto: OpenSSL has no AES-256-XTS or HMAC");
    return NULL;
  }
  if (napi_set_instance_data(env, algs, free_algorithms, NULL) != napi_ok) {
    free_algorithms(env, algs, NULL);
    napi_throw_error(env, NULL, "sector crypto: cannot attach module state");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"xtsEncrypt", NULL, xts_encrypt, NULL, NULL, NULL, napi_enumerable, algs},
      {"xtsDecrypt", NULL, xts_decrypt, NULL, NULL, NULL, napi_enumerable, algs},
      {"hmacLeaves", NULL, hmac_leaves, NULL, NULL, NULL, napi_enumerable, algs},
      {"sectorJob", NULL, sector_job, NULL, NULL, NULL, napi_enumerable, algs},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
