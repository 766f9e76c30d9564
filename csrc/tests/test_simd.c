/*
 * test_simd.c: the SIMD kernels (sm4_simd.c, aes_gcm_vaes.c) against the
 * OpenSSL EVP paths they replace, in one process: EVP is always callable,
 * and the SIMD functions are called directly or through keys created while
 * the kernel is active. Built by run_simd.sh (ASan+UBSan, and valgrind when
 * it can decode the instructions). When the CPU lacks a kernel's features
 * that part prints SKIP and the rest still runs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "internal.h"
#include "check.h"
#include "gcm_vectors.h"



static void rnd(void *p, size_t n)
{
    if (n != 0 && RAND_bytes(p, (int)n) != 1)
        abort();
}

static size_t rnd_below(size_t n)
{
    uint32_t v;
    rnd(&v, sizeof(v));
    return n ? v % n : 0;
}

static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (p == NULL)
        abort();
    return p;
}

/* ---- EVP references --------------------------------------------------- */

#if defined(KMSENV_HAVE_X86_SIMD) /* only the kernel tests use it: unused elsewhere */
static void evp_one(const EVP_CIPHER *c, int enc, const uint8_t *key, const uint8_t *iv,
                    const uint8_t *in, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int l1 = 0, l2 = 0;
    if (x == NULL || EVP_CipherInit_ex(x, c, NULL, key, iv, enc) != 1 ||
        EVP_CIPHER_CTX_set_padding(x, 0) != 1 ||
        EVP_CipherUpdate(x, out, &l1, in, (int)len) != 1 ||
        EVP_CipherFinal_ex(x, out + l1, &l2) != 1 || (size_t)(l1 + l2) != len)
        abort();
    EVP_CIPHER_CTX_free(x);
}
#endif

/* SM4-GCM over EVP SM4 + gcm128: what the core does with SIMD disabled. */
static void ref_sm4_gcm(const uint8_t key[16], const uint8_t iv[12], const uint8_t *aad,
                        size_t aadlen, const uint8_t *pt, size_t len, uint8_t *ct, uint8_t tag[16])
{
    kmsenv_sm4 s;
    GCM128_CONTEXT *g;
    memset(&s, 0, sizeof(s));
    if (kmsenv__sm4_init(&s, key) != KMSENV_OK)
        abort();
    s.block = kmsenv__sm4_block_evp;
    s.ctr32 = kmsenv__sm4_ctr32_evp;
    g = CRYPTO_gcm128_new(&s, s.block);
    if (g == NULL)
        abort();
    CRYPTO_gcm128_setiv(g, iv, 12);
    if ((aadlen && CRYPTO_gcm128_aad(g, aad, aadlen)) ||
        (len && CRYPTO_gcm128_encrypt_ctr32(g, pt, ct, len, s.ctr32)))
        abort();
    CRYPTO_gcm128_tag(g, tag, 16);
    CHECK(!s.failed);
    CRYPTO_gcm128_release(g);
    kmsenv__sm4_cleanup(&s);
}

static void ref_aes_gcm(const uint8_t *key, size_t keylen, const uint8_t iv[12], const uint8_t *aad,
                        size_t aadlen, const uint8_t *pt, size_t len, uint8_t *ct, uint8_t tag[16])
{
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int l = 0;
    uint8_t fin[16];
    if (x == NULL ||
        EVP_EncryptInit_ex(x, keylen == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm(), NULL, key,
                           iv) != 1 ||
        (aadlen && EVP_EncryptUpdate(x, NULL, &l, aad, (int)aadlen) != 1) ||
        (len && EVP_EncryptUpdate(x, ct, &l, pt, (int)len) != 1) ||
        EVP_EncryptFinal_ex(x, fin, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
        abort();
    EVP_CIPHER_CTX_free(x);
}

/* Seal with k (whatever path it uses) and compare with the reference; then
 * open (in place too) and check that a flipped tag bit wipes the output. */
static void gcm_roundtrip(kmsenv_key *k, const uint8_t *key, size_t keylen, size_t len,
                          size_t aadlen)
{
    uint8_t iv[12], tag[16], rtag[16];
    uint8_t *aad = xmalloc(aadlen), *pt = xmalloc(len), *ct = xmalloc(len), *rct = xmalloc(len),
            *back = xmalloc(len);
    int ok;
    rnd(iv, 12);
    rnd(aad, aadlen);
    rnd(pt, len);
    if (k->cipher == KMSENV_CIPHER_SM4)
        ref_sm4_gcm(key, iv, aad, aadlen, pt, len, rct, rtag);
    else
        ref_aes_gcm(key, keylen, iv, aad, aadlen, pt, len, rct, rtag);
    ok = kmsenv_gcm_seal(k, iv, aadlen ? aad : NULL, aadlen, len ? pt : NULL, len,
                         len ? ct : NULL, tag) == KMSENV_OK;
    ok = ok && memcmp(ct, rct, len) == 0 && memcmp(tag, rtag, 16) == 0;
    ok = ok && kmsenv_gcm_open(k, iv, aadlen ? aad : NULL, aadlen, len ? ct : NULL, len, tag,
                               len ? back : NULL) == KMSENV_OK &&
         memcmp(back, pt, len) == 0;
    /* in place */
    memcpy(back, pt, len);
    ok = ok && kmsenv_gcm_seal(k, iv, aad, aadlen, back, len, back, tag) == KMSENV_OK &&
         memcmp(back, rct, len) == 0;
    ok = ok && kmsenv_gcm_open(k, iv, aad, aadlen, back, len, tag, back) == KMSENV_OK &&
         memcmp(back, pt, len) == 0;
    tag[len % 16] ^= 0x80;
    memset(back, 0x55, len);
    ok = ok && kmsenv_gcm_open(k, iv, aad, aadlen, ct, len, tag, len ? back : NULL) == KMSENV_E_AUTH;
    {
        size_t i;
        for (i = 0; i < len; i++)
            ok = ok && back[i] == 0;
    }
    if (!ok)
        fprintf(stderr, "  gcm mismatch: cipher %d keylen %zu len %zu aad %zu\n", k->cipher,
                keylen, len, aadlen);
    CHECK(ok);
    CHECK(ERR_peek_error() == 0);
    free(aad), free(pt), free(ct), free(rct), free(back);
}

/* ---- SM4 --------------------------------------------------------------- */

#if defined(KMSENV_HAVE_X86_SIMD)
static void sm4_gbt32907(void)
{
    /* GB/T 32907-2016 Appendix A, examples 1 and 2 (10^6 encryptions). */
    uint8_t key[16], want[16], want1m[16], x[16], pt[16];
    uint32_t rk[32], drk[32];
    int i;
    unhex("0123456789abcdeffedcba9876543210", key);
    unhex("681edf34d206965e86b3e94f536e4246", want);
    unhex("595298c7c6fd271f0402f804c33d3f66", want1m);
    kmsenv__sm4_simd_setkey(rk, key);
    memcpy(pt, key, 16);
    kmsenv__sm4_simd_ecb(rk, pt, x, 1);
    CHECK(memcmp(x, want, 16) == 0);
    for (i = 0; i < 32; i++)
        drk[i] = rk[31 - i];
    kmsenv__sm4_simd_ecb(drk, x, x, 1);
    CHECK(memcmp(x, key, 16) == 0);
    memcpy(x, key, 16);
    for (i = 0; i < 1000000; i++)
        kmsenv__sm4_simd_ecb(rk, x, x, 1);
    CHECK(memcmp(x, want1m, 16) == 0);
}

static void sm4_ecb_random(void)
{
    int t;
    for (t = 0; t < 300; t++) {
        uint8_t key[16], in[40 * 16], out[40 * 16], want[40 * 16];
        uint32_t rk[32], drk[32];
        size_t blocks = 1 + rnd_below(40);
        int i;
        rnd(key, 16);
        rnd(in, sizeof(in));
        kmsenv__sm4_simd_setkey(rk, key);
        evp_one(EVP_sm4_ecb(), 1, key, NULL, in, blocks * 16, want);
        kmsenv__sm4_simd_ecb(rk, in, out, blocks);
        CHECK(memcmp(out, want, blocks * 16) == 0);
        for (i = 0; i < 32; i++)
            drk[i] = rk[31 - i];
        kmsenv__sm4_simd_ecb(drk, out, out, blocks); /* in place */
        CHECK(memcmp(out, in, blocks * 16) == 0);
    }
}

/* ctr32 must equal EVP's CTR on each block's counter, wrapping mod 2^32 in
 * the low word only, and leave ivec untouched. */
static void sm4_ctr32_random(void)
{
    static const uint32_t starts[] = {0xfffffff8u, 0xffffffffu, 0xfffffff0u, 0, 2};
    int t;
    for (t = 0; t < 200; t++) {
        kmsenv_sm4 s;
        uint8_t key[16], ivec[16], ivcopy[16], ctr[16];
        size_t blocks = t < 5 ? 40 : rnd_below(300), j;
        uint8_t *in = xmalloc(blocks * 16 + 1), *out = xmalloc(blocks * 16 + 1),
                *want = xmalloc(blocks * 16 + 1);
        uint32_t c0;
        rnd(key, 16);
        rnd(ivec, 16);
        if (t < 5) {
            c0 = starts[t];
            ivec[12] = (uint8_t)(c0 >> 24), ivec[13] = (uint8_t)(c0 >> 16);
            ivec[14] = (uint8_t)(c0 >> 8), ivec[15] = (uint8_t)c0;
        }
        c0 = ((uint32_t)ivec[12] << 24) | ((uint32_t)ivec[13] << 16) |
             ((uint32_t)ivec[14] << 8) | ivec[15];
        rnd(in, blocks * 16);
        for (j = 0; j < blocks; j++) {
            uint32_t c = c0 + (uint32_t)j;
            memcpy(ctr, ivec, 12);
            ctr[12] = (uint8_t)(c >> 24), ctr[13] = (uint8_t)(c >> 16);
            ctr[14] = (uint8_t)(c >> 8), ctr[15] = (uint8_t)c;
            evp_one(EVP_sm4_ecb(), 1, key, NULL, ctr, 16, want + 16 * j);
            {
                size_t i;
                for (i = 0; i < 16; i++)
                    want[16 * j + i] ^= in[16 * j + i];
            }
        }
        memset(&s, 0, sizeof(s));
        kmsenv__sm4_simd_setkey(s.rk, key);
        memcpy(ivcopy, ivec, 16);
        out[blocks * 16] = 0xee;
        kmsenv__sm4_simd_ctr32(in, out, blocks, &s, ivec);
        CHECK(memcmp(out, want, blocks * 16) == 0);
        CHECK(out[blocks * 16] == 0xee); /* nothing written past the end */
        CHECK(memcmp(ivcopy, ivec, 16) == 0);
        kmsenv__sm4_simd_ctr32(in, in, blocks, &s, ivec); /* in place */
        CHECK(memcmp(in, want, blocks * 16) == 0);
        free(in), free(out), free(want);
    }
}

/* Legacy helpers against EVP SM4-CTR (128-bit carry) and SM4-CBC. */
static void sm4_legacy_random(void)
{
    int t;
    for (t = 0; t < 200; t++) {
        uint8_t key[16], iv[16];
        uint32_t rk[32];
        size_t len = t < 20 ? (size_t)t * 37 : rnd_below(5000);
        size_t cbclen = len - len % 16;
        uint8_t *in = xmalloc(len), *out = xmalloc(len), *want = xmalloc(len);
        rnd(key, 16);
        rnd(iv, 16);
        if (t % 3 == 0) /* force carries out of the low 32 and low 64 bits */
            memset(iv + (t % 2 ? 8 : 12), 0xff, t % 2 ? 8 : 4), iv[15] = (uint8_t)(0xff - t % 7);
        rnd(in, len);
        kmsenv__sm4_simd_setkey(rk, key);
        evp_one(EVP_sm4_ctr(), 1, key, iv, in, len, want);
        kmsenv__sm4_simd_ctr128(rk, iv, in, out, len);
        CHECK(memcmp(out, want, len) == 0);
        evp_one(EVP_sm4_cbc(), 1, key, iv, in, cbclen, want);
        kmsenv__sm4_simd_cbc_encrypt(rk, iv, in, out, cbclen);
        CHECK(memcmp(out, want, cbclen) == 0);
        kmsenv__sm4_simd_cbc_decrypt(rk, iv, out, out, cbclen); /* in place */
        CHECK(memcmp(out, in, cbclen) == 0);
        free(in), free(out), free(want);
    }
}

static void sm4_gcm_api(void)
{
    static const size_t sizes[] = {1023, 1024, 1025, 4095, 4096, 4097, 65536 + 5,
                                   (1u << 20) + 7};
    uint8_t key[16], iv[12], aad[20], pt[64], ct[64], tag[16], out[64];
    kmsenv_key *k = NULL;
    size_t len, i;

    /* RFC 8998 A.1 through the SIMD path */
    rfc8998_a1(key, iv, aad, pt, ct, tag);
    CHECK(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 16, &k) == KMSENV_OK);
    if (k == NULL)
        return;
    /* the chosen kernel, not EVP, answers */
    CHECK(k->sm4.ctr32 == kmsenv__sm4_kernel_chosen()->ctr32 &&
          k->sm4.block == kmsenv__sm4_kernel_chosen()->block);
    CHECK(kmsenv_gcm_seal(k, iv, aad, 20, pt, 64, out, tag) == KMSENV_OK);
    CHECK(memcmp(out, ct, 64) == 0);
    unhex("83DE3541E4C2B58177E065A9BF7B62EC", ct);
    CHECK(memcmp(tag, ct, 16) == 0);
    kmsenv_key_free(k);

    for (i = 0; i < 3; i++) {
        rnd(key, 16);
        CHECK(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 16, &k) == KMSENV_OK);
        for (len = 0; len <= 600; len++)
            gcm_roundtrip(k, key, 16, len, rnd_below(81));
        for (len = 0; len < sizeof(sizes) / sizeof(sizes[0]); len++)
            gcm_roundtrip(k, key, 16, sizes[len], rnd_below(300));
        kmsenv_key_free(k);
    }
}
#endif

/* ---- main -------------------------------------------------------------- */

void test_aes_vaes(void);

/* run_simd.sh runs this binary once per kernel name: a forced kernel the CPU
 * has must be the one in use (else the whole run would test another). */
static void expect_forced(const char *var, int family)
{
    const char *want = getenv(var);
    uint32_t f = 0;
    if (want == NULL || want[0] == '\0' || strcmp(want, "auto") == 0)
        return;
    if (strcmp(kmsenv_kernel_name(family), want) != 0) {
        /* only acceptable when the CPU cannot run it, which the warning says */
        printf("SKIP %s=%s: %s\n", var, want, kmsenv_kernel_warning(family));
        CHECK(strstr(kmsenv_kernel_warning(family), "lacks its instructions") != NULL);
        (void)f;
    }
}

int main(void)
{
    uint32_t f = kmsenv_features();
    const char *off = getenv("KMSENV_DISABLE_SIMD");
    printf("features 0x%x\n", (unsigned)f);
    if (off != NULL && strcmp(off, "1") == 0) /* the switch must win over CPUID */
        CHECK((f & (KMSENV_FEATURE_SM4_AVX2 | KMSENV_FEATURE_AES_VAES | KMSENV_FEATURE_SM4_GFNI |
                    KMSENV_FEATURE_SM4_GFNI256 | KMSENV_FEATURE_AES_VAES512)) == 0);
    printf("kernels: AES-GCM %s (%s); SM4 %s (%s)\n", kmsenv_kernel_name(KMSENV_KERNEL_AES_GCM),
           kmsenv_kernel_reason(KMSENV_KERNEL_AES_GCM), kmsenv_kernel_name(KMSENV_KERNEL_SM4),
           kmsenv_kernel_reason(KMSENV_KERNEL_SM4));
    expect_forced("KMSENV_AES_GCM_KERNEL", KMSENV_KERNEL_AES_GCM);
    expect_forced("KMSENV_SM4_KERNEL", KMSENV_KERNEL_SM4);
#if defined(KMSENV_HAVE_X86_SIMD)
    if (f & KMSENV_FEATURE_SM4_AVX2) { /* the AES-NI method kernel, called directly */
        sm4_gbt32907();
        sm4_ecb_random();
        sm4_ctr32_random();
    } else {
        printf("SKIP SM4 AVX2+VAES direct calls (CPU lacks it or KMSENV_DISABLE_SIMD is set)\n");
    }
    if (kmsenv__sm4_kernel_chosen() != NULL) { /* whichever kernel was chosen, via keys */
        printf("SM4 kernel under test: %s\n", kmsenv_kernel_name(KMSENV_KERNEL_SM4));
        sm4_legacy_random();
        sm4_gcm_api();
    } else {
        printf("SKIP SM4 kernels (CPU lacks them or KMSENV_DISABLE_SIMD is set)\n");
    }
#endif
    test_aes_vaes();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

/* ---- AES-GCM (aes_gcm_vaes.c) ----------------------------------------- */


void test_aes_vaes(void)
{
    static const size_t big[] = {4095, 4096, 4097, 8191, 8192, 8193, 65536 + 5, (1u << 20) + 7};
    size_t i, len, kl;
    if (kmsenv__aes_kernel_chosen() == NULL) {
        printf("SKIP AES-GCM kernels (OpenSSL chosen: %s)\n", kmsenv_kernel_reason(KMSENV_KERNEL_AES_GCM));
        return;
    }
    for (i = 0; i < sizeof(gcm_spec_vectors) / sizeof(gcm_spec_vectors[0]); i++) {
        const struct gcm_spec_vector *v = &gcm_spec_vectors[i];
        uint8_t key[32], iv[12], pt[64], aad[32], ct[64], tag[16], out[64], t[16];
        size_t keylen = unhex(v->key, key), pl = unhex(v->pt, pt);
        size_t al = unhex(v->aad, aad);
        kmsenv_key *k = NULL;
        unhex(v->iv, iv);
        unhex(v->ct, ct);
        unhex(v->tag, tag);
        CHECK(kmsenv_key_new(KMSENV_CIPHER_AES, key, keylen, &k) == KMSENV_OK);
        if (k == NULL)
            continue;
        CHECK(k->aes_kernel != NULL && k->aes_simd != NULL); /* the kernel, not EVP, answers */
        CHECK(kmsenv_gcm_seal(k, iv, al ? aad : NULL, al, pl ? pt : NULL, pl, out, t) == KMSENV_OK);
        CHECK(memcmp(out, ct, pl) == 0 && memcmp(t, tag, 16) == 0);
        CHECK(kmsenv_gcm_open(k, iv, al ? aad : NULL, al, pl ? ct : NULL, pl, tag, out) == KMSENV_OK);
        CHECK(memcmp(out, pt, pl) == 0);
        kmsenv_key_free(k);
    }
    for (kl = 16; kl <= 32; kl += 16) {
        uint8_t key[32];
        kmsenv_key *k = NULL;
        rnd(key, kl);
        CHECK(kmsenv_key_new(KMSENV_CIPHER_AES, key, kl, &k) == KMSENV_OK);
        if (k == NULL)
            continue;
        /* every size across the 16-block step and its tail, AAD of all sizes */
        for (len = 0; len <= 600; len++)
            gcm_roundtrip(k, key, kl, len, len % 300);
        for (len = 0; len <= 600; len++)
            gcm_roundtrip(k, key, kl, rnd_below(64), len);
        for (i = 0; i < 150; i++)
            gcm_roundtrip(k, key, kl, rnd_below(5001), rnd_below(100));
        for (i = 0; i < sizeof(big) / sizeof(big[0]); i++)
            gcm_roundtrip(k, key, kl, big[i], rnd_below(1000));
        kmsenv_key_free(k);
    }
}
