// Batch sector crypto for the sealed disk: AES-256-XTS and the integrity tree's keyed BLAKE3 leaves over many
// sectors per call, so the per-call cost of Node's crypto API is paid once per batch instead of once per sector.
//
// OpenSSL is Node's own (headers from the Node install, symbols exported by the node binary): nothing is
// linked in, and the addon uses exactly the library Node's crypto module uses. BLAKE3 is the official C
// implementation as Debian ships it (librust-blake3-dev, compiled in by binding.gyp), since OpenSSL has none.
//
// Every argument comes from JavaScript and is checked before any byte is touched; a bad one throws a
// TypeError/RangeError, never aborts the process.
// preadv2 and RWF_NOWAIT (xtsReadCached) are GNU extensions.
#define _GNU_SOURCE
// blake3_impl.h: the library's internal SIMD kernels, for the batched leaves (leaf_batch).
#include <blake3_impl.h>
#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <immintrin.h>

#define XTS_KEY_BYTES 64
#define XTS_IV_BYTES 16
#define MIN_SECTOR 512
#define MAX_SECTOR 65536
#define HASH_BYTES BLAKE3_OUT_LEN
#define INTEGRITY_KEY_BYTES BLAKE3_KEY_LEN
#define LEAF_SUFFIX 12
#define MAX_HASH_PARTS 8

// Fetched once per Node environment (main thread or worker): an implicit fetch on every init would take
// OpenSSL's method-store lock once per batch.
typedef struct {
  EVP_CIPHER *xts;
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

// ---- AES-256-XTS with VAES (AVX-512) -----------------------------------------------------------------------
// OpenSSL 3.0 (Node 20's) does XTS with 128-bit AES-NI, one block per instruction, and re-initialises its context
// for every sector. Where the CPU has VAES, AVX-512 and VPCLMULQDQ, this does four blocks per instruction and
// sixteen in flight: decryption was a third of the XTS export's CPU at sequential reads, a pread copy and a
// socket copy being most of the rest. Same result as OpenSSL's (IEEE 1619 XTS, no ciphertext stealing: sectors
// are whole blocks); test/crypto/native.test.ts and the job tests compare with XtsCipher (node:crypto).
#define VAES_TARGET __attribute__((target("aes,avx512f,avx512bw,vaes,vpclmulqdq")))
// VMSEAL_NO_VAES (any value) keeps OpenSSL's path, so that a test can compare the two on one machine.
static bool have_vaes;

static VAES_TARGET __m128i key_mix(__m128i k) {
  // k ^ k<<32 ^ k<<64 ^ k<<96: the running XOR of the previous round key's words.
  __m128i t = _mm_slli_si128(k, 4);
  k = _mm_xor_si128(k, t);
  t = _mm_slli_si128(t, 4);
  k = _mm_xor_si128(k, t);
  t = _mm_slli_si128(t, 4);
  return _mm_xor_si128(k, t);
}

// FIPS 197 AES-256 key expansion: 15 round keys.
#define KEY_PAIR(i, rcon)                                                                                          \
  rk[i] = _mm_xor_si128(key_mix(rk[i - 2]), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], rcon), 0xff)); \
  if (i + 1 < 15) rk[i + 1] = _mm_xor_si128(key_mix(rk[i - 1]), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i], 0), 0xaa));
static VAES_TARGET void aes256_expand(const uint8_t key[32], __m128i rk[15]) {
  rk[0] = _mm_loadu_si128((const __m128i *)key);
  rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
  KEY_PAIR(2, 0x01) KEY_PAIR(4, 0x02) KEY_PAIR(6, 0x04) KEY_PAIR(8, 0x08) KEY_PAIR(10, 0x10) KEY_PAIR(12, 0x20) KEY_PAIR(14, 0x40)
}
#undef KEY_PAIR

// Each 128-bit lane times x^k in GF(2^128) (XTS's little-endian convention, reduction by x^128 = x^7+x^2+x+1),
// for 1 <= k <= 48: the k bits shifted out of the top, carry-less times 0x87, fit in the low word.
static VAES_TARGET __m512i xts_mul_xk(__m512i t, int k) {
  const __m128i left = _mm_cvtsi32_si128(k), right = _mm_cvtsi32_si128(64 - k);
  const __m512i out = _mm512_srl_epi64(t, right);                    // each word's top k bits
  const __m512i swapped = _mm512_shuffle_epi32(out, _MM_PERM_BADC);  // low word <- high's, high word <- low's
  const __m512i high_words = _mm512_set_epi64(-1, 0, -1, 0, -1, 0, -1, 0);
  const __m512i reduced = _mm512_clmulepi64_epi128(swapped, _mm512_set1_epi64(0x87), 0x00);
  return _mm512_xor_si512(_mm512_xor_si512(_mm512_sll_epi64(t, left), reduced), _mm512_and_si512(swapped, high_words));
}

static inline void xts_double(uint64_t *lo, uint64_t *hi) {
  const uint64_t carry = *hi >> 63;
  *hi = (*hi << 1) | (*lo >> 63);
  *lo = (*lo << 1) ^ (carry * 0x87);
}

// XTS over len bytes of whole sector_size sectors (a multiple of 256 bytes); sector s gets the tweak
// first_iv + s * iv_step. in and out may be the same memory.
static VAES_TARGET void xts_vaes(const uint8_t key[XTS_KEY_BYTES], uint64_t first_iv, uint32_t iv_step, uint32_t sector_size, const uint8_t *in,
                                 uint8_t *out, size_t len, int enc) {
  __m128i rk[15], tk[15];
  aes256_expand(key, rk);
  aes256_expand(key + 32, tk);
  __m512i k[15];
  for (int r = 0; r < 15; r++) {
    // Decryption uses the equivalent inverse cipher: reversed keys, InvMixColumns on the middle ones.
    const __m128i rkey = enc ? rk[r] : (r == 0 || r == 14) ? rk[14 - r] : _mm_aesimc_si128(rk[14 - r]);
    k[r] = _mm512_broadcast_i32x4(rkey);
  }
  uint64_t tweak = first_iv;
  for (size_t at = 0; at < len; at += sector_size, tweak += iv_step) {
    __m128i t = _mm_xor_si128(_mm_set_epi64x(0, (long long)tweak), tk[0]);
    for (int r = 1; r < 14; r++) t = _mm_aesenc_si128(t, tk[r]);
    t = _mm_aesenclast_si128(t, tk[14]);
    uint64_t lanes[8];
    _mm_storeu_si128((__m128i *)lanes, t);
    for (int b = 1; b < 4; b++) {
      lanes[2 * b] = lanes[2 * b - 2];
      lanes[2 * b + 1] = lanes[2 * b - 1];
      xts_double(&lanes[2 * b], &lanes[2 * b + 1]);
    }
    __m512i tw = _mm512_loadu_si512(lanes);
    for (size_t off = 0; off < sector_size; off += 256) {
      const uint8_t *src = in + at + off;
      uint8_t *dst = out + at + off;
      const __m512i w0 = tw, w1 = xts_mul_xk(tw, 4), w2 = xts_mul_xk(tw, 8), w3 = xts_mul_xk(tw, 12);
      tw = xts_mul_xk(tw, 16);
      __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(src), w0), x1 = _mm512_xor_si512(_mm512_loadu_si512(src + 64), w1),
              x2 = _mm512_xor_si512(_mm512_loadu_si512(src + 128), w2), x3 = _mm512_xor_si512(_mm512_loadu_si512(src + 192), w3);
      x0 = _mm512_xor_si512(x0, k[0]);
      x1 = _mm512_xor_si512(x1, k[0]);
      x2 = _mm512_xor_si512(x2, k[0]);
      x3 = _mm512_xor_si512(x3, k[0]);
      if (enc) {
        for (int r = 1; r < 14; r++) {
          x0 = _mm512_aesenc_epi128(x0, k[r]);
          x1 = _mm512_aesenc_epi128(x1, k[r]);
          x2 = _mm512_aesenc_epi128(x2, k[r]);
          x3 = _mm512_aesenc_epi128(x3, k[r]);
        }
        x0 = _mm512_aesenclast_epi128(x0, k[14]);
        x1 = _mm512_aesenclast_epi128(x1, k[14]);
        x2 = _mm512_aesenclast_epi128(x2, k[14]);
        x3 = _mm512_aesenclast_epi128(x3, k[14]);
      } else {
        for (int r = 1; r < 14; r++) {
          x0 = _mm512_aesdec_epi128(x0, k[r]);
          x1 = _mm512_aesdec_epi128(x1, k[r]);
          x2 = _mm512_aesdec_epi128(x2, k[r]);
          x3 = _mm512_aesdec_epi128(x3, k[r]);
        }
        x0 = _mm512_aesdeclast_epi128(x0, k[14]);
        x1 = _mm512_aesdeclast_epi128(x1, k[14]);
        x2 = _mm512_aesdeclast_epi128(x2, k[14]);
        x3 = _mm512_aesdeclast_epi128(x3, k[14]);
      }
      _mm512_storeu_si512(dst, _mm512_xor_si512(x0, w0));
      _mm512_storeu_si512(dst + 64, _mm512_xor_si512(x1, w1));
      _mm512_storeu_si512(dst + 128, _mm512_xor_si512(x2, w2));
      _mm512_storeu_si512(dst + 192, _mm512_xor_si512(x3, w3));
    }
    OPENSSL_cleanse(lanes, sizeof lanes);
  }
  OPENSSL_cleanse(rk, sizeof rk);
  OPENSSL_cleanse(tk, sizeof tk);
  OPENSSL_cleanse(k, sizeof k);
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

  if (have_vaes) {
    xts_vaes(key.data, first_iv, iv_step, sector_size, data.data, out.data, data.length, enc);
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

// ---- The integrity tree's hash: keyed BLAKE3 ---------------------------------------------------------------

#define TREE_SECTOR 4096

// Leaves of `sectors` consecutive 4096-byte sectors numbered from `first`:
//   leaf_n = BLAKE3-keyed(key, sector_n || "leaf" || u64le(n)),
// into out[32i..]; or, with `expected`, compared with expected[32i..] instead, flags[i] = 1 for a mismatch,
// counted in *bad. The sector comes first so that its 4096 bytes are four whole BLAKE3 chunks; a 12-byte prefix
// shifts every chunk boundary and cost 60% of the speed here (0.87 against 2.2 GB/s per core).
//
// blake3_hasher would hash one message's four chunks four-wide. Here LEAF_BATCH messages go through BLAKE3's
// SIMD kernel (blake3_hash_many, from the library's blake3_impl.h) together: chunk c of every message at once
// (all have chunk counter c), then their parent nodes, which is 16-wide with AVX-512 and nearly doubles the
// rate (1.85 -> 3.4 GB/s per core, measured). The 4108-byte message is five chunks, so by BLAKE3's tree rule
// its root is parent(parent(parent(c0, c1), parent(c2, c3)), c4), where c4 is the 12-byte suffix chunk. The
// result is plain keyed BLAKE3 of the message, tested against b3sum.
#define LEAF_BATCH 16
static void leaf_batch(const uint32_t key_words[8], uint64_t first, const uint8_t *data, size_t n, uint8_t *out) {
  const uint8_t *inputs[2 * LEAF_BATCH];
  uint8_t chunk_cvs[4][LEAF_BATCH * HASH_BYTES];
  uint8_t blocks[2 * LEAF_BATCH][BLAKE3_BLOCK_LEN];
  uint8_t parents[2 * LEAF_BATCH * HASH_BYTES];
  for (uint8_t c = 0; c < 4; c++) {
    for (size_t s = 0; s < n; s++) inputs[s] = data + s * TREE_SECTOR + (size_t)c * BLAKE3_CHUNK_LEN;
    blake3_hash_many(inputs, n, BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN, key_words, c, false, KEYED_HASH, CHUNK_START, CHUNK_END, chunk_cvs[c]);
  }
  // parent(c0, c1) for every message, then parent(c2, c3), in one call.
  for (size_t s = 0; s < n; s++) {
    memcpy(blocks[s], chunk_cvs[0] + s * HASH_BYTES, HASH_BYTES);
    memcpy(blocks[s] + HASH_BYTES, chunk_cvs[1] + s * HASH_BYTES, HASH_BYTES);
    memcpy(blocks[n + s], chunk_cvs[2] + s * HASH_BYTES, HASH_BYTES);
    memcpy(blocks[n + s] + HASH_BYTES, chunk_cvs[3] + s * HASH_BYTES, HASH_BYTES);
    inputs[s] = blocks[s];
    inputs[n + s] = blocks[n + s];
  }
  blake3_hash_many(inputs, 2 * n, 1, key_words, 0, false, KEYED_HASH | PARENT, 0, 0, parents);
  for (size_t s = 0; s < n; s++) {
    memcpy(blocks[s], parents + s * HASH_BYTES, HASH_BYTES);
    memcpy(blocks[s] + HASH_BYTES, parents + (n + s) * HASH_BYTES, HASH_BYTES);
  }
  blake3_hash_many(inputs, n, 1, key_words, 0, false, KEYED_HASH | PARENT, 0, 0, parents);
  // The suffix chunk (one 12-byte block, chunk counter 4), then the root: parent(left four chunks, suffix chunk).
  for (size_t s = 0; s < n; s++) {
    uint8_t suffix[BLAKE3_BLOCK_LEN] = {'l', 'e', 'a', 'f'};
    const uint64_t index = first + s;
    for (int b = 0; b < 8; b++) suffix[4 + b] = (uint8_t)(index >> (8 * b));
    uint32_t cv[8];
    memcpy(cv, key_words, sizeof cv);
    blake3_compress_in_place(cv, suffix, LEAF_SUFFIX, 4, KEYED_HASH | CHUNK_START | CHUNK_END);
    memcpy(blocks[s], parents + s * HASH_BYTES, HASH_BYTES);
    for (int w = 0; w < 8; w++) store32(blocks[s] + HASH_BYTES + 4 * w, cv[w]);
  }
  blake3_hash_many(inputs, n, 1, key_words, 0, false, KEYED_HASH | PARENT | ROOT, 0, 0, out);
}

static void leaves_of(const uint8_t key[INTEGRITY_KEY_BYTES], uint64_t first, const uint8_t *data, size_t sectors, uint8_t *out,
                      const uint8_t *expected, uint8_t *flags, uint32_t *bad) {
  uint32_t key_words[8];
  load_key_words(key, key_words);
  uint8_t leaves[LEAF_BATCH * HASH_BYTES];
  for (size_t at = 0; at < sectors; at += LEAF_BATCH) {
    const size_t n = sectors - at < LEAF_BATCH ? sectors - at : LEAF_BATCH;
    uint8_t *dst = expected ? leaves : out + at * HASH_BYTES;
    leaf_batch(key_words, first + at, data + at * TREE_SECTOR, n, dst);
    for (size_t i = 0; expected && i < n; i++) {
      flags[at + i] = CRYPTO_memcmp(leaves + i * HASH_BYTES, expected + (at + i) * HASH_BYTES, HASH_BYTES) != 0;
      *bad += flags[at + i];
    }
  }
  OPENSSL_cleanse(key_words, sizeof key_words);
}

static bool get_integrity_key(napi_env env, napi_value v, bytes *key) {
  if (!get_bytes(env, v, "integrity key", key)) return false;
  if (key->length != INTEGRITY_KEY_BYTES) {
    throw_range(env, "integrity key must be 32 bytes (a BLAKE3 key)");
    return false;
  }
  return true;
}

// treeLeaves(key, firstSector: bigint, data, outLeaves): the leaves of data's 4096-byte sectors, the first one
// numbered firstSector, written to outLeaves[32i..].
static napi_value tree_leaves(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  algorithms *algs = NULL;
  if (!get_args(env, info, 4, argv, &algs)) return NULL;
  bytes key, data, out;
  uint64_t first;
  if (!get_integrity_key(env, argv[0], &key) || !get_u64(env, argv[1], "firstSector", &first) || !get_bytes(env, argv[2], "data", &data) ||
      !get_bytes(env, argv[3], "outLeaves", &out)) {
    return NULL;
  }
  if (data.length % TREE_SECTOR != 0) {
    throw_range(env, "data length is not a multiple of 4096");
    return NULL;
  }
  const size_t sectors = data.length / TREE_SECTOR;
  if (out.length / HASH_BYTES < sectors) {
    throw_range(env, "outLeaves is smaller than 32 bytes per sector");
    return NULL;
  }
  if (sectors == 0) return NULL;
  if ((uint64_t)(sectors - 1) > UINT64_MAX - first) {
    throw_range(env, "sector range is beyond 2^64");
    return NULL;
  }
  leaves_of(key.data, first, data.data, sectors, out.data, NULL, NULL, NULL);
  return NULL;
}

// blake3Keyed(key, out, ...parts): out (32 bytes) = BLAKE3-keyed(key, parts[0] || parts[1] || ...), for the tree's
// nodes and root, which node:crypto cannot hash. At most MAX_HASH_PARTS parts.
static napi_value blake3_keyed(napi_env env, napi_callback_info info) {
  napi_value argv[2 + MAX_HASH_PARTS + 1];
  size_t argc = sizeof argv / sizeof argv[0];  // one more than allowed, to notice too many
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2 || argc > 2 + MAX_HASH_PARTS) {
    throw_type(env, "blake3Keyed takes a key, an output and up to 8 parts");
    return NULL;
  }
  bytes key, out, parts[MAX_HASH_PARTS];
  if (!get_integrity_key(env, argv[0], &key) || !get_bytes(env, argv[1], "out", &out)) return NULL;
  if (out.length != HASH_BYTES) {
    throw_range(env, "out must be 32 bytes");
    return NULL;
  }
  for (size_t i = 2; i < argc; i++) {
    if (!get_bytes(env, argv[i], "part", &parts[i - 2])) return NULL;
  }
  blake3_hasher h;
  blake3_hasher_init_keyed(&h, key.data);
  for (size_t i = 2; i < argc; i++) blake3_hasher_update(&h, parts[i - 2].data, parts[i - 2].length);
  blake3_hasher_finalize(&h, out.data, HASH_BYTES);
  OPENSSL_cleanse(&h, sizeof h);
  return NULL;
}

// ---- Whole requests on libuv's thread pool ----------------------------------------------------------------
// One job per NBD request: the disk I/O (pread/pwrite) and the crypto run together on a pool thread, directly
// on the caller's buffers (held by references until the callback), so the main thread neither copies nor
// computes, and both cores work when several requests are in flight.

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
  uint8_t integrity_key[INTEGRITY_KEY_BYTES];
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
  if (have_vaes) {
    xts_vaes(key, first * (TREE_SECTOR / 512), ess / 512, ess, in, out, len, enc);
    return true;
  }
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
      leaves_of(j->integrity_key, j->first_sector, j->data.data, j->data.length / TREE_SECTOR, NULL, j->leaves.data, j->out.data, &j->bad);
      if (j->bad == 0 && !xts_sectors(a, j->xts_key, j->first_sector, j->ess, j->data.data, j->data.data, j->data.length, 0)) {
        j->status = STATUS_CRYPTO_FAILED;
      }
      break;
    case JOB_SEAL:
      if (!xts_sectors(a, j->xts_key, j->first_sector, j->ess, j->data.data, j->out.data, j->data.length, 1)) j->status = STATUS_CRYPTO_FAILED;
      else leaves_of(j->integrity_key, j->first_sector, j->out.data, j->data.length / TREE_SECTOR, j->leaves.data, NULL, NULL, NULL);
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
  OPENSSL_cleanse(j->integrity_key, sizeof j->integrity_key);
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

// sectorJob(kind, xtsKey, integrityKey, firstSector, ess, fd, position, data, out, leaves, callback(status, bad)):
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
  bytes xts_key, integrity_key, data, out, leaves;
  napi_valuetype cb_type;
  if (!get_u32(env, argv[0], "kind", &kind) || !get_bytes(env, argv[1], "xtsKey", &xts_key) || !get_bytes(env, argv[2], "integrityKey", &integrity_key) ||
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
  if (hashes && integrity_key.length != INTEGRITY_KEY_BYTES) {
    throw_range(env, "integrity key must be 32 bytes (a BLAKE3 key)");
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
  if (hashes) memcpy(j->integrity_key, integrity_key.data, INTEGRITY_KEY_BYTES);
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

// A safe non-negative integer passed as a JS number.
static bool get_safe_uint(napi_env env, napi_value v, const char *name, int64_t *out) {
  double d = 0;
  char msg[96];
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) {
    snprintf(msg, sizeof msg, "%s must be a safe non-negative integer", name);
    throw_range(env, msg);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

// The arguments xtsReadCached and xtsWriteNow share: (xtsKey, ess, fd, position, firstSector: number, data).
typedef struct {
  bytes key, data;
  uint32_t ess;
  int fd;
  int64_t position, first;
} inline_args;

static bool get_inline_args(napi_env env, napi_value *argv, inline_args *a) {
  uint32_t fd_u;
  if (!get_bytes(env, argv[0], "xtsKey", &a->key) || !get_sector_size(env, argv[1], &a->ess) || !get_u32(env, argv[2], "fd", &fd_u) ||
      !get_safe_uint(env, argv[3], "position", &a->position) || !get_safe_uint(env, argv[4], "firstSector", &a->first) ||
      !get_bytes(env, argv[5], "data", &a->data)) {
    return false;
  }
  if (a->ess > TREE_SECTOR) {
    throw_range(env, "encryption sector size must not exceed 4096");
    return false;
  }
  if (a->key.length != XTS_KEY_BYTES || CRYPTO_memcmp(a->key.data, a->key.data + XTS_KEY_BYTES / 2, XTS_KEY_BYTES / 2) == 0) {
    throw_range(env, "xts key must be 64 bytes with differing halves");
    return false;
  }
  if (a->data.length == 0 || a->data.length % TREE_SECTOR != 0 || a->data.length > INT32_MAX) {
    throw_range(env, "data must be a positive whole number of 4096-byte sectors");
    return false;
  }
  // firstSector < 2^53, so the 512-byte tweak count stays far below 2^64.
  if (fd_u > INT32_MAX) {
    throw_range(env, "fd is out of range");
    return false;
  }
  a->fd = (int)fd_u;
  return true;
}

static napi_value int32_result(napi_env env, int status) {
  napi_value result;
  if (napi_create_int32(env, status, &result) != napi_ok) return NULL;
  return result;
}

// xtsReadCached(xtsKey, ess, fd, position, firstSector: number, data) -> 0 | errno: the XTS_READ job done right
// here on the calling thread, but only if the disk need not be waited for: preadv2(RWF_NOWAIT) takes the bytes
// from the page cache or fails with EAGAIN. 0 means data holds the plaintext; anything else (EAGAIN: not all
// cached, EOPNOTSUPP: the file system cannot tell, or a real error) promises nothing about data, and the caller
// runs the job, which reports errors. A small read costs less CPU done here than its thread-pool round trip
// (queue lock, futex wake of a pool thread, eventfd wake of the loop, the context switches between them).
static napi_value xts_read_cached(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  algorithms *algs = NULL;
  inline_args a;
  if (!get_args(env, info, 6, argv, &algs) || !get_inline_args(env, argv, &a)) return NULL;
  int status = 0;
  for (size_t done = 0; status == 0 && done < a.data.length;) {
    struct iovec iov = {a.data.data + done, a.data.length - done};
    ssize_t n = preadv2(a.fd, &iov, 1, (off_t)(a.position + (int64_t)done), RWF_NOWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = errno;
    else if (n == 0) status = EIO;  // end of file: the job says so properly
    else done += (size_t)n;
  }
  if (status == 0 && !xts_sectors(algs, a.key.data, (uint64_t)a.first, a.ess, a.data.data, a.data.data, a.data.length, 0)) status = EIO;
  return int32_result(env, status);
}

// xtsWriteNow(xtsKey, ess, fd, position, firstSector: number, plain, scratch) -> 0 | errno | -1: the XTS_WRITE
// job done right here on the calling thread: encrypt plain into scratch, pwrite scratch at position. A buffered
// pwrite of a few sectors only copies into the page cache (RWF_NOWAIT cannot promise even that: ext4 refuses it
// for buffered writes), and costs less CPU than the thread-pool round trip. -1: OpenSSL failed.
static napi_value xts_write_now(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  algorithms *algs = NULL;
  inline_args a;
  bytes scratch;
  if (!get_args(env, info, 7, argv, &algs) || !get_inline_args(env, argv, &a) || !get_bytes(env, argv[6], "scratch", &scratch)) return NULL;
  if (scratch.length < a.data.length || overlaps_partially(a.data.data, scratch.data, a.data.length) || scratch.data == a.data.data) {
    throw_range(env, "scratch must hold data.length bytes and not overlap data");
    return NULL;
  }
  if (!xts_sectors(algs, a.key.data, (uint64_t)a.first, a.ess, a.data.data, scratch.data, a.data.length, 1)) return int32_result(env, STATUS_CRYPTO_FAILED);
  return int32_result(env, pwrite_fully(a.fd, scratch.data, a.data.length, a.position));
}

static void free_algorithms(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  algorithms *algs = data;
  EVP_CIPHER_free(algs->xts);
  OPENSSL_free(algs);
}

NAPI_MODULE_INIT() {
  algorithms *algs = OPENSSL_zalloc(sizeof *algs);
  if (algs == NULL) {
    napi_throw_error(env, NULL, "sector crypto: out of memory");
    return NULL;
  }
  algs->xts = EVP_CIPHER_fetch(NULL, "AES-256-XTS", NULL);
  have_vaes = __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("vpclmulqdq") && getenv("VMSEAL_NO_VAES") == NULL;
  if (algs->xts == NULL) {
    free_algorithms(env, algs, NULL);
    napi_throw_error(env, NULL, "sector crypto: OpenSSL has no AES-256-XTS");
    return NULL;
  }
  // BLAKE3 detects the CPU's SIMD level on first use and caches it in an unsynchronised global: detect it here,
  // on the loading thread, before pool threads hash concurrently.
  {
    uint8_t zero[TREE_SECTOR] = {0}, leaf[HASH_BYTES];
    leaves_of(zero, 0, zero, 1, leaf, NULL, NULL, NULL);
  }
  if (napi_set_instance_data(env, algs, free_algorithms, NULL) != napi_ok) {
    free_algorithms(env, algs, NULL);
    napi_throw_error(env, NULL, "sector crypto: cannot attach module state");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"xtsEncrypt", NULL, xts_encrypt, NULL, NULL, NULL, napi_enumerable, algs},
      {"xtsDecrypt", NULL, xts_decrypt, NULL, NULL, NULL, napi_enumerable, algs},
      {"treeLeaves", NULL, tree_leaves, NULL, NULL, NULL, napi_enumerable, algs},
      {"blake3Keyed", NULL, blake3_keyed, NULL, NULL, NULL, napi_enumerable, algs},
      {"sectorJob", NULL, sector_job, NULL, NULL, NULL, napi_enumerable, algs},
      {"xtsReadCached", NULL, xts_read_cached, NULL, NULL, NULL, napi_enumerable, algs},
      {"xtsWriteNow", NULL, xts_write_now, NULL, NULL, NULL, napi_enumerable, algs},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
