/*
 * kernels.c: which AES-GCM and SM4 kernel this process uses, and why.
 *
 * Why one place: the CPUs kmsenv runs on differ (Zen 3: VAES on ymm, no
 * AVX-512 or GFNI; Zen 4 and Intel Xeon: AVX-512 and GFNI), and so does the
 * linked OpenSSL (3.0's AES-GCM is xmm only; 3.5 and later have their own
 * AVX-512 kernel). The choice is made once per process, from
 * kmsenv_features()'s run-once, and every key created afterwards uses it.
 *
 * How a kernel gets chosen:
 *   1. The CPU must have its instructions (cpu.c; KMSENV_DISABLE_SIMD=1
 *      clears them all, leaving OpenSSL).
 *   2. It must pass a self-test: a known answer (computed with an
 *      independent implementation, the `cryptography` package) and a
 *      comparison with OpenSSL on one random input, open included (round
 *      trip, a flipped tag refused). A kernel that fails is disabled for the
 *      process and kmsenv_kernel_warning() says so (Python turns it into a
 *      RuntimeWarning); it never produces a byte the caller sees.
 *   3. AES-GCM: the survivors and OpenSSL are timed sealing 64 KiB (a few
 *      interleaved rounds, best of each), and the fastest wins: on a new
 *      OpenSSL with its own AVX-512 code, OpenSSL may be the answer.
 *      SM4: the first survivor in the order gfni512-vpclmul (gfni512 with
 *      its own zmm GHASH for SM4-GCM), gfni512, gfni256, aesni-avx2;
 *      OpenSSL's SM4 is table based (slow, and not constant time), so any
 *      kernel that passes beats it.
 *   KMSENV_AES_GCM_KERNEL / KMSENV_SM4_KERNEL = a name (or "auto") force a
 *   choice for tests and users; a name the CPU cannot run, or one that fails
 *   its self-test, falls back to the automatic choice with a warning.
 *   KMSENV_KERNEL_SELFTEST_FAULT = names (comma separated) flips one bit of
 *   those kernels' self-test output, so the fallback can be tested; it can
 *   only ever disable a kernel.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200112L /* clock_gettime under -std=c11 */
#endif
#include <stdio.h>
#include <stdlib.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#if defined(_WIN32)
#include <windows.h>
#else
#include <time.h>
#endif

#include "internal.h"

#define REPORT_LEN 512

typedef struct {
    const char *name;   /* "evp" when no kernel */
    char reason[REPORT_LEN];
    char warning[REPORT_LEN];
} family_report;

/* Written once under kmsenv_features()'s run-once, read-only afterwards. */
static const kmsenv__aes_kernel *aes_chosen;
static const kmsenv__sm4_kernel *sm4_chosen;
static family_report reports[2] = {{"evp", "", ""}, {"evp", "", ""}};

static void append(char *buf, const char *fmt, const char *a, const char *b)
{
    size_t used = strlen(buf);
    if (used + 1 < REPORT_LEN)
        snprintf(buf + used, REPORT_LEN - used, fmt, a, b);
}

#if defined(KMSENV_HAVE_X86_SIMD)

static int name_listed(const char *list, const char *name)
{
    size_t n = strlen(name);
    const char *p = list;
    if (list == NULL)
        return 0;
    while ((p = strstr(p, name)) != NULL) {
        int starts = p == list || p[-1] == ',' || p[-1] == ' ';
        int ends = p[n] == '\0' || p[n] == ',' || p[n] == ' ';
        if (starts && ends)
            return 1;
        p += n;
    }
    return 0;
}

/* ---- the candidates ----------------------------------------------------- */

static void *vaes256_new(const uint8_t *key, size_t keylen) { return kmsenv__aes_vaes_new(key, keylen); }
static void vaes256_free(void *c) { kmsenv__aes_vaes_free(c); }
static int vaes256_seal(void *c, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16])
{
    return kmsenv__aes_vaes_seal(c, iv, aad, aadlen, in, inlen, out, tag);
}
static int vaes256_open(void *c, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, const uint8_t tag[16], uint8_t *out)
{
    return kmsenv__aes_vaes_open(c, iv, aad, aadlen, in, inlen, tag, out);
}

static void *vaes512_new(const uint8_t *key, size_t keylen) { return kmsenv__aes_vaes512_new(key, keylen); }
static void vaes512_free(void *c) { kmsenv__aes_vaes512_free(c); }
static int vaes512_seal(void *c, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16])
{
    return kmsenv__aes_vaes512_seal(c, iv, aad, aadlen, in, inlen, out, tag);
}
static int vaes512_open(void *c, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, const uint8_t tag[16], uint8_t *out)
{
    return kmsenv__aes_vaes512_open(c, iv, aad, aadlen, in, inlen, tag, out);
}

/* Fastest first: the order breaks ties and is the SM4 preference. */
static const kmsenv__aes_kernel AES_KERNELS[] = {
    {"vaes512", KMSENV_FEATURE_AES_VAES512, vaes512_new, vaes512_free, vaes512_seal, vaes512_open},
    {"vaes256", KMSENV_FEATURE_AES_VAES, vaes256_new, vaes256_free, vaes256_seal, vaes256_open},
};

/* gfni512-vpclmul is gfni512 plus its own SM4-GCM (the zmm GHASH of
 * ghash512.h instead of gcm128's); it needs AVX-512 + VPCLMULQDQ, which no
 * feature bit carries alone: AES_VAES512 is that plus VAES and AES-NI, which
 * every CPU with VPCLMULQDQ on zmm has. Forcing gfni512 keeps gcm128. */
static const kmsenv__sm4_kernel SM4_KERNELS[] = {
    {"gfni512-vpclmul", KMSENV_FEATURE_SM4_GFNI | KMSENV_FEATURE_AES_VAES512, kmsenv__sm4_gfni_setkey,
     kmsenv__sm4_gfni512_block, kmsenv__sm4_gfni512_ctr32, kmsenv__sm4_gfni512_ecb,
     kmsenv__sm4_gfni512_gcm_init, kmsenv__sm4_gfni512_gcm_seal, kmsenv__sm4_gfni512_gcm_open},
    {"gfni512", KMSENV_FEATURE_SM4_GFNI, kmsenv__sm4_gfni_setkey, kmsenv__sm4_gfni512_block,
     kmsenv__sm4_gfni512_ctr32, kmsenv__sm4_gfni512_ecb, NULL, NULL, NULL},
    {"gfni256", KMSENV_FEATURE_SM4_GFNI256, kmsenv__sm4_gfni_setkey, kmsenv__sm4_gfni256_block,
     kmsenv__sm4_gfni256_ctr32, kmsenv__sm4_gfni256_ecb, NULL, NULL, NULL},
    {"aesni-avx2", KMSENV_FEATURE_SM4_AVX2, kmsenv__sm4_simd_setkey, kmsenv__sm4_simd_block,
     kmsenv__sm4_simd_ctr32, kmsenv__sm4_simd_ecb, NULL, NULL, NULL},
};

#define N_AES (sizeof(AES_KERNELS) / sizeof(AES_KERNELS[0]))
#define N_SM4 (sizeof(SM4_KERNELS) / sizeof(SM4_KERNELS[0]))

/* ---- self-tests --------------------------------------------------------- */

/* Known answers from `cryptography` (AESGCM; SM4 ECB), not from this code. */
static const uint8_t KAT_IV[12] = {0x20, 0xdb, 0x93, 0xd7, 0x65, 0x8a, 0xc0, 0xe2, 0x64, 0x70, 0xb6, 0x94};
static const uint8_t KAT_AAD[20] = {0x15, 0x53, 0x93, 0x7f, 0x84, 0x68, 0xe0, 0x16, 0xc0, 0x7e,
                                    0x24, 0xf7, 0x89, 0x18, 0x14, 0x6f, 0x04, 0x7c, 0xfa, 0xe4};
static const uint8_t KAT_PT[60] = {
    0x2a, 0xf5, 0x30, 0x74, 0x5f, 0x0a, 0x34, 0x09, 0xc6, 0x0d, 0x0d, 0x1b, 0x40, 0xb3, 0x2b,
    0xbb, 0x55, 0x4e, 0xb4, 0xaf, 0xa5, 0x9d, 0x7a, 0xf0, 0xf8, 0x90, 0xc7, 0xa8, 0xc7, 0xfe,
    0x1b, 0x4a, 0xd3, 0x80, 0x7e, 0xbd, 0x5c, 0x7f, 0x29, 0x0e, 0x3e, 0xe7, 0x6e, 0x99, 0xe4,
    0x6e, 0x75, 0xc1, 0x61, 0xbc, 0xf4, 0xa3, 0x35, 0xcd, 0x12, 0x56, 0xdd, 0xbc, 0xc2, 0xbe};
static const uint8_t KAT_KEY128[16] = {0x4d, 0xb2, 0xbf, 0xd7, 0x9e, 0x2b, 0x04, 0x47,
                                       0x64, 0xf5, 0x34, 0x2f, 0xcb, 0x3a, 0x8f, 0xaf};
static const uint8_t KAT_CT128[76] = {
    0x1b, 0xd7, 0xd0, 0x19, 0xc0, 0xd6, 0x2a, 0xd4, 0x47, 0x7b, 0x30, 0x4c, 0xbc, 0x87, 0xf2, 0xd9,
    0x75, 0xef, 0x87, 0x34, 0x9d, 0x13, 0x72, 0x05, 0x84, 0xaf, 0xf4, 0xce, 0x07, 0xfb, 0xf2, 0x6e,
    0xb4, 0x98, 0x97, 0x24, 0x58, 0xc7, 0x27, 0x8a, 0x8b, 0xea, 0x6e, 0x7a, 0x5e, 0x24, 0xaa, 0xe8,
    0xab, 0xc8, 0x0b, 0x48, 0x1e, 0x5f, 0xf7, 0xbf, 0x81, 0x0d, 0xbb, 0x8f, 0xbb, 0x89, 0x91, 0x4e,
    0x7f, 0xaa, 0x8b, 0x49, 0xed, 0xb7, 0x40, 0xfc, 0x0e, 0x43, 0x55, 0xb9};
static const uint8_t KAT_KEY256[32] = {0xe8, 0xc4, 0xc5, 0xfb, 0xd0, 0x15, 0x4d, 0x28, 0x42, 0x9f, 0x50,
                                       0xc2, 0xb2, 0x90, 0x93, 0xa3, 0xa8, 0x5d, 0x20, 0x61, 0x25, 0x93,
                                       0xb8, 0x58, 0x62, 0x7b, 0x2f, 0x2f, 0x3b, 0x8c, 0x98, 0xaa};
static const uint8_t KAT_CT256[76] = {
    0x54, 0xde, 0xb2, 0xcf, 0x16, 0xbd, 0x86, 0xa8, 0x14, 0xe8, 0x0a, 0x2b, 0xf0, 0x01, 0xac, 0x21,
    0xef, 0xe5, 0x10, 0x48, 0xe0, 0xe5, 0x94, 0x88, 0x37, 0xf6, 0x0a, 0x31, 0xf0, 0xdd, 0x49, 0x8e,
    0x3a, 0x1c, 0x50, 0x05, 0x18, 0x80, 0x7a, 0xed, 0xd1, 0x8d, 0x0f, 0x0c, 0x87, 0x57, 0x00, 0x6b,
    0xd8, 0x05, 0x94, 0x7b, 0x0d, 0xb0, 0x29, 0x8d, 0xc9, 0x88, 0x06, 0x57, 0x3c, 0x52, 0x03, 0x31,
    0x9b, 0x36, 0x91, 0x34, 0x6e, 0x33, 0x32, 0x13, 0x27, 0x7c, 0x58, 0x94};
/* GB/T 32907 appendix A: key = plaintext = 0123456789abcdeffedcba9876543210. */
static const uint8_t SM4_KAT_KEY[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                                        0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
static const uint8_t SM4_KAT_CT[16] = {0x68, 0x1e, 0xdf, 0x34, 0xd2, 0x06, 0x96, 0x5e,
                                       0x86, 0xb3, 0xe9, 0x4f, 0x53, 0x6e, 0x42, 0x46};

/* RFC 8998 appendix A.1 (SM4-GCM); its key is SM4_KAT_KEY. */
static const uint8_t SM4_GCM_KAT_IV[12] = {0x00, 0x00, 0x12, 0x34, 0x56, 0x78,
                                           0x00, 0x00, 0x00, 0x00, 0xab, 0xcd};
static const uint8_t SM4_GCM_KAT_AAD[20] = {0xfe, 0xed, 0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed,
                                            0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xab, 0xad, 0xda, 0xd2};
static const uint8_t SM4_GCM_KAT_PT_BYTES[8] = {0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0xee, 0xaa};
static const uint8_t SM4_GCM_KAT_CT[80] = {
    0x17, 0xf3, 0x99, 0xf0, 0x8c, 0x67, 0xd5, 0xee, 0x19, 0xd0, 0xdc, 0x99, 0x69, 0xc4, 0xbb, 0x7d,
    0x5f, 0xd4, 0x6f, 0xd3, 0x75, 0x64, 0x89, 0x06, 0x91, 0x57, 0xb2, 0x82, 0xbb, 0x20, 0x07, 0x35,
    0xd8, 0x27, 0x10, 0xca, 0x5c, 0x22, 0xf0, 0xcc, 0xfa, 0x7c, 0xbf, 0x93, 0xd4, 0x96, 0xac, 0x15,
    0xa5, 0x68, 0x34, 0xcb, 0xcf, 0x98, 0xc3, 0x97, 0xb4, 0x02, 0x4a, 0x26, 0x91, 0x23, 0x3b, 0x8d,
    /* tag */
    0x83, 0xde, 0x35, 0x41, 0xe4, 0xc2, 0xb5, 0x81, 0x77, 0xe0, 0x65, 0xa9, 0xbf, 0x7b, 0x62, 0xec};

/* Self-test sizes: several full 32-block (512-byte) iterations of the widest
 * kernel plus a ragged tail, and an AAD that is not a whole block. */
#define ST_LEN 1637
#define ST_AAD 45
#define ST_SM4_BLOCKS 211

static int fault_injected(const char *name)
{
    return name_listed(getenv("KMSENV_KERNEL_SELFTEST_FAULT"), name);
}

static int evp_gcm_seal(const uint8_t *key, size_t keylen, const uint8_t iv[12], const uint8_t *aad,
                        size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, ok;
    if (c == NULL)
        return 0;
    ok = EVP_EncryptInit_ex(c, keylen == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
         EVP_EncryptUpdate(c, NULL, &l, aad, (int)aadlen) == 1 &&
         EVP_EncryptUpdate(c, out, &l, in, (int)inlen) == 1 && EVP_EncryptFinal_ex(c, out + l, &l) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

/* One key size: the known answer, then OpenSSL on random bytes, then open. */
static int aes_check(const kmsenv__aes_kernel *kk, int fault, const uint8_t *kat_key, size_t keylen,
                     const uint8_t *kat_ct, uint8_t *pt, uint8_t *ct, uint8_t *ref, uint8_t *back)
{
    uint8_t key[32], iv[12], aad[ST_AAD], tag[16], reftag[16];
    void *c;
    int ok = 0;

    if ((c = kk->ctx_new(kat_key, keylen)) == NULL)
        return 0;
    if (kk->seal(c, KAT_IV, KAT_AAD, sizeof(KAT_AAD), KAT_PT, sizeof(KAT_PT), ct, tag) != KMSENV_OK)
        goto done;
    ct[0] ^= (uint8_t)fault;
    if (CRYPTO_memcmp(ct, kat_ct, 60) != 0 || CRYPTO_memcmp(tag, kat_ct + 60, 16) != 0)
        goto done;
    kk->ctx_free(c);

    if (RAND_bytes(key, (int)keylen) != 1 || RAND_bytes(iv, 12) != 1 || RAND_bytes(aad, ST_AAD) != 1 ||
        RAND_bytes(pt, ST_LEN) != 1)
        return 0;
    if ((c = kk->ctx_new(key, keylen)) == NULL)
        return 0;
    if (!evp_gcm_seal(key, keylen, iv, aad, ST_AAD, pt, ST_LEN, ref, reftag) ||
        kk->seal(c, iv, aad, ST_AAD, pt, ST_LEN, ct, tag) != KMSENV_OK)
        goto done;
    ct[ST_LEN - 1] ^= (uint8_t)fault;
    if (CRYPTO_memcmp(ct, ref, ST_LEN) != 0 || CRYPTO_memcmp(tag, reftag, 16) != 0)
        goto done;
    if (kk->open(c, iv, aad, ST_AAD, ct, ST_LEN, tag, back) != KMSENV_OK ||
        CRYPTO_memcmp(back, pt, ST_LEN) != 0)
        goto done;
    tag[15] ^= 1;
    if (kk->open(c, iv, aad, ST_AAD, ct, ST_LEN, tag, back) != KMSENV_E_AUTH)
        goto done;
    ok = 1;
done:
    kk->ctx_free(c);
    kmsenv_wipe(key, sizeof(key));
    kmsenv_wipe(back, ST_LEN);
    return ok;
}

static int aes_selftest(const kmsenv__aes_kernel *kk)
{
    uint8_t *buf = OPENSSL_malloc(4 * ST_LEN);
    int fault = fault_injected(kk->name), ok;
    if (buf == NULL)
        return 0;
    ok = aes_check(kk, fault, KAT_KEY128, 16, KAT_CT128, buf, buf + ST_LEN, buf + 2 * ST_LEN, buf + 3 * ST_LEN) &&
         aes_check(kk, fault, KAT_KEY256, 32, KAT_CT256, buf, buf + ST_LEN, buf + 2 * ST_LEN, buf + 3 * ST_LEN);
    kmsenv__clear_free(buf, 4 * ST_LEN);
    ERR_clear_error();
    return ok;
}

static int evp_sm4_ecb(const uint8_t key[16], const uint8_t *in, uint8_t *out, size_t len)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, ok;
    if (c == NULL)
        return 0;
    ok = EVP_EncryptInit_ex(c, EVP_sm4_ecb(), NULL, key, NULL) == 1 && EVP_CIPHER_CTX_set_padding(c, 0) == 1 &&
         EVP_EncryptUpdate(c, out, &l, in, (int)len) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

KMSENV_STATIC_ASSERT(16 * ST_SM4_BLOCKS >= ST_LEN, "sm4_selftest's buffers must hold ST_LEN bytes");

/* A kernel's own SM4-GCM (gcm_init/seal/open): RFC 8998 A.1, then gcm128
 * driven by the same kernel's block and ctr32 (checked against OpenSSL just
 * before) on random input of ST_LEN bytes (one 96-block piece of the zmm
 * loop plus a ragged rest), open in place, a flipped tag refused. The four
 * buffers hold ST_LEN bytes each. */
static int sm4_gcm_check(const kmsenv__sm4_kernel *kk, int fault, uint8_t *pt, uint8_t *ct,
                         uint8_t *ref, uint8_t *back)
{
    kmsenv_sm4 s;
    GCM128_CONTEXT *g = NULL;
    uint8_t key[16], iv[12], aad[ST_AAD], tag[16], reftag[16];
    int ok = 0, i;

    memset(&s, 0, sizeof(s));
    for (i = 0; i < 64; i++)
        pt[i] = SM4_GCM_KAT_PT_BYTES[i / 8];
    kk->setkey(s.rk, SM4_KAT_KEY);
    kk->gcm_init(&s);
    if (kk->gcm_seal(&s, SM4_GCM_KAT_IV, SM4_GCM_KAT_AAD, sizeof(SM4_GCM_KAT_AAD), pt, 64, ct, tag) !=
        KMSENV_OK)
        goto done;
    ct[0] ^= (uint8_t)fault;
    if (CRYPTO_memcmp(ct, SM4_GCM_KAT_CT, 64) != 0 || CRYPTO_memcmp(tag, SM4_GCM_KAT_CT + 64, 16) != 0)
        goto done;

    if (RAND_bytes(key, 16) != 1 || RAND_bytes(iv, 12) != 1 || RAND_bytes(aad, ST_AAD) != 1 ||
        RAND_bytes(pt, ST_LEN) != 1)
        goto done;
    kk->setkey(s.rk, key);
    kk->gcm_init(&s);
    if ((g = CRYPTO_gcm128_new(&s, kk->block)) == NULL)
        goto done;
    CRYPTO_gcm128_setiv(g, iv, 12);
    if (CRYPTO_gcm128_aad(g, aad, ST_AAD) != 0 || CRYPTO_gcm128_encrypt_ctr32(g, pt, ref, ST_LEN, kk->ctr32) != 0)
        goto done;
    CRYPTO_gcm128_tag(g, reftag, 16);
    if (kk->gcm_seal(&s, iv, aad, ST_AAD, pt, ST_LEN, ct, tag) != KMSENV_OK)
        goto done;
    ct[ST_LEN - 1] ^= (uint8_t)fault;
    if (CRYPTO_memcmp(ct, ref, ST_LEN) != 0 || CRYPTO_memcmp(tag, reftag, 16) != 0)
        goto done;
    memcpy(back, ct, ST_LEN);
    if (kk->gcm_open(&s, iv, aad, ST_AAD, back, ST_LEN, tag, back) != KMSENV_OK ||
        CRYPTO_memcmp(back, pt, ST_LEN) != 0)
        goto done;
    tag[15] ^= 1;
    if (kk->gcm_open(&s, iv, aad, ST_AAD, ct, ST_LEN, tag, back) != KMSENV_E_AUTH)
        goto done;
    ok = 1;
done:
    CRYPTO_gcm128_release(g);
    kmsenv_wipe(&s, sizeof(s));
    kmsenv_wipe(key, sizeof(key));
    kmsenv_wipe(back, ST_LEN);
    return ok;
}

/* ECB on the standard vector; block and ctr32 against OpenSSL SM4-ECB of the
 * explicit counter blocks, starting just below the 32-bit wrap; then the
 * kernel's own GCM, if it has one (sm4_gcm_check). */
static int sm4_selftest(const kmsenv__sm4_kernel *kk)
{
    const size_t len = 16 * ST_SM4_BLOCKS;
    kmsenv_sm4 s;
    uint8_t key[16], iv[16], one[16], *buf = OPENSSL_malloc(4 * len);
    uint8_t *pt, *ctrs, *ref, *out;
    int fault = fault_injected(kk->name), ok = 0;
    size_t i;

    if (buf == NULL)
        return 0;
    pt = buf, ctrs = buf + len, ref = buf + 2 * len, out = buf + 3 * len;
    memset(&s, 0, sizeof(s));
    kk->setkey(s.rk, SM4_KAT_KEY);
    kk->ecb(s.rk, SM4_KAT_KEY, one, 1);
    one[0] ^= (uint8_t)fault;
    if (CRYPTO_memcmp(one, SM4_KAT_CT, 16) != 0)
        goto done;

    if (RAND_bytes(key, 16) != 1 || RAND_bytes(iv, 16) != 1 || RAND_bytes(pt, (int)len) != 1)
        goto done;
    iv[12] = 0xff, iv[13] = 0xff, iv[14] = 0xff, iv[15] = 0xf3; /* wraps after 13 blocks */
    for (i = 0; i < ST_SM4_BLOCKS; i++) {
        uint32_t low = 0xfffffff3u + (uint32_t)i; /* mod 2^32, as GCM's inc32 */
        memcpy(ctrs + 16 * i, iv, 12);
        ctrs[16 * i + 12] = (uint8_t)(low >> 24), ctrs[16 * i + 13] = (uint8_t)(low >> 16);
        ctrs[16 * i + 14] = (uint8_t)(low >> 8), ctrs[16 * i + 15] = (uint8_t)low;
    }
    if (!evp_sm4_ecb(key, ctrs, ref, len))
        goto done;
    for (i = 0; i < len; i++)
        ref[i] ^= pt[i];
    kk->setkey(s.rk, key);
    kk->ctr32(pt, out, ST_SM4_BLOCKS, &s, iv);
    out[len - 1] ^= (uint8_t)fault;
    if (CRYPTO_memcmp(out, ref, len) != 0)
        goto done;
    if (!evp_sm4_ecb(key, pt, ref, 16))
        goto done;
    kk->block(pt, one, &s);
    if (CRYPTO_memcmp(one, ref, 16) != 0)
        goto done;
    if (kk->gcm_init != NULL && !sm4_gcm_check(kk, fault, pt, ctrs, ref, out))
        goto done;
    ok = 1;
done:
    kmsenv_wipe(&s, sizeof(s));
    kmsenv_wipe(key, sizeof(key));
    kmsenv__clear_free(buf, 4 * len);
    ERR_clear_error();
    return ok;
}

/* ---- calibration -------------------------------------------------------- */

static uint64_t now_ns(void)
{
#if defined(_WIN32)
    LARGE_INTEGER f, t;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t);
    return (uint64_t)((double)t.QuadPart * 1e9 / (double)f.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

#define CAL_LEN (64 * 1024)
#define CAL_ROUNDS 7

typedef struct {
    const kmsenv__aes_kernel *kk; /* NULL: EVP */
    void *ctx;
    EVP_CIPHER_CTX *evp;
    uint64_t best;
} candidate;

static int seal_once(candidate *c, const uint8_t *iv, const uint8_t *in, uint8_t *out, uint8_t *tag)
{
    int l = 0;
    if (c->kk != NULL)
        return c->kk->seal(c->ctx, iv, NULL, 0, in, CAL_LEN, out, tag) == KMSENV_OK;
    return EVP_EncryptInit_ex(c->evp, NULL, NULL, NULL, iv) == 1 &&
           EVP_EncryptUpdate(c->evp, out, &l, in, CAL_LEN) == 1 &&
           EVP_EncryptFinal_ex(c->evp, out + l, &l) == 1 &&
           EVP_CIPHER_CTX_ctrl(c->evp, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
}

/* Times AES-256-GCM sealing 64 KiB on each candidate (round robin, best of
 * CAL_ROUNDS each, after one warm-up) and returns the index of the fastest;
 * the figures go into the report. -1 when calibration could not run. */
static int calibrate(candidate *cands, int n, char *reason)
{
    uint8_t key[32], iv[12], tag[16], *buf = OPENSSL_malloc(2 * CAL_LEN);
    int i, r, best = -1, ok = 1;
    char fig[64];

    if (buf == NULL || RAND_bytes(key, 32) != 1 || RAND_bytes(iv, 12) != 1) {
        OPENSSL_free(buf);
        return -1;
    }
    memset(buf, 0x5a, CAL_LEN);
    for (i = 0; i < n && ok; i++) {
        cands[i].best = UINT64_MAX;
        if (cands[i].kk != NULL)
            ok = (cands[i].ctx = cands[i].kk->ctx_new(key, 32)) != NULL;
        else
            ok = (cands[i].evp = EVP_CIPHER_CTX_new()) != NULL &&
                 EVP_EncryptInit_ex(cands[i].evp, EVP_aes_256_gcm(), NULL, key, NULL) == 1;
    }
    for (r = 0; r <= CAL_ROUNDS && ok; r++) {
        for (i = 0; i < n && ok; i++) {
            uint64_t t0 = now_ns(), dt;
            ok = seal_once(&cands[i], iv, buf, buf + CAL_LEN, tag);
            dt = now_ns() - t0;
            if (r > 0 && dt < cands[i].best) /* round 0 warms up */
                cands[i].best = dt;
        }
    }
    for (i = 0; i < n; i++) {
        if (ok && (best < 0 || cands[i].best < cands[best].best))
            best = i;
        if (cands[i].kk != NULL && cands[i].ctx != NULL)
            cands[i].kk->ctx_free(cands[i].ctx);
        EVP_CIPHER_CTX_free(cands[i].evp);
        cands[i].ctx = NULL, cands[i].evp = NULL;
    }
    if (ok) {
        append(reason, "%s%s", "", "calibrated sealing 64 KiB:");
        for (i = 0; i < n; i++) {
            double gbs = cands[i].best ? (double)CAL_LEN / (double)cands[i].best : 0.0;
            snprintf(fig, sizeof(fig), " %.1f GB/s", gbs);
            append(reason, " %s%s", cands[i].kk ? cands[i].kk->name : "evp", fig);
            if (i + 1 < n)
                append(reason, "%s%s", ",", "");
        }
    }
    kmsenv_wipe(key, sizeof(key));
    kmsenv__clear_free(buf, 2 * CAL_LEN);
    ERR_clear_error();
    return ok ? best : -1;
}

/* ---- choosing ----------------------------------------------------------- */

static const char *requested(const char *var)
{
    const char *v = getenv(var);
    return (v == NULL || v[0] == '\0' || strcmp(v, "auto") == 0) ? NULL : v;
}

static int known_name(const char *v, int sm4)
{
    size_t i;
    if (strcmp(v, "evp") == 0)
        return 1;
    for (i = 0; i < (sm4 ? N_SM4 : N_AES); i++)
        if (strcmp(v, sm4 ? SM4_KERNELS[i].name : AES_KERNELS[i].name) == 0)
            return 1;
    return 0;
}

static void select_aes(uint32_t cpu)
{
    family_report *rep = &reports[0];
    const char *want = requested("KMSENV_AES_GCM_KERNEL");
    const kmsenv__aes_kernel *failed = NULL;
    candidate cands[N_AES + 1];
    int n = 0, best;
    size_t i;

    if (want != NULL && !known_name(want, 0)) {
        append(rep->warning, "KMSENV_AES_GCM_KERNEL=%s is not a kernel name (auto, evp%s); ", want,
               ", vaes256, vaes512");
        want = NULL;
    }
    if (want != NULL && strcmp(want, "evp") == 0) {
        append(rep->reason, "forced by KMSENV_AES_GCM_KERNEL=%s%s", want, "");
        return;
    }
    for (i = 0; want != NULL && i < N_AES; i++) {
        const kmsenv__aes_kernel *kk = &AES_KERNELS[i];
        if (strcmp(want, kk->name) != 0)
            continue;
        if ((cpu & kk->needs) != kk->needs) {
            append(rep->warning, "KMSENV_AES_GCM_KERNEL=%s: this CPU lacks its instructions (or "
                   "KMSENV_DISABLE_SIMD is set)%s; ", want, "");
        } else if (!aes_selftest(kk)) {
            append(rep->warning, "AES-GCM kernel %s failed its self-test and is disabled for this "
                   "process%s; ", kk->name, "");
            failed = kk;
        } else {
            aes_chosen = kk;
            rep->name = kk->name;
            append(rep->reason, "forced by KMSENV_AES_GCM_KERNEL=%s (self-test passed)%s", want, "");
            return;
        }
        append(rep->reason, "KMSENV_AES_GCM_KERNEL=%s not usable, automatic choice: %s", want, "");
    }
    for (i = 0; i < N_AES; i++) {
        const kmsenv__aes_kernel *kk = &AES_KERNELS[i];
        if ((cpu & kk->needs) != kk->needs || kk == failed)
            continue;
        if (!aes_selftest(kk)) {
            append(rep->warning, "AES-GCM kernel %s failed its self-test and is disabled for this "
                   "process%s; ", kk->name, "");
            continue;
        }
        cands[n].kk = kk, cands[n].ctx = NULL, cands[n].evp = NULL;
        n++;
    }
    if (n == 0) {
        append(rep->reason, "%s%s", (cpu & (KMSENV_FEATURE_AES_VAES | KMSENV_FEATURE_AES_VAES512))
                                        ? "OpenSSL: no SIMD kernel passed its self-test"
                                        : "OpenSSL: the CPU lacks VAES/VPCLMULQDQ, or KMSENV_DISABLE_SIMD is set",
               "");
        return;
    }
    cands[n].kk = NULL, cands[n].ctx = NULL, cands[n].evp = NULL;
    best = calibrate(cands, n + 1, rep->reason);
    if (best < 0) { /* could not time: take the widest kernel that passed */
        best = 0;
        append(rep->reason, "%s%s", "calibration failed: the widest kernel that passed its self-test", "");
    }
    aes_chosen = cands[best].kk;
    rep->name = aes_chosen ? aes_chosen->name : "evp";
}

static void select_sm4(uint32_t cpu)
{
    family_report *rep = &reports[1];
    const char *want = requested("KMSENV_SM4_KERNEL");
    const kmsenv__sm4_kernel *failed = NULL;
    size_t i;

    if (!(cpu & KMSENV_FEATURE_SM4)) {
        append(rep->reason, "%s%s", "SM4 is unavailable in the linked OpenSSL", "");
        return;
    }
    if (want != NULL && !known_name(want, 1)) {
        append(rep->warning, "KMSENV_SM4_KERNEL=%s is not a kernel name (auto, evp%s); ", want,
               ", aesni-avx2, gfni256, gfni512, gfni512-vpclmul");
        want = NULL;
    }
    if (want != NULL && strcmp(want, "evp") == 0) {
        append(rep->reason, "forced by KMSENV_SM4_KERNEL=%s%s", want, "");
        return;
    }
    for (i = 0; want != NULL && i < N_SM4; i++) {
        const kmsenv__sm4_kernel *kk = &SM4_KERNELS[i];
        if (strcmp(want, kk->name) != 0)
            continue;
        if ((cpu & kk->needs) != kk->needs) {
            append(rep->warning, "KMSENV_SM4_KERNEL=%s: this CPU lacks its instructions (or "
                   "KMSENV_DISABLE_SIMD is set)%s; ", want, "");
        } else if (!sm4_selftest(kk)) {
            append(rep->warning, "SM4 kernel %s failed its self-test and is disabled for this "
                   "process%s; ", kk->name, "");
            failed = kk;
        } else {
            sm4_chosen = kk;
            rep->name = kk->name;
            append(rep->reason, "forced by KMSENV_SM4_KERNEL=%s (self-test passed)%s", want, "");
            return;
        }
        append(rep->reason, "KMSENV_SM4_KERNEL=%s not usable, automatic choice: %s", want, "");
    }
    for (i = 0; i < N_SM4; i++) {
        const kmsenv__sm4_kernel *kk = &SM4_KERNELS[i];
        if ((cpu & kk->needs) != kk->needs || kk == failed)
            continue;
        if (!sm4_selftest(kk)) {
            append(rep->warning, "SM4 kernel %s failed its self-test and is disabled for this "
                   "process%s; ", kk->name, "");
            continue;
        }
        sm4_chosen = kk;
        rep->name = kk->name;
        append(rep->reason, "the first kernel this CPU runs that passed its self-test, in the "
               "order %s%s", "gfni512-vpclmul, gfni512, gfni256, aesni-avx2, evp", "");
        return;
    }
    append(rep->reason, "%s%s", (cpu & (KMSENV_FEATURE_SM4_AVX2 | KMSENV_FEATURE_SM4_GFNI256 |
                                        KMSENV_FEATURE_SM4_GFNI))
                                    ? "OpenSSL: no SIMD kernel passed its self-test"
                                    : "OpenSSL: the CPU lacks GFNI and VAES, or KMSENV_DISABLE_SIMD is set",
           "");
}

void kmsenv__kernels_select(uint32_t cpu)
{
    select_aes(cpu);
    select_sm4(cpu);
}

#else /* no x86 SIMD in this build */

void kmsenv__kernels_select(uint32_t cpu)
{
    (void)cpu;
    append(reports[0].reason, "%s%s", "built without SIMD kernels (OpenSSL only)", "");
    append(reports[1].reason, "%s%s", "built without SIMD kernels (OpenSSL only)", "");
}

#endif

const kmsenv__aes_kernel *kmsenv__aes_kernel_chosen(void)
{
    (void)kmsenv_features();
    return aes_chosen;
}

const kmsenv__sm4_kernel *kmsenv__sm4_kernel_chosen(void)
{
    (void)kmsenv_features();
    return sm4_chosen;
}

static const family_report *report_of(int family)
{
    (void)kmsenv_features();
    return family == KMSENV_KERNEL_SM4 ? &reports[1] : &reports[0];
}

const char *kmsenv_kernel_name(int family)
{
    return report_of(family)->name;
}

const char *kmsenv_kernel_reason(int family)
{
    return report_of(family)->reason;
}

const char *kmsenv_kernel_warning(int family)
{
    return report_of(family)->warning;
}
