/*
 * internal.h: private declarations shared by the core's translation units.
 * Nothing here is part of the cffi surface (see kmsenv_core.h for that).
 */
#ifndef KMSENV_INTERNAL_H
#define KMSENV_INTERNAL_H

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/modes.h>

#include "kmsenv_core.h"

/* C11's _Static_assert. MSVC documents it only under /std:c11, which the
 * wheel build does not pass (csrc/build_native.py gives cl /O2 alone); there a
 * negative array size fails the build instead. */
#if defined(_MSC_VER) && !defined(__clang__) && !(defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L)
#define KMSENV__SA_NAME2(line) kmsenv__static_assert_##line
#define KMSENV__SA_NAME(line) KMSENV__SA_NAME2(line)
#define KMSENV_STATIC_ASSERT(cond, msg) typedef char KMSENV__SA_NAME(__LINE__)[(cond) ? 1 : -1]
#else
#define KMSENV_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* Largest piece handed to a single EVP call, whose lengths are int. Kept a
 * multiple of 16 so CBC/CTR pieces stay block aligned (EVP then never buffers
 * and in == out stays legal). The test build shrinks it to drive the loops. */
#ifndef KMSENV_EVP_CHUNK
#define KMSENV_EVP_CHUNK ((size_t)1 << 30)
#endif
KMSENV_STATIC_ASSERT(KMSENV_EVP_CHUNK >= 16 && KMSENV_EVP_CHUNK % 16 == 0 &&
                         KMSENV_EVP_CHUNK <= (size_t)INT_MAX,
                     "KMSENV_EVP_CHUNK must be a positive multiple of 16 that fits an int");

/* NIST SP 800-38D limits; gcm128 enforces the same ones and would fail late. */
#define KMSENV_GCM_MAX_IN ((((uint64_t)1) << 36) - 32)
#define KMSENV_GCM_MAX_AAD ((((uint64_t)1) << 61) - 1)

/*
 * SM4 as a pair of function pointers so a faster kernel (GFNI/AVX-512) can
 * replace the EVP-backed ones without touching the GCM code. The functions
 * get this struct as their `key`. block128_f/ctr128_f cannot report errors,
 * so a failing kernel raises `failed` and the caller checks it afterwards.
 */
struct kmsenv__aes_kernel;
struct kmsenv_sm4;

/* A whole-GCM SM4 kernel (12-byte IV, 16-byte tag; lengths already checked
 * by the caller, in == out allowed). open writes the plaintext to out and
 * returns KMSENV_E_AUTH on a tag mismatch, leaving out for the caller to
 * wipe, as the gcm128 path does. */
typedef int (*kmsenv__sm4_gcm_seal_f)(const struct kmsenv_sm4 *s, const uint8_t iv[12],
                                      const uint8_t *aad, size_t aadlen, const uint8_t *in,
                                      size_t inlen, uint8_t *out, uint8_t tag[16]);
typedef int (*kmsenv__sm4_gcm_open_f)(const struct kmsenv_sm4 *s, const uint8_t iv[12],
                                      const uint8_t *aad, size_t aadlen, const uint8_t *in,
                                      size_t inlen, const uint8_t tag[16], uint8_t *out);

/* Rows of the GHASH power table (ghash512.h: H'^17..H'^1, then 3 zero rows). */
#define KMSENV_SM4_HPOW_ROWS 20

typedef struct kmsenv_sm4 {
    block128_f block;
    ctr128_f ctr32; /* increments only the low 32 bits of the counter block */
    /* The chosen kernel's whole-GCM functions, or NULL: gcm128 over ctr32. */
    kmsenv__sm4_gcm_seal_f gcm_seal;
    kmsenv__sm4_gcm_open_f gcm_open;
    EVP_CIPHER_CTX *ecb;
    EVP_CIPHER_CTX *ctr;
    int failed;
    uint32_t rk[32]; /* SIMD kernels' schedule (sm4_simd.c); unused by EVP */
    /* GHASH key powers of gcm_seal/gcm_open (zero otherwise); cleansed with rk */
    uint8_t hpow[KMSENV_SM4_HPOW_ROWS][16];
} kmsenv_sm4;

struct kmsenv_key {
    int cipher;
    size_t keylen;
    unsigned char raw[32]; /* legacy modes re-key a per-call context from it */
    /* AES: GCM contexts keyed once, only the IV changes per message. */
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    /* The AES-GCM kernel kernels.c chose and its per-key context; NULL: EVP. */
    const struct kmsenv__aes_kernel *aes_kernel;
    void *aes_simd;
    /* SM4: block/CTR kernels plus OpenSSL's generic GCM mode on top. */
    kmsenv_sm4 sm4;
    GCM128_CONTEXT *gcm;
    /* Legacy modes, created on first use. */
    EVP_CIPHER_CTX *legacy;
};

/* A buffer argument is invalid when it is NULL yet claims bytes. */
#define KMSENV_BAD_BUF(p, n) ((n) != 0 && (p) == NULL)

/* True when [a, a+n) and [b, b+n) overlap without being identical: EVP and
 * gcm128 only support exact in-place operation. */
static inline int kmsenv__partial_overlap(const void *a, const void *b, size_t n)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    if (n == 0 || x == y)
        return 0;
    return x < y ? y - x < n : x - y < n;
}

/* aead.c: AES-GCM EVP context for encrypt (0) or decrypt (1), keyed on first
 * use and kept in k; NULL on failure. stream_ctx and the gcm_stream final /
 * verify in frames.c rely on it having been created at kmsenv_gcm_stream_new. */
EVP_CIPHER_CTX *kmsenv__aes_evp(kmsenv_key *k, int decrypt);

/* sm4.c */
int kmsenv__sm4_init(kmsenv_sm4 *s, const unsigned char key[16]);
void kmsenv__sm4_cleanup(kmsenv_sm4 *s);
void kmsenv__sm4_block_evp(const unsigned char in[16], unsigned char out[16], const void *key);
void kmsenv__sm4_ctr32_evp(const unsigned char *in, unsigned char *out, size_t blocks,
                           const void *key, const unsigned char ivec[16]);
int kmsenv__sm4_gcm_seal(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                         const uint8_t *in, size_t inlen, uint8_t *out, uint8_t *tag);
int kmsenv__sm4_gcm_open(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                         const uint8_t *in, size_t inlen, const uint8_t *tag, uint8_t *out);

/* SIMD dispatch (issue 5). cpu.c: x86 capability bits, read once by
 * kmsenv_features(); KMSENV_DISABLE_SIMD=1 in the environment masks them.
 * The kernels need GCC/clang's __attribute__((target)), <cpuid.h> and inline
 * asm (mingw-w64 gcc has them); MSVC has none of these, so there (or with
 * -DKMSENV_NO_X86_SIMD) they are compiled out, kmsenv__cpu_simd_features()
 * reports 0 and every key takes the OpenSSL EVP paths. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(KMSENV_NO_X86_SIMD)
#define KMSENV_HAVE_X86_SIMD 1
#endif
uint32_t kmsenv__cpu_simd_features(void); /* KMSENV_FEATURE_* SIMD bits */
/* sm4_simd.c (only with KMSENV_HAVE_X86_SIMD; call only when the bit is set) */
void kmsenv__sm4_simd_setkey(uint32_t rk[32], const uint8_t key[16]);
void kmsenv__sm4_simd_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks);
void kmsenv__sm4_simd_block(const unsigned char in[16], unsigned char out[16], const void *key);
void kmsenv__sm4_simd_ctr32(const unsigned char *in, unsigned char *out, size_t blocks,
                            const void *key, const unsigned char ivec[16]);
void kmsenv__sm4_simd_ctr128(const uint32_t rk[32], const uint8_t iv[16], const uint8_t *in,
                             uint8_t *out, size_t len);
void kmsenv__sm4_simd_cbc_decrypt(const uint32_t rk[32], const uint8_t iv[16], const uint8_t *in,
                                  uint8_t *out, size_t len);
void kmsenv__sm4_simd_cbc_encrypt(const uint32_t rk[32], const uint8_t iv[16], const uint8_t *in,
                                  uint8_t *out, size_t len);
/* aes_gcm_vaes.c: AES-GCM on VAES + VPCLMULQDQ (ymm); NULL ctx = not used. */
typedef struct kmsenv_aes_vaes kmsenv_aes_vaes;
kmsenv_aes_vaes *kmsenv__aes_vaes_new(const uint8_t *key, size_t keylen);
void kmsenv__aes_vaes_free(kmsenv_aes_vaes *c);
int kmsenv__aes_vaes_seal(kmsenv_aes_vaes *c, const uint8_t iv[12], const uint8_t *aad,
                          size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                          uint8_t tag[16]);
int kmsenv__aes_vaes_open(kmsenv_aes_vaes *c, const uint8_t iv[12], const uint8_t *aad,
                          size_t aadlen, const uint8_t *in, size_t inlen, const uint8_t tag[16],
                          uint8_t *out);

/* aes_gcm_vaes512.c: AES-GCM on VAES + VPCLMULQDQ on zmm (AVX-512F/BW/VL).
 * Same contract as the ymm kernel above. */
typedef struct kmsenv_aes_vaes512 kmsenv_aes_vaes512;
kmsenv_aes_vaes512 *kmsenv__aes_vaes512_new(const uint8_t *key, size_t keylen);
void kmsenv__aes_vaes512_free(kmsenv_aes_vaes512 *c);
int kmsenv__aes_vaes512_seal(kmsenv_aes_vaes512 *c, const uint8_t iv[12], const uint8_t *aad,
                             size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                             uint8_t tag[16]);
int kmsenv__aes_vaes512_open(kmsenv_aes_vaes512 *c, const uint8_t iv[12], const uint8_t *aad,
                             size_t aadlen, const uint8_t *in, size_t inlen, const uint8_t tag[16],
                             uint8_t *out);

/* sm4_gfni.c: SM4 with GFNI, on zmm (AVX-512F/BW/VL/DQ + GFNI: "gfni512") and
 * on ymm with VEX encoding (AVX2 + GFNI, no AVX-512: "gfni256"). The round
 * keys are the standard 32-word schedule (same layout as sm4_simd.c), made
 * in constant time with the GFNI S-box. block/ctr32 get a kmsenv_sm4 as key
 * (they read its rk). Optional whole-GCM kernels (stitched SM4 + GHASH) use
 * a per-key context holding the hash powers. */
void kmsenv__sm4_gfni_setkey(uint32_t rk[32], const uint8_t key[16]); /* needs AVX2 + GFNI */
void kmsenv__sm4_gfni512_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks);
void kmsenv__sm4_gfni512_block(const unsigned char in[16], unsigned char out[16], const void *key);
void kmsenv__sm4_gfni512_ctr32(const unsigned char *in, unsigned char *out, size_t blocks,
                               const void *key, const unsigned char ivec[16]);
/* gfni512-vpclmul: SM4-GCM with gfni512's CTR and the zmm GHASH
 * (ghash512.h); needs KMSENV_FEATURE_SM4_GFNI and KMSENV_FEATURE_AES_VAES512
 * (the bit that carries AVX-512 + VPCLMULQDQ). gcm_init fills s->hpow from
 * s->rk (after setkey). */
void kmsenv__sm4_gfni512_gcm_init(struct kmsenv_sm4 *s);
int kmsenv__sm4_gfni512_gcm_seal(const struct kmsenv_sm4 *s, const uint8_t iv[12],
                                 const uint8_t *aad, size_t aadlen, const uint8_t *in,
                                 size_t inlen, uint8_t *out, uint8_t tag[16]);
int kmsenv__sm4_gfni512_gcm_open(const struct kmsenv_sm4 *s, const uint8_t iv[12],
                                 const uint8_t *aad, size_t aadlen, const uint8_t *in,
                                 size_t inlen, const uint8_t tag[16], uint8_t *out);
void kmsenv__sm4_gfni256_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks);
void kmsenv__sm4_gfni256_block(const unsigned char in[16], unsigned char out[16], const void *key);
void kmsenv__sm4_gfni256_ctr32(const unsigned char *in, unsigned char *out, size_t blocks,
                               const void *key, const unsigned char ivec[16]);

/* kernels.c: the run-time choice among the kernels above (issue 17).
 * One choice per family per process, made once (kmsenv_features()'s once):
 * candidates the CPU can run pass a known-answer test and a comparison with
 * OpenSSL on random input first; a failing kernel is disabled for the process.
 * KMSENV_AES_GCM_KERNEL / KMSENV_SM4_KERNEL force one by name (kmsenv_core.h). */
typedef struct kmsenv__aes_kernel {
    const char *name;
    uint32_t needs; /* KMSENV_FEATURE_* bits the CPU must have */
    void *(*ctx_new)(const uint8_t *key, size_t keylen);
    void (*ctx_free)(void *c);
    int (*seal)(void *c, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16]);
    int (*open)(void *c, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                const uint8_t *in, size_t inlen, const uint8_t tag[16], uint8_t *out);
} kmsenv__aes_kernel;

typedef struct kmsenv__sm4_kernel {
    const char *name;
    uint32_t needs;
    void (*setkey)(uint32_t rk[32], const uint8_t key[16]);
    block128_f block; /* key argument: the kmsenv_sm4 */
    ctr128_f ctr32;
    void (*ecb)(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks);
    /* Optional whole-GCM kernel (all three or none): gcm_init fills the
     * kmsenv_sm4's hpow after setkey; NULL: GCM is gcm128 over ctr32. */
    void (*gcm_init)(struct kmsenv_sm4 *s);
    kmsenv__sm4_gcm_seal_f gcm_seal;
    kmsenv__sm4_gcm_open_f gcm_open;
} kmsenv__sm4_kernel;

/* NULL = OpenSSL EVP. Valid once kmsenv_features() has run. */
const kmsenv__aes_kernel *kmsenv__aes_kernel_chosen(void);
const kmsenv__sm4_kernel *kmsenv__sm4_kernel_chosen(void);
void kmsenv__kernels_select(uint32_t cpu_features); /* from detect_features(), once */

/* core.c: a transparent-huge-page hint for an output of n >= this many
 * bytes about to be written in full (see there). */
#define KMSENV_HUGEPAGE_MIN ((size_t)8 << 20)
void kmsenv__hugepage_hint(void *p, size_t n);

/* core.c: kmsenv_wipe(p, n), then OPENSSL_free(p) (NULL is fine). */
void kmsenv__clear_free(void *p, size_t n);

/* batch.c: DER helpers (also used by message.c and the C tests). */
#define DER_INTEGER 0x02
#define DER_OCTET_STRING 0x04
#define DER_SEQUENCE 0x30
#define DER_SET 0x31
/* Inline: a 1 KiB message calls these a dozen times, and out of line each
 * call went through the PLT (the library's symbols are interposable). */
#define DER_MAX_LEN ((size_t)0xffffffffu)

/* Octets of a DER length field (short form included), or 0 if over 4 bytes. */
static inline size_t kmsenv__der_len_size(size_t n)
{
    if (n < 0x80)
        return 1;
    if (n <= 0xff)
        return 2;
    if (n <= 0xffff)
        return 3;
    if (n <= 0xffffff)
        return 4;
    if (n <= DER_MAX_LEN)
        return 5;
    return 0;
}

/* *acc += x unless that overflows (then 0 and *acc unchanged). */
static inline int kmsenv__add_ok(size_t *acc, size_t x)
{
    if (x > SIZE_MAX - *acc)
        return 0;
    *acc += x;
    return 1;
}

/* Size of a TLV with `content` value bytes; 0 if it cannot be encoded. */
static inline size_t kmsenv__tlv_size(size_t content)
{
    size_t lenlen = kmsenv__der_len_size(content), total = 1;
    if (lenlen == 0 || !kmsenv__add_ok(&total, lenlen) || !kmsenv__add_ok(&total, content))
        return 0;
    return total;
}

/* Writes the DER length of n (n within DER_MAX_LEN) at p; returns the end. */
static inline uint8_t *kmsenv__der_put_len(uint8_t *p, size_t n)
{
    size_t size = kmsenv__der_len_size(n), i;
    if (size == 1) {
        *p++ = (uint8_t)n;
        return p;
    }
    *p++ = (uint8_t)(0x80 | (size - 1));
    for (i = size - 1; i > 0; i--)
        *p++ = (uint8_t)(n >> (8 * (i - 1)));
    return p;
}
/* Reads tag + strict DER length at *off (indefinite, non-minimal and > 4
 * length octets rejected); on success *len value bytes lie inside [*off, end). */
int kmsenv__der_header(const uint8_t *m, size_t end, size_t *off, uint8_t tag, size_t *len);
/* Writes one complete message (header TLV given, body sealed under iv) at out,
 * which has room for kmsenv_message_size(headerlen, ptlen) bytes; *written
 * receives that size. iv may point into out (it is copied first). */
int kmsenv__der_write_message(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                              const uint8_t *aad, size_t aadlen, const uint8_t *iv,
                              const uint8_t *in, size_t ptlen, uint8_t *out, size_t *written);
/* The body fields of message m[0..mlen) whose Header TLV must equal header;
 * 0 unless strictly DER, IV of 12 and tag of 16, nothing trailing. */
typedef struct {
    const uint8_t *iv, *ct, *tag;
    size_t ctlen;
} kmsenv__der_parsed;
int kmsenv__der_parse_message(const uint8_t *m, size_t mlen, const uint8_t *header,
                              size_t headerlen, kmsenv__der_parsed *out);

/* arrow.c: Arrow variable-size binary views (see kmsenv_binview). */
int kmsenv__binview_check(const kmsenv_binview *v);
static inline int64_t kmsenv__binview_off(const kmsenv_binview *v, size_t i)
{
    if (v->offset_width == 4) {
        int32_t x;
        memcpy(&x, (const uint8_t *)v->offsets + 4 * i, 4);
        return x;
    } else {
        int64_t x;
        memcpy(&x, (const uint8_t *)v->offsets + 8 * i, 8);
        return x;
    }
}
static inline int kmsenv__binview_valid(const kmsenv_binview *v, size_t i)
{
    size_t bit;
    if (v->validity == NULL)
        return 1;
    bit = v->validity_offset + i;
    return (v->validity[bit >> 3] >> (bit & 7)) & 1;
}
/* Random IVs drawn from the CSPRNG in blocks of KMSENV_IVPOOL_BLOCK, for
 * batches whose caller did not pass IVs. Zero-initialise; wipe when done. */
#define KMSENV_IVPOOL_BLOCK 1024
typedef struct {
    uint8_t buf[KMSENV_IVPOOL_BLOCK * KMSENV_GCM_IV_LEN];
    size_t pooled, used;
} kmsenv__ivpool;
/* The next unused IV; `left` (>= 1) bounds how many the batch still needs, so
 * no more are drawn than used. NULL when the CSPRNG fails. */
const uint8_t *kmsenv__ivpool_next(kmsenv__ivpool *p, size_t left);

/* Stores out offset i = pos; 0 when pos does not fit the offset width. */
int kmsenv__binout_put(kmsenv_binout *o, size_t i, size_t pos);
size_t kmsenv__binout_get(const kmsenv_binout *o, size_t i);

#endif
