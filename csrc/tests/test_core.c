/*
 * test_core.c: C-only tests for the native core, built by run.sh with
 * ASan+UBSan and under valgrind. It links the core's sources directly and
 * includes internal.h to reach the SM4 kernels and DER helpers.
 *
 * run.sh builds it with a tiny KMSENV_EVP_CHUNK so every "split at INT_MAX"
 * loop runs many times on small inputs; results are checked against an
 * independent bit-by-bit GCM written below.
 */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1 /* MADV_HUGEPAGE and setenv under -std=c11 */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "internal.h"
#include "check.h"
#include "gcm_vectors.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif




static int all_byte(const uint8_t *p, size_t n, uint8_t b)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != b)
            return 0;
    return 1;
}

static void fill_random(uint8_t *p, size_t n)
{
    if (n != 0 && RAND_bytes(p, (int)n) != 1)
        abort();
}

static kmsenv_key *new_key(int cipher, size_t keylen)
{
    uint8_t raw[32];
    kmsenv_key *k = NULL;
    fill_random(raw, keylen);
    if (kmsenv_key_new(cipher, raw, keylen, &k) != KMSENV_OK)
        abort();
    return k;
}

/* ---- independent reference: raw block cipher + bitwise GHASH ---- */

static void ref_block(const EVP_CIPHER *ecb, const uint8_t *key, const uint8_t in[16],
                      uint8_t out[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l;
    if (!c || !EVP_EncryptInit_ex(c, ecb, NULL, key, NULL) || !EVP_CIPHER_CTX_set_padding(c, 0) ||
        !EVP_EncryptUpdate(c, out, &l, in, 16))
        abort();
    EVP_CIPHER_CTX_free(c);
}

static void gf_mul(uint8_t x[16], const uint8_t h[16])
{
    uint8_t z[16] = {0}, v[16];
    int i, j;
    memcpy(v, h, 16);
    for (i = 0; i < 128; i++) {
        int lsb;
        if ((x[i / 8] >> (7 - i % 8)) & 1)
            for (j = 0; j < 16; j++)
                z[j] ^= v[j];
        lsb = v[15] & 1;
        for (j = 15; j > 0; j--)
            v[j] = (uint8_t)((v[j] >> 1) | (v[j - 1] << 7));
        v[0] >>= 1;
        if (lsb)
            v[0] ^= 0xe1;
    }
    memcpy(x, z, 16);
}

static void ghash_update(uint8_t s[16], const uint8_t h[16], const uint8_t *p, size_t n)
{
    while (n != 0) {
        size_t t = n < 16 ? n : 16, i;
        for (i = 0; i < t; i++)
            s[i] ^= p[i];
        gf_mul(s, h);
        p += t;
        n -= t;
    }
}

static void ref_gcm(const EVP_CIPHER *ecb, const uint8_t *key, const uint8_t iv[12],
                    const uint8_t *aad, size_t aadlen, const uint8_t *pt, size_t n, uint8_t *ct,
                    uint8_t tag[16])
{
    uint8_t h[16] = {0}, j0[16], ctr[16], ks[16], s[16] = {0}, lens[16], ek0[16];
    uint32_t c = 2;
    size_t i, off;
    ref_block(ecb, key, h, h);
    memcpy(j0, iv, 12);
    j0[12] = j0[13] = j0[14] = 0;
    j0[15] = 1;
    for (off = 0; off < n; off += 16, c++) {
        memcpy(ctr, iv, 12);
        ctr[12] = (uint8_t)(c >> 24), ctr[13] = (uint8_t)(c >> 16);
        ctr[14] = (uint8_t)(c >> 8), ctr[15] = (uint8_t)c;
        ref_block(ecb, key, ctr, ks);
        for (i = 0; i < 16 && off + i < n; i++)
            ct[off + i] = pt[off + i] ^ ks[i];
    }
    ghash_update(s, h, aad, aadlen);
    ghash_update(s, h, ct, n);
    for (i = 0; i < 8; i++) {
        lens[i] = (uint8_t)(((uint64_t)aadlen * 8) >> (56 - 8 * i));
        lens[8 + i] = (uint8_t)(((uint64_t)n * 8) >> (56 - 8 * i));
    }
    ghash_update(s, h, lens, 16);
    ref_block(ecb, key, j0, ek0);
    for (i = 0; i < 16; i++)
        tag[i] = s[i] ^ ek0[i];
}

/* ---- tests ---- */

static void test_misc(void)
{
    const int codes[] = {KMSENV_OK,       KMSENV_E_ARG,         KMSENV_E_AUTH,
                         KMSENV_E_CRYPTO, KMSENV_E_NOMEM,       KMSENV_E_UNSUPPORTED,
                         KMSENV_E_PADDING, KMSENV_E_FORMAT,    KMSENV_E_HEADER_AUTH};
    uint8_t a[64], b[64];
    size_t i, j;

    CHECK(strcmp(kmsenv_version(), "test") == 0);
    CHECK(strncmp(kmsenv_openssl_version(), "OpenSSL ", 8) == 0);
    CHECK(strncmp(kmsenv_openssl_build_version(), "OpenSSL ", 8) == 0);
    CHECK((kmsenv_features() & KMSENV_FEATURE_SM4) != 0); /* Debian's 3.0 has SM4 */
    CHECK(kmsenv_features() == kmsenv_features());
    /* The SIMD paths are off when forced off, and then OpenSSL is chosen. */
    {
        const char *off = getenv("KMSENV_DISABLE_SIMD");
        if (off != NULL && off[0] != '\0' && strcmp(off, "0") != 0) {
            CHECK((kmsenv_features() & (KMSENV_FEATURE_AES_VAES | KMSENV_FEATURE_SM4_AVX2 |
                                        KMSENV_FEATURE_SM4_GFNI | KMSENV_FEATURE_SM4_GFNI256 |
                                        KMSENV_FEATURE_AES_VAES512)) == 0);
            CHECK(strcmp(kmsenv_kernel_name(KMSENV_KERNEL_AES_GCM), "evp") == 0);
            CHECK(strcmp(kmsenv_kernel_name(KMSENV_KERNEL_SM4), "evp") == 0);
        }
    }
    CHECK(kmsenv_kernel_reason(KMSENV_KERNEL_AES_GCM)[0] != '\0');
    CHECK(kmsenv_kernel_warning(KMSENV_KERNEL_SM4) != NULL);
    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        CHECK(kmsenv_strerror(codes[i]) != NULL);
        for (j = 0; j < i; j++)
            CHECK(strcmp(kmsenv_strerror(codes[i]), kmsenv_strerror(codes[j])) != 0);
    }
    CHECK(strcmp(kmsenv_strerror(12345), "unknown status") == 0);

    memset(a, 0x77, sizeof(a));
    kmsenv_wipe(a, sizeof(a));
    CHECK(all_byte(a, sizeof(a), 0));
    kmsenv_wipe(NULL, 0);
    kmsenv_wipe(NULL, 10);

    memset(a, 1, sizeof(a));
    memset(b, 1, sizeof(b));
    CHECK(kmsenv_memeq(a, b, sizeof(a)) == 0);
    b[63] = 2;
    CHECK(kmsenv_memeq(a, b, sizeof(a)) != 0);
    CHECK(kmsenv_memeq(a, b, 63) == 0);
    CHECK(kmsenv_memeq(NULL, NULL, 0) == 0);
    CHECK(kmsenv_memeq(NULL, b, 4) != 0);

    CHECK_RC(kmsenv_random(NULL, 0), KMSENV_OK);
    CHECK_RC(kmsenv_random(NULL, 1), KMSENV_E_ARG);
    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    CHECK_RC(kmsenv_random(a, sizeof(a)), KMSENV_OK); /* > test chunk size */
    CHECK_RC(kmsenv_random(b, sizeof(b)), KMSENV_OK);
    CHECK(!all_byte(a + 48, 16, 0)); /* the second chunk was filled too */
    CHECK(memcmp(a, b, sizeof(a)) != 0);
}

static void test_key_args(void)
{
    uint8_t key[32] = {0};
    kmsenv_key *k = (kmsenv_key *)&k; /* must be reset to NULL on failure */
    static const size_t bad_aes[] = {0, 1, 15, 17, 24, 31, 33, 64};
    size_t i;

    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_AES, key, 16, NULL), KMSENV_E_ARG);
    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_AES, NULL, 16, &k), KMSENV_E_ARG);
    CHECK(k == NULL);
    for (i = 0; i < sizeof(bad_aes) / sizeof(bad_aes[0]); i++)
        CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_AES, key, bad_aes[i], &k), KMSENV_E_ARG);
    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 32, &k), KMSENV_E_ARG);
    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 0, &k), KMSENV_E_ARG);
    CHECK_RC(kmsenv_key_new(0, key, 16, &k), KMSENV_E_ARG);
    CHECK_RC(kmsenv_key_new(3, key, 16, &k), KMSENV_E_ARG);
    CHECK_RC(kmsenv_key_new(-1, key, 16, &k), KMSENV_E_ARG);
    CHECK(k == NULL);
    kmsenv_key_free(NULL);

    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_AES, key, 16, &k), KMSENV_OK);
    CHECK(k != NULL);
    kmsenv_key_free(k);
    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 16, &k), KMSENV_OK);
    kmsenv_key_free(k);
}

/* NIST CAVP gcmEncryptExtIV{128,256}.rsp (cryptography_vectors), 96-bit IVs. */
static const struct {
    const char *key, *iv, *pt, *aad, *ct, *tag;
} nist[] = {
    {"b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4", "516c33929df5a3284ff463d7",
     "", "", "", "bdc1ac884d332457a1d2664f168c76f0"},
    {"78dc4e0aaf52d935c3c01eea57428f00ca1fd475f5da86a49c8dd73d68c8e223", "d79cf22d504cc793c3fb6c8a",
     "", "b96baa8c1c75a671bfb2d08d06be5f36", "", "3e5d486aa2e30b22e040b85723a06e76"},
    {"31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22", "0d18e06c7c725ac9e362e1ce",
     "2db5168e932556f8089a0622981d017d", "", "fa4362189661d163fcd6a56d8bf0405a",
     "d636ac1bbedd5cc3ee727dc2ab4a9489"},
    {"ff9506b4d46ba54128876fadfcc673a4c927c618ea7d95cfcaa508cbc8f7fc66", "3742ad2208a0484345eee1be",
     "7fd0d6cadc92cad27bb2d7d8c8",
     "f1360a27fdc244be8739d85af6491c762a693aafe668c449515fdeeedb6a90aeee3891bbc8b69adc6a6426cb12fcd"
     "ebc32c9f58c5259d128b91efa28620a3a9a0168b0ff5e76951cb41647ba4aa1f87fac0d97ac580e42cffc7e",
     "bdb8346b28eb4d7226493611a6", "7484d827b767647f44c7f94a39f8175c"},
    {"24501ad384e473963d476edcfe08205237acfd49b5b8f33857f8114e863fec7f", "9ff18563b978ec281b3f2794",
     "27f348f9cdc0c5bd5e66b1ccb63ad920ff2219d14e8d631b3872265cf117ee86757accb158bd9abb3868fdc0d0b07"
     "4b5f01b2c",
     "adb5ec720ccf9898500028bf34afccbcaca126ef",
     "eb7cb754c824e8d96f7c6d9b76c7d26fb874ffbf1d65c6f64a698d839b0b06145dae82057ad55994cf59ad7f67c0f"
     "a5e85fab8",
     "bc95c532fecc594c36d1550286a7a3f0"},
    {"463b412911767d57a0b33969e674ffe7845d313b88c6fe312f3d724be68e1fca", "611ce6f9a6880750de7da6cb",
     "e7d1dcf668e2876861940e012fe52a98dacbd78ab63c08842cc9801ea581682ad54af0c34d0d7f6f59e8ee0bf4900"
     "e0fd85042",
     "0a682fbc6192e1b47a5e0868787ffdafe5a50cead3575849990cdd2ea9b3597749403efb4a56684f0c6bde352d4ae"
     "ec5",
     "8886e196010cb3849d9c1a182abe1eeab0a5f3ca423c3669a4a8703c0f146e8e956fb122e0d721b869d2b6fcd4216"
     "d7d4d3758",
     "2469cecd70fd98fec9264f71df1aee9a"},
    {"11754cd72aec309bf52f7687212e8957", "3c819d9a9bed087615030b65", "", "", "",
     "250327c674aaf477aef2675748cf6971"},
    {"c939cc13397c1d37de6ae0e1cb7c423c", "b3d8cc017cbb89b39e0f67e2",
     "c3b3c41f113a31b73d9a5cd432103069", "24825602bd12a984e0092d3e448eda5f",
     "93fe7d9e9bfd10348a5606e5cafa7354", "0032a1dc85f1c9786925a2e71d8272dd"},
    {"fe47fcce5fc32665d2ae399e4eec72ba", "5adb9609dbaeb58cbd6e7275",
     "7c0e88c88899a779228465074797cd4c2e1498d259b54390b85e3eef1c02df60e743f1b840382c4bccaf3bafb4ca8"
     "429bea063",
     "88319d6e1d3ffa5f987199166c8a9b56c2aeba5a",
     "98f4826f05a265e6dd2be82db241c0fbbbf9ffb1c173aa83964b7cf5393043736365253ddbc5db8778371495da76d"
     "269e5db3e",
     "291ef1982e4defedaa2249f898556b47"},
};

/* Seal/open one known answer, out of place and in place, plus a tamper. */
static void check_gcm_kat(int cipher, const uint8_t *key, size_t keylen, const uint8_t *iv,
                          const uint8_t *pt, size_t ptlen, const uint8_t *aad, size_t aadlen,
                          const uint8_t *ct, const uint8_t *tag)
{
    kmsenv_key *k = NULL;
    uint8_t out[128], buf[128], t[16];
    CHECK_RC(kmsenv_key_new(cipher, key, keylen, &k), KMSENV_OK);
    if (k == NULL)
        return;
    CHECK_RC(kmsenv_gcm_seal(k, iv, aad, aadlen, pt, ptlen, out, t), KMSENV_OK);
    CHECK(memcmp(out, ct, ptlen) == 0);
    CHECK(memcmp(t, tag, 16) == 0);
    memset(out, 0xaa, sizeof(out));
    CHECK_RC(kmsenv_gcm_open(k, iv, aad, aadlen, ct, ptlen, tag, out), KMSENV_OK);
    CHECK(memcmp(out, pt, ptlen) == 0);
    /* in place both ways */
    memcpy(buf, pt, ptlen);
    CHECK_RC(kmsenv_gcm_seal(k, iv, aad, aadlen, buf, ptlen, buf, t), KMSENV_OK);
    CHECK(memcmp(buf, ct, ptlen) == 0 && memcmp(t, tag, 16) == 0);
    CHECK_RC(kmsenv_gcm_open(k, iv, aad, aadlen, buf, ptlen, t, buf), KMSENV_OK);
    CHECK(memcmp(buf, pt, ptlen) == 0);
    /* wrong tag: E_AUTH and the output wiped */
    memcpy(t, tag, 16);
    t[0] ^= 1;
    memset(out, 0xaa, sizeof(out));
    CHECK_RC(kmsenv_gcm_open(k, iv, aad, aadlen, ct, ptlen, t, out), KMSENV_E_AUTH);
    CHECK(all_byte(out, ptlen, 0));
    CHECK(all_byte(out + ptlen, sizeof(out) - ptlen, 0xaa));
    kmsenv_key_free(k);
}

static void test_nist_gcm(void)
{
    size_t i;
    for (i = 0; i < sizeof(nist) / sizeof(nist[0]); i++) {
        uint8_t key[32], iv[12], pt[128], aad[128], ct[128], tag[16];
        size_t kl = unhex(nist[i].key, key), pl = unhex(nist[i].pt, pt);
        size_t al = unhex(nist[i].aad, aad);
        unhex(nist[i].iv, iv);
        CHECK(unhex(nist[i].ct, ct) == pl);
        unhex(nist[i].tag, tag);
        check_gcm_kat(KMSENV_CIPHER_AES, key, kl, iv, pt, pl, al ? aad : NULL, al, ct, tag);
    }
}

static void test_sm4_block(void)
{
    /* GB/T 32907-2016 Appendix A example 1. */
    uint8_t key[16], want[16], out[32], back[32], zero_iv[16] = {0};
    kmsenv_key *k = NULL;
    size_t n = 0;
    unhex("0123456789abcdeffedcba9876543210", key);
    unhex("681edf34d206965e86b3e94f536e4246", want);
    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 16, &k), KMSENV_OK);
    if (k == NULL)
        return;
    k->sm4.block(key, out, &k->sm4); /* the kernel gcm128 uses */
    CHECK(memcmp(out, want, 16) == 0 && !k->sm4.failed);
    /* CBC with a zero IV over one block is the bare block cipher */
    CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC, zero_iv, key, 16, out, 16, &n), KMSENV_OK);
    CHECK(n == 16 && memcmp(out, want, 16) == 0);
    CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC, zero_iv, out, 16, back, 16, &n), KMSENV_OK);
    CHECK(n == 16 && memcmp(back, key, 16) == 0);
    kmsenv_key_free(k);
}

static void test_sm4_gcm_rfc8998(void)
{
    uint8_t key[16], iv[12], aad[20], pt[64], ct[64], tag[16];
    rfc8998_a1(key, iv, aad, pt, ct, tag);
    check_gcm_kat(KMSENV_CIPHER_SM4, key, 16, iv, pt, 64, aad, 20, ct, tag);
    /* partial-block tails go through the block function, not the ctr32 one */
    {
        uint8_t rct[64], rtag[16];
        ref_gcm(EVP_sm4_ecb(), key, iv, aad, 20, pt, 37, rct, rtag);
        check_gcm_kat(KMSENV_CIPHER_SM4, key, 16, iv, pt, 37, aad, 20, rct, rtag);
        CHECK(memcmp(rct, ct, 37) == 0); /* CTR prefix property */
    }
}

/* gcm128 hands ctr32 a counter whose low 32 bits must wrap without carrying. */
static void test_sm4_ctr32_wrap(void)
{
    static const uint32_t starts[] = {0xfffffffeu, 0xfffffff0u, 0xffffffffu, 0, 2};
    kmsenv_key *k = new_key(KMSENV_CIPHER_SM4, 16);
    uint8_t in[40 * 16], out[40 * 16], want[40 * 16], ivec[16], ctr[16], ks[16];
    size_t s, blocks = 40, j, i;
    fill_random(in, sizeof(in));
    for (s = 0; s < sizeof(starts) / sizeof(starts[0]); s++) {
        fill_random(ivec, 12);
        ivec[12] = (uint8_t)(starts[s] >> 24), ivec[13] = (uint8_t)(starts[s] >> 16);
        ivec[14] = (uint8_t)(starts[s] >> 8), ivec[15] = (uint8_t)starts[s];
        for (j = 0; j < blocks; j++) {
            uint32_t c = starts[s] + (uint32_t)j;
            memcpy(ctr, ivec, 12);
            ctr[12] = (uint8_t)(c >> 24), ctr[13] = (uint8_t)(c >> 16);
            ctr[14] = (uint8_t)(c >> 8), ctr[15] = (uint8_t)c;
            kmsenv__sm4_block_evp(ctr, ks, &k->sm4);
            for (i = 0; i < 16; i++)
                want[16 * j + i] = in[16 * j + i] ^ ks[i];
        }
        k->sm4.failed = 0;
        memcpy(ctr, ivec, 16);
        kmsenv__sm4_ctr32_evp(in, out, blocks, &k->sm4, ivec);
        CHECK(!k->sm4.failed);
        CHECK(memcmp(out, want, sizeof(want)) == 0);
        CHECK(memcmp(ctr, ivec, 16) == 0); /* ivec is read-only */
        /* in place */
        memcpy(out, in, sizeof(in));
        kmsenv__sm4_ctr32_evp(out, out, blocks, &k->sm4, ivec);
        CHECK(memcmp(out, want, sizeof(want)) == 0);
    }
    kmsenv_key_free(k);
}

/* Tampering any input gives E_AUTH, wipes out, and leaves the queue empty. */
static void test_tamper(void)
{
    static const struct {
        int cipher;
        size_t keylen;
    } kinds[] = {{KMSENV_CIPHER_AES, 16}, {KMSENV_CIPHER_AES, 32}, {KMSENV_CIPHER_SM4, 16}};
    size_t i, what;
    for (i = 0; i < 3; i++) {
        kmsenv_key *k = new_key(kinds[i].cipher, kinds[i].keylen);
        uint8_t iv[12], aad[20], pt[100], ct[100], tag[16], out[100];
        fill_random(iv, 12);
        fill_random(aad, 20);
        fill_random(pt, 100);
        CHECK_RC(kmsenv_gcm_seal(k, iv, aad, 20, pt, 100, ct, tag), KMSENV_OK);
        for (what = 0; what < 6; what++) {
            uint8_t *target[] = {ct, ct + 99, tag, tag + 15, aad + 7, iv + 11};
            *target[what] ^= 0x40;
            memset(out, 0xaa, sizeof(out));
            CHECK_RC(kmsenv_gcm_open(k, iv, aad, 20, ct, 100, tag, out), KMSENV_E_AUTH);
            CHECK(all_byte(out, sizeof(out), 0));
            *target[what] ^= 0x40;
        }
        CHECK_RC(kmsenv_gcm_open(k, iv, aad, 20, ct, 100, tag, out), KMSENV_OK);
        CHECK(memcmp(out, pt, 100) == 0);
        /* a different key must not verify */
        {
            kmsenv_key *k2 = new_key(kinds[i].cipher, kinds[i].keylen);
            CHECK_RC(kmsenv_gcm_open(k2, iv, aad, 20, ct, 100, tag, out), KMSENV_E_AUTH);
            kmsenv_key_free(k2);
        }
        /* GMAC (inlen 0) as used for the header tag */
        CHECK_RC(kmsenv_gcm_seal(k, iv, aad, 20, NULL, 0, NULL, tag), KMSENV_OK);
        CHECK_RC(kmsenv_gcm_open(k, iv, aad, 20, NULL, 0, tag, NULL), KMSENV_OK);
        aad[0] ^= 1;
        CHECK_RC(kmsenv_gcm_open(k, iv, aad, 20, NULL, 0, tag, NULL), KMSENV_E_AUTH);
        kmsenv_key_free(k);
    }
}

static void test_gcm_args(void)
{
    kmsenv_key *k = new_key(KMSENV_CIPHER_AES, 32);
    uint8_t iv[12] = {0}, buf[64] = {0}, out[64], tag[16] = {0};
    size_t huge = (size_t)KMSENV_GCM_MAX_IN + 1;

    CHECK_RC(kmsenv_gcm_seal(NULL, iv, NULL, 0, buf, 16, out, tag), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, NULL, NULL, 0, buf, 16, out, tag), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, buf, 16, out, NULL), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 5, buf, 16, out, tag), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, NULL, 16, out, tag), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, buf, 16, NULL, tag), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, buf, 16, buf + 1, tag), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, buf + 8, 16, buf, tag), KMSENV_E_ARG);
#if SIZE_MAX > 0xffffffffu
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, buf, huge, buf, tag), KMSENV_E_ARG);
#endif
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, NULL, 0, NULL, tag), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_seal(k, iv, buf, 0, buf, 0, out, tag), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_seal(k, iv, NULL, 0, buf, 16, buf + 16, tag), KMSENV_OK); /* adjacent */

    CHECK_RC(kmsenv_gcm_open(NULL, iv, NULL, 0, buf, 16, tag, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_open(k, NULL, NULL, 0, buf, 16, tag, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_open(k, iv, NULL, 0, buf, 16, NULL, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_open(k, iv, NULL, 3, buf, 16, tag, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_open(k, iv, NULL, 0, NULL, 16, tag, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_open(k, iv, NULL, 0, buf, 16, tag, NULL), KMSENV_E_ARG);
    CHECK_RC(kmsenv_gcm_open(k, iv, NULL, 0, buf, 16, tag, buf + 4), KMSENV_E_ARG);
#if SIZE_MAX > 0xffffffffu
    CHECK_RC(kmsenv_gcm_open(k, iv, NULL, 0, buf, huge, tag, buf), KMSENV_E_ARG);
#endif
    kmsenv_key_free(k);
}

/* Against the bitwise reference, at sizes around the test chunk (48) and
 * gcm128's 3072-byte GHASH chunk. */
static void test_gcm_vs_reference(void)
{
    static const size_t sizes[] = {0,   1,   15,   16,   17,   47,   48,   49,  95,
                                   96,  97,  200,  1000, 3071, 3072, 3073, 5000};
    static const size_t aads[] = {0, 1, 47, 48, 49, 100};
    static const struct {
        int cipher;
        size_t keylen;
    } kinds[] = {{KMSENV_CIPHER_AES, 16}, {KMSENV_CIPHER_AES, 32}, {KMSENV_CIPHER_SM4, 16}};
    uint8_t *pt = malloc(5000), *ct = malloc(5000), *want = malloc(5000), *back = malloc(5000);
    uint8_t aad[100], iv[12], key[32], tag[16], wtag[16];
    size_t kind, s, a;
    fill_random(pt, 5000);
    fill_random(aad, sizeof(aad));
    for (kind = 0; kind < 3; kind++) {
        const EVP_CIPHER *ecb = kinds[kind].cipher == KMSENV_CIPHER_SM4 ? EVP_sm4_ecb()
                                : kinds[kind].keylen == 16             ? EVP_aes_128_ecb()
                                                                       : EVP_aes_256_ecb();
        kmsenv_key *k = NULL;
        fill_random(key, sizeof(key));
        CHECK_RC(kmsenv_key_new(kinds[kind].cipher, key, kinds[kind].keylen, &k), KMSENV_OK);
        for (s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            for (a = 0; a < sizeof(aads) / sizeof(aads[0]); a++) {
                int ok;
                fill_random(iv, 12);
                ref_gcm(ecb, key, iv, aad, aads[a], pt, sizes[s], want, wtag);
                CHECK_RC(kmsenv_gcm_seal(k, iv, aad, aads[a], pt, sizes[s], ct, tag), KMSENV_OK);
                ok = memcmp(ct, want, sizes[s]) == 0 && memcmp(tag, wtag, 16) == 0;
                if (!ok)
                    fprintf(stderr, "  cipher %d/%zu size %zu aad %zu\n", kinds[kind].cipher,
                            kinds[kind].keylen, sizes[s], aads[a]);
                CHECK(ok);
                CHECK_RC(kmsenv_gcm_open(k, iv, aad, aads[a], ct, sizes[s], tag, back), KMSENV_OK);
                CHECK(memcmp(back, pt, sizes[s]) == 0);
            }
        }
        kmsenv_key_free(k);
    }
    free(pt), free(ct), free(want), free(back);
}

static void legacy_kat(int cipher, const char *keyhex, int mode, const char *ivhex,
                       const char *pthex, const char *cthex)
{
    uint8_t key[32], iv[16], pt[64], ct[64], out[64];
    size_t kl = unhex(keyhex, key), pl, n = 0;
    kmsenv_key *k = NULL;
    unhex(ivhex, iv);
    pl = unhex(pthex, pt);
    CHECK(unhex(cthex, ct) == pl);
    CHECK_RC(kmsenv_key_new(cipher, key, kl, &k), KMSENV_OK);
    CHECK_RC(kmsenv_legacy_encrypt(k, mode, iv, pt, pl, out, sizeof(out), &n), KMSENV_OK);
    CHECK(n == pl && memcmp(out, ct, pl) == 0);
    CHECK_RC(kmsenv_legacy_decrypt(k, mode, iv, ct, pl, out, sizeof(out), &n), KMSENV_OK);
    CHECK(n == pl && memcmp(out, pt, pl) == 0);
    kmsenv_key_free(k);
}

#define SP800_38A_PT                                                                               \
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"                             \
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"

static void test_legacy_kat(void)
{
    /* NIST SP 800-38A F.2.1, F.2.5, F.5.1 */
    legacy_kat(KMSENV_CIPHER_AES, "2b7e151628aed2a6abf7158809cf4f3c", KMSENV_MODE_CBC,
               "000102030405060708090a0b0c0d0e0f", SP800_38A_PT,
               "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
               "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7");
    legacy_kat(KMSENV_CIPHER_AES, "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
               KMSENV_MODE_CBC, "000102030405060708090a0b0c0d0e0f", SP800_38A_PT,
               "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
               "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b");
    legacy_kat(KMSENV_CIPHER_AES, "2b7e151628aed2a6abf7158809cf4f3c", KMSENV_MODE_CTR,
               "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", SP800_38A_PT,
               "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
               "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee");
}

/* Legacy CTR: the IV is a full 128-bit counter that carries across all bytes. */
static void test_legacy_ctr_carry(void)
{
    static const struct {
        int cipher;
        size_t keylen;
    } kinds[] = {{KMSENV_CIPHER_AES, 16}, {KMSENV_CIPHER_AES, 32}, {KMSENV_CIPHER_SM4, 16}};
    size_t kind, j, i, n;
    for (kind = 0; kind < 3; kind++) {
        const EVP_CIPHER *ecb = kinds[kind].cipher == KMSENV_CIPHER_SM4 ? EVP_sm4_ecb()
                                : kinds[kind].keylen == 16             ? EVP_aes_128_ecb()
                                                                       : EVP_aes_256_ecb();
        uint8_t key[32], iv[16], ctr[16], ks[16], pt[83], ct[83], want[83];
        kmsenv_key *k = NULL;
        fill_random(key, sizeof(key));
        fill_random(pt, sizeof(pt));
        CHECK_RC(kmsenv_key_new(kinds[kind].cipher, key, kinds[kind].keylen, &k), KMSENV_OK);
        memset(iv, 0xff, 16);
        iv[0] = 0x00;
        iv[15] = 0xfe; /* carries out of the low 64 bits on the second block */
        memcpy(ctr, iv, 16);
        for (j = 0; j * 16 < sizeof(pt); j++) {
            ref_block(ecb, key, ctr, ks);
            for (i = 0; i < 16 && j * 16 + i < sizeof(pt); i++)
                want[j * 16 + i] = pt[j * 16 + i] ^ ks[i];
            for (i = 16; i-- > 0;)
                if (++ctr[i] != 0)
                    break;
        }
        CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CTR, iv, pt, sizeof(pt), ct, sizeof(ct), &n),
                 KMSENV_OK);
        CHECK(n == sizeof(pt) && memcmp(ct, want, sizeof(pt)) == 0);
        CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CTR, iv, ct, n, ct, sizeof(ct), &n),
                 KMSENV_OK); /* in place */
        CHECK(memcmp(ct, pt, sizeof(pt)) == 0);
        kmsenv_key_free(k);
    }
}

/* PKCS#7 against EVP's own padding, every length from 0 to 80. */
static void test_legacy_pkcs7(void)
{
    static const struct {
        int cipher;
        size_t keylen;
    } kinds[] = {{KMSENV_CIPHER_AES, 16}, {KMSENV_CIPHER_AES, 32}, {KMSENV_CIPHER_SM4, 16}};
    size_t kind, len;
    for (kind = 0; kind < 3; kind++) {
        const EVP_CIPHER *cbc = kinds[kind].cipher == KMSENV_CIPHER_SM4 ? EVP_sm4_cbc()
                                : kinds[kind].keylen == 16             ? EVP_aes_128_cbc()
                                                                       : EVP_aes_256_cbc();
        uint8_t key[32], iv[16], pt[80], ct[96], want[96], back[96];
        kmsenv_key *k = NULL;
        fill_random(key, sizeof(key));
        fill_random(iv, sizeof(iv));
        fill_random(pt, sizeof(pt));
        CHECK_RC(kmsenv_key_new(kinds[kind].cipher, key, kinds[kind].keylen, &k), KMSENV_OK);
        for (len = 0; len <= sizeof(pt); len++) {
            EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
            int l1 = 0, l2 = 0;
            size_t n = 0, need = len - len % 16 + 16;
            EVP_EncryptInit_ex(c, cbc, NULL, key, iv);
            EVP_EncryptUpdate(c, want, &l1, pt, (int)len);
            EVP_EncryptFinal_ex(c, want + l1, &l2);
            EVP_CIPHER_CTX_free(c);
            CHECK((size_t)(l1 + l2) == need);
            CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC_PKCS7, iv, len ? pt : NULL, len, ct,
                                           need, &n),
                     KMSENV_OK);
            CHECK(n == need && memcmp(ct, want, need) == 0);
            CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC_PKCS7, iv, pt, len, ct, need - 1, &n),
                     KMSENV_E_ARG);
            CHECK(n == 0);
            memset(back, 0xaa, sizeof(back));
            CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, want, need, back, need, &n),
                     KMSENV_OK);
            CHECK(n == len && memcmp(back, pt, len) == 0);
            CHECK(all_byte(back + len, sizeof(back) - len, 0xaa)); /* padding never written */
            /* in place */
            memcpy(back, pt, len);
            CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC_PKCS7, iv, back, len, back, need, &n),
                     KMSENV_OK);
            CHECK(memcmp(back, want, need) == 0);
            CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, back, need, back, need, &n),
                     KMSENV_OK);
            CHECK(n == len && memcmp(back, pt, len) == 0);
        }
        kmsenv_key_free(k);
    }
}

/* Blocks whose decryption ends in bad padding: E_PADDING and out wiped. */
static void test_legacy_bad_padding(void)
{
    static const char *last_blocks[] = {
        "000102030405060708090a0b0c0d0e00", /* pad 0 */
        "000102030405060708090a0b0c0d0e11", /* pad 17 */
        "000102030405060708090a0b0c0d0eff", /* pad 255 */
        "000102030405060708090a0b0c0d0102", /* 01 02: first pad byte wrong */
        "10101010101010101010101010101011", /* 16 bytes, one wrong */
        "0f101010101010101010101010101010", /* 0x10 pad, first byte wrong */
        "000102030405060708090a0b0c050505", /* pad 5, only 3 bytes of 05 */
    };
    static const char *good_blocks[] = {
        "10101010101010101010101010101010", /* a whole block of padding */
        "000102030405060708090a0b0c0d0e01",
        "000102030405060708090a0b0c030303",
    };
    kmsenv_key *k = new_key(KMSENV_CIPHER_AES, 16);
    uint8_t iv[16], blk[32], ct[32], out[32];
    size_t i, n;
    fill_random(iv, 16);
    fill_random(blk, 16);
    for (i = 0; i < sizeof(last_blocks) / sizeof(last_blocks[0]); i++) {
        unhex(last_blocks[i], blk + 16);
        CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC, iv, blk, 32, ct, 32, &n), KMSENV_OK);
        memset(out, 0xaa, sizeof(out));
        n = 99;
        CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, ct, 32, out, 32, &n),
                 KMSENV_E_PADDING);
        CHECK(n == 0 && all_byte(out, 32, 0));
    }
    for (i = 0; i < sizeof(good_blocks) / sizeof(good_blocks[0]); i++) {
        unhex(good_blocks[i], blk + 16);
        CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC, iv, blk, 32, ct, 32, &n), KMSENV_OK);
        CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, ct, 32, out, 32, &n),
                 KMSENV_OK);
        CHECK(n == 32u - blk[31] && memcmp(out, blk, n) == 0);
    }
    /* lengths that cannot hold padding */
    CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, NULL, 0, out, 32, &n),
             KMSENV_E_PADDING);
    CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, ct, 17, out, 32, &n),
             KMSENV_E_PADDING);
    CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, ct, 15, out, 32, &n),
             KMSENV_E_PADDING);
    kmsenv_key_free(k);
}

static void test_legacy_args(void)
{
    kmsenv_key *k = new_key(KMSENV_CIPHER_SM4, 16);
    uint8_t iv[16] = {0}, in[64] = {0}, out[80];
    size_t n = 0;
    int enc;
    for (enc = 0; enc < 2; enc++) {
        int (*f)(kmsenv_key *, int, const uint8_t *, const uint8_t *, size_t, uint8_t *, size_t,
                 size_t *) = enc ? kmsenv_legacy_encrypt : kmsenv_legacy_decrypt;
        CHECK_RC(f(NULL, KMSENV_MODE_CBC, iv, in, 32, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, 0, iv, in, 32, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, 4, iv, in, 32, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, NULL, in, 32, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, NULL, 32, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, in, 32, NULL, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, in, 32, out, 80, NULL), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, in, 31, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, in, 33, out, 80, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, in, 32, out, 31, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CTR, iv, in, 33, out, 32, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CTR, iv, in, 32, in + 5, 32, &n), KMSENV_E_ARG);
        CHECK_RC(f(k, KMSENV_MODE_CTR, iv, in, 33, out, 33, &n), KMSENV_OK);
        CHECK(n == 33);
        CHECK_RC(f(k, KMSENV_MODE_CTR, iv, NULL, 0, NULL, 0, &n), KMSENV_OK);
        CHECK(n == 0);
        CHECK_RC(f(k, KMSENV_MODE_CBC, iv, NULL, 0, NULL, 0, &n), KMSENV_OK);
    }
    /* PKCS7 encrypt of 0 bytes still needs a whole block */
    CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC_PKCS7, iv, NULL, 0, out, 15, &n),
             KMSENV_E_ARG);
    CHECK_RC(kmsenv_legacy_encrypt(k, KMSENV_MODE_CBC_PKCS7, iv, NULL, 0, out, 16, &n), KMSENV_OK);
    CHECK(n == 16);
    CHECK_RC(kmsenv_legacy_decrypt(k, KMSENV_MODE_CBC_PKCS7, iv, out, 16, out + 16, 15, &n),
             KMSENV_E_ARG);
    kmsenv_key_free(k);
}

/* ---- DER and batches ---- */

static void test_der_helpers(void)
{
    static const struct {
        size_t n;
        const char *enc;
    } cases[] = {{0, "00"},           {127, "7f"},           {128, "8180"},
                 {255, "81ff"},       {256, "820100"},       {65535, "82ffff"},
                 {65536, "83010000"}, {0xffffff, "83ffffff"}, {0x1000000, "8401000000"},
                 {0xffffffffu, "84ffffffff"}};
    size_t i;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t want[8], got[8], *end;
        size_t wl = unhex(cases[i].enc, want);
        CHECK(kmsenv__der_len_size(cases[i].n) == wl);
        end = kmsenv__der_put_len(got, cases[i].n);
        CHECK((size_t)(end - got) == wl && memcmp(got, want, wl) == 0);
    }
#if SIZE_MAX > 0xffffffffu
    CHECK(kmsenv__der_len_size((size_t)0x100000000ull) == 0);
#endif
    /* 30 L { hdr, 30 L { 04 0c iv, 04 L ct, 04 10 tag } } */
    CHECK(kmsenv_message_size(10, 0) == 48);
    CHECK(kmsenv_message_size(10, 100) == 150);
    CHECK(kmsenv_message_size(0, 0) == 38);
    CHECK(kmsenv_message_size(200, 70000) == 1 + 4 + 200 + 1 + 4 + 14 + 1 + 4 + 70000 + 18);
    CHECK(kmsenv_message_size(0, 0xffffffffu) == 0);
    CHECK(kmsenv_message_size(SIZE_MAX, 0) == 0);
    CHECK(kmsenv_message_size(SIZE_MAX - 30, 0) == 0);
}

/* An independent writer for expected messages, with any IV/tag length. */
static size_t put_len(uint8_t *p, size_t n)
{
    if (n < 128) {
        p[0] = (uint8_t)n;
        return 1;
    }
    if (n < 256) {
        p[0] = 0x81, p[1] = (uint8_t)n;
        return 2;
    }
    if (n < 65536) {
        p[0] = 0x82, p[1] = (uint8_t)(n >> 8), p[2] = (uint8_t)n;
        return 3;
    }
    p[0] = 0x83, p[1] = (uint8_t)(n >> 16), p[2] = (uint8_t)(n >> 8), p[3] = (uint8_t)n;
    return 4;
}

static size_t build_msg(uint8_t *out, const uint8_t *hdr, size_t hl, const uint8_t *iv,
                        size_t ivl, const uint8_t *ct, size_t ctl, const uint8_t *tag, size_t tl)
{
    uint8_t len[8];
    size_t body = 2 + ivl + 1 + put_len(len, ctl) + ctl + 2 + tl;
    size_t content = hl + 1 + put_len(len, body) + body, o = 0;
    out[o++] = 0x30;
    o += put_len(out + o, content);
    memcpy(out + o, hdr, hl), o += hl;
    out[o++] = 0x30;
    o += put_len(out + o, body);
    out[o++] = 0x04, out[o++] = (uint8_t)ivl;
    memcpy(out + o, iv, ivl), o += ivl;
    out[o++] = 0x04;
    o += put_len(out + o, ctl);
    if (ctl)
        memcpy(out + o, ct, ctl), o += ctl;
    out[o++] = 0x04, out[o++] = (uint8_t)tl;
    memcpy(out + o, tag, tl), o += tl;
    return o;
}

static void make_header(uint8_t *hdr, size_t hl)
{
    fill_random(hdr, hl);
    hdr[0] = 0x30; /* looks like a SEQUENCE; content is opaque to the core */
    hdr[1] = (uint8_t)(hl - 2 < 128 ? hl - 2 : 0x81);
}

static void test_batch_roundtrip(int cipher, size_t keylen)
{
    static const size_t sizes[] = {0, 1, 50, 127, 128, 200, 300, 70000};
    enum { N = sizeof(sizes) / sizeof(sizes[0]) };
    kmsenv_key *k = new_key(cipher, keylen);
    uint8_t hdr[200], aad[33], ivs[N * 12], tag[16], *in, *out, *back, *expect;
    size_t in_off[N + 1], out_off[N + 1], back_off[N + 1], total = 0, i, span;
    int status[N];

    make_header(hdr, sizeof(hdr));
    fill_random(aad, sizeof(aad));
    fill_random(ivs, sizeof(ivs));
    in_off[0] = 7; /* offsets need not start at 0 */
    for (i = 0; i < N; i++) {
        in_off[i + 1] = in_off[i] + sizes[i];
        total += kmsenv_message_size(sizeof(hdr), sizes[i]);
    }
    in = malloc(in_off[N]);
    out = malloc(total);
    back = malloc(total);
    expect = malloc(kmsenv_message_size(sizeof(hdr), 70000));
    fill_random(in, in_off[N]);

    /* too small: nothing written */
    memset(out, 0x5a, total);
    CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, in, in_off, ivs,
                                      out, total - 1, out_off),
             KMSENV_E_ARG);
    CHECK(all_byte(out, total, 0x5a));

    CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, in, in_off, ivs,
                                      out, total, out_off),
             KMSENV_OK);
    CHECK(out_off[0] == 0 && out_off[N] == total);
    for (i = 0; i < N; i++) {
        uint8_t *ct = malloc(sizes[i] ? sizes[i] : 1);
        size_t ml;
        CHECK(out_off[i + 1] - out_off[i] == kmsenv_message_size(sizeof(hdr), sizes[i]));
        CHECK_RC(kmsenv_gcm_seal(k, ivs + 12 * i, aad, sizeof(aad), in + in_off[i], sizes[i], ct,
                                 tag),
                 KMSENV_OK);
        ml = build_msg(expect, hdr, sizeof(hdr), ivs + 12 * i, 12, ct, sizes[i], tag, 16);
        CHECK(ml == out_off[i + 1] - out_off[i] && memcmp(out + out_off[i], expect, ml) == 0);
        free(ct);
    }

    /* and back */
    memset(back, 0, total);
    CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, out, out_off,
                                      back, total, back_off, status),
             KMSENV_OK);
    span = 0;
    for (i = 0; i < N; i++) {
        CHECK(status[i] == KMSENV_OK);
        CHECK(back_off[i] == span);
        CHECK(memcmp(back + span, in + in_off[i], sizes[i]) == 0);
        span += sizes[i];
    }
    CHECK(back_off[N] == span);
    CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, out, out_off,
                                      back, total - 1, back_off, status),
             KMSENV_E_ARG);

    /* IVs drawn inside: distinct and still a valid batch */
    CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, in, in_off, NULL,
                                      out, total, out_off),
             KMSENV_OK);
    for (i = 0; i < N; i++) {
        /* end - tag TLV - ct - ct header - IV */
        size_t at = out_off[i + 1] - 18 - sizes[i] - 1 - kmsenv__der_len_size(sizes[i]) - 12, j;
        memcpy(ivs + 12 * i, out + at, 12);
        CHECK(out[at - 2] == 0x04 && out[at - 1] == 12);
        for (j = 0; j < i; j++)
            CHECK(memcmp(ivs + 12 * i, ivs + 12 * j, 12) != 0);
    }
    CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, out, out_off,
                                      back, total, back_off, status),
             KMSENV_OK);
    CHECK(back_off[N] == span);
    for (i = 0; i < N; i++)
        CHECK(memcmp(back + back_off[i], in + in_off[i], sizes[i]) == 0);

    /* argument errors */
    {
        size_t bad_off[3] = {0, 10, 5};
        CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), 2, in, bad_off,
                                          NULL, out, total, out_off),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), 2, out, bad_off,
                                          back, total, back_off, status),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_seal_messages(k, NULL, 5, aad, sizeof(aad), N, in, in_off, NULL, out,
                                          total, out_off),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), NULL, 3, N, in, in_off, NULL, out,
                                          total, out_off),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, NULL, in_off,
                                          NULL, out, total, out_off),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, in, in_off,
                                          NULL, NULL, total, out_off),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_seal_messages(NULL, hdr, sizeof(hdr), aad, sizeof(aad), N, in, in_off,
                                          NULL, out, total, out_off),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, out, out_off,
                                          back, total, back_off, NULL),
                 KMSENV_E_ARG);
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), N, out, out_off,
                                          NULL, total, back_off, status),
                 KMSENV_E_ARG);
        out_off[0] = 99;
        CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), 0, NULL, NULL,
                                          NULL, NULL, 0, out_off),
                 KMSENV_OK);
        CHECK(out_off[0] == 0);
        back_off[0] = 99;
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, sizeof(hdr), aad, sizeof(aad), 0, NULL, NULL,
                                          NULL, 0, back_off, NULL),
                 KMSENV_OK);
        CHECK(back_off[0] == 0);
    }
    free(in), free(out), free(back), free(expect);
    kmsenv_key_free(k);
}

/* Opens one message held in a buffer of exactly its size, so ASan catches
 * any read past the end. Returns the status. */
static int open_one(kmsenv_key *k, const uint8_t *hdr, size_t hl, const uint8_t *aad, size_t al,
                    const uint8_t *msg, size_t len, uint8_t *pt, size_t *ptlen)
{
    uint8_t *copy = malloc(len ? len : 1), *out = malloc(len ? len : 1);
    size_t in_off[2] = {0, len}, out_off[2] = {77, 77};
    int status = 12345, rc;
    if (len)
        memcpy(copy, msg, len);
    memset(out, 0xaa, len ? len : 1);
    rc = kmsenv_gcm_open_messages(k, hdr, hl, aad, al, 1, copy, in_off, out, len, out_off, &status);
    CHECK(rc == status && ERR_peek_error() == 0);
    CHECK(out_off[0] == 0);
    if (status != KMSENV_OK) {
        /* a failed message gets zero length and leaves nothing behind */
        CHECK(out_off[1] == 0);
        size_t j, leaked = 0;
        for (j = 0; j < len; j++)
            leaked += out[j] != 0 && out[j] != 0xaa; /* wiped or untouched */
        CHECK(leaked == 0);
    } else if (pt != NULL) {
        memcpy(pt, out, out_off[1]);
        *ptlen = out_off[1];
    }
    free(copy), free(out);
    return status;
}

static void test_batch_malformed(void)
{
    kmsenv_key *k = new_key(KMSENV_CIPHER_AES, 32);
    uint8_t hdr[20], aad[8], iv[12], pt[40], ct[40], tag[16], msg[200], bad[300], got[300];
    size_t len, i, glen = 0;
    unsigned int x;

    make_header(hdr, sizeof(hdr));
    fill_random(aad, sizeof(aad));
    fill_random(iv, 12);
    fill_random(pt, sizeof(pt));
    CHECK_RC(kmsenv_gcm_seal(k, iv, aad, sizeof(aad), pt, 40, ct, tag), KMSENV_OK);
    len = build_msg(msg, hdr, 20, iv, 12, ct, 40, tag, 16);
    CHECK(len == kmsenv_message_size(20, 40) && len < 130 && msg[1] < 0x80);
    CHECK(open_one(k, hdr, 20, aad, 8, msg, len, got, &glen) == KMSENV_OK);
    CHECK(glen == 40 && memcmp(got, pt, 40) == 0);

    /* every truncation */
    for (i = 0; i < len; i++)
        CHECK(open_one(k, hdr, 20, aad, 8, msg, i, NULL, NULL) == KMSENV_E_FORMAT);
    /* trailing bytes after the message */
    memcpy(bad, msg, len);
    bad[len] = 0;
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len + 1, NULL, NULL) == KMSENV_E_FORMAT);
    bad[len + 1] = 0;
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len + 2, NULL, NULL) == KMSENV_E_FORMAT);
    /* another header of the same size */
    memcpy(bad, msg, len);
    bad[2 + 10] ^= 1;
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len, NULL, NULL) == KMSENV_E_FORMAT);
    /* non-minimal and indefinite outer lengths */
    bad[0] = 0x30, bad[1] = 0x81;
    memcpy(bad + 2, msg + 1, len - 1);
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len + 1, NULL, NULL) == KMSENV_E_FORMAT);
    bad[0] = 0x30, bad[1] = 0x82, bad[2] = 0;
    memcpy(bad + 3, msg + 1, len - 1);
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len + 2, NULL, NULL) == KMSENV_E_FORMAT);
    bad[0] = 0x30, bad[1] = 0x80;
    memcpy(bad + 2, msg + 2, len - 2);
    bad[len] = bad[len + 1] = 0;
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len + 2, NULL, NULL) == KMSENV_E_FORMAT);
    bad[0] = 0x30, bad[1] = 0x85, bad[2] = 0, bad[3] = 0, bad[4] = 0, bad[5] = 0, bad[6] = msg[1];
    memcpy(bad + 7, msg + 2, len - 2);
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len + 5, NULL, NULL) == KMSENV_E_FORMAT);
    /* wrong IV and tag sizes, a tag that claims more than is there */
    CHECK(open_one(k, hdr, 20, aad, 8, bad, build_msg(bad, hdr, 20, iv, 11, ct, 40, tag, 16), NULL,
                   NULL) == KMSENV_E_FORMAT);
    CHECK(open_one(k, hdr, 20, aad, 8, bad, build_msg(bad, hdr, 20, iv, 12, ct, 40, tag, 15), NULL,
                   NULL) == KMSENV_E_FORMAT);
    len = build_msg(bad, hdr, 20, iv, 12, ct, 40, tag, 16);
    bad[len - 17] = 0x11;
    CHECK(open_one(k, hdr, 20, aad, 8, bad, len, NULL, NULL) == KMSENV_E_FORMAT);
    /* a long-form ct length that should have been short */
    {
        size_t o = 0;
        uint8_t body[100];
        body[o++] = 0x04, body[o++] = 12;
        memcpy(body + o, iv, 12), o += 12;
        body[o++] = 0x04, body[o++] = 0x81, body[o++] = 40;
        memcpy(body + o, ct, 40), o += 40;
        body[o++] = 0x04, body[o++] = 16;
        memcpy(body + o, tag, 16), o += 16;
        i = 0;
        bad[i++] = 0x30, bad[i++] = (uint8_t)(20 + 2 + o);
        memcpy(bad + i, hdr, 20), i += 20;
        bad[i++] = 0x30, bad[i++] = (uint8_t)o;
        memcpy(bad + i, body, o), i += o;
        CHECK(open_one(k, hdr, 20, aad, 8, bad, i, NULL, NULL) == KMSENV_E_FORMAT);
    }
    /* every single-bit-ish corruption is caught one way or the other */
    len = build_msg(msg, hdr, 20, iv, 12, ct, 40, tag, 16);
    for (i = 0; i < len; i++) {
        static const uint8_t flips[] = {0x01, 0x80, 0xff};
        for (x = 0; x < 3; x++) {
            int st;
            memcpy(bad, msg, len);
            bad[i] ^= flips[x];
            st = open_one(k, hdr, 20, aad, 8, bad, len, NULL, NULL);
            CHECK(st == KMSENV_E_FORMAT || st == KMSENV_E_AUTH);
        }
    }
    /* random garbage, some of it with a plausible prefix */
    for (i = 0; i < 2000; i++) {
        size_t gl;
        int st;
        fill_random(bad, sizeof(bad));
        gl = bad[0] % 140;
        if (i % 2 && gl > 24) {
            bad[0] = 0x30, bad[1] = (uint8_t)(gl - 2 < 128 ? gl - 2 : bad[1]);
            memcpy(bad + 2, hdr, 20);
            bad[22] = 0x30;
        }
        st = open_one(k, hdr, 20, aad, 8, bad, gl, NULL, NULL);
        CHECK(st == KMSENV_E_FORMAT || st == KMSENV_E_AUTH);
    }

    /* a mixed batch: statuses per message, first failure returned */
    {
        uint8_t batch[1000], out[1000];
        size_t in_off[6], out_off[6], o = 0;
        int status[5];
        len = build_msg(msg, hdr, 20, iv, 12, ct, 40, tag, 16);
        in_off[0] = o;
        memcpy(batch + o, msg, len), o += len; /* OK */
        in_off[1] = o;
        memcpy(batch + o, msg, len - 1), o += len - 1; /* truncated: FORMAT */
        in_off[2] = o;
        memcpy(batch + o, msg, len), batch[o + len - 20] ^= 1, o += len; /* ct: AUTH */
        in_off[3] = o;
        memcpy(batch + o, msg, len), o += len; /* OK */
        in_off[4] = o;
        memcpy(batch + o, msg, len), batch[o + len - 1] ^= 1, o += len; /* tag: AUTH, last */
        in_off[5] = o;
        memset(out, 0xaa, sizeof(out));
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, 20, aad, 8, 5, batch, in_off, out, o, out_off,
                                          status),
                 KMSENV_E_FORMAT);
        CHECK(status[0] == KMSENV_OK && status[1] == KMSENV_E_FORMAT &&
              status[2] == KMSENV_E_AUTH && status[3] == KMSENV_OK && status[4] == KMSENV_E_AUTH);
        CHECK(out_off[0] == 0 && out_off[1] == 40 && out_off[2] == 40 && out_off[3] == 40 &&
              out_off[4] == 80 && out_off[5] == 80);
        CHECK(memcmp(out, pt, 40) == 0 && memcmp(out + 40, pt, 40) == 0);
        CHECK(all_byte(out + 80, 40, 0)); /* the last, failed one was wiped */
        /* first failure is AUTH when it comes first */
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, 20, aad, 8, 2, batch + in_off[2], in_off,
                                          out, o, out_off, status),
                 KMSENV_E_AUTH);
        /* wrong AAD: every message fails authentication */
        aad[0] ^= 1;
        CHECK_RC(kmsenv_gcm_open_messages(k, hdr, 20, aad, 8, 1, batch, in_off, out, o, out_off,
                                          status),
                 KMSENV_E_AUTH);
        aad[0] ^= 1;
    }
    kmsenv_key_free(k);
}

/* ---- message.c: one complete message per call ---- */

/* The same message built from the primitives: GMAC header tag, then the batch
 * writer with that header. */
static size_t reference_message(int cipher, const uint8_t *key, size_t keylen,
                                const uint8_t *fields, size_t fieldslen, const uint8_t *auth,
                                size_t authlen, const uint8_t *aad, size_t aadlen,
                                const uint8_t *pt, size_t ptlen, const uint8_t ivs[24],
                                uint8_t *out, size_t outcap)
{
    kmsenv_key *k = NULL;
    size_t hc = fieldslen + 2 + 12 + 2 + 16, hlen, offs[2] = {0, ptlen}, out_offs[2] = {0, 0};
    uint8_t *hdr = malloc(hc + 8), *p, tag[16];
    CHECK_RC(kmsenv_key_new(cipher, key, keylen, &k), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_seal(k, ivs, auth, authlen, NULL, 0, NULL, tag), KMSENV_OK);
    p = hdr;
    *p++ = 0x30;
    p = kmsenv__der_put_len(p, hc);
    memcpy(p, fields, fieldslen);
    p += fieldslen;
    *p++ = 0x04;
    *p++ = 12;
    memcpy(p, ivs, 12);
    p += 12;
    *p++ = 0x04;
    *p++ = 16;
    memcpy(p, tag, 16);
    p += 16;
    hlen = (size_t)(p - hdr);
    CHECK_RC(kmsenv_gcm_seal_messages(k, hdr, hlen, aad, aadlen, 1, pt, offs, ivs + 12, out,
                                      outcap, out_offs),
             KMSENV_OK);
    kmsenv_key_free(k);
    free(hdr);
    return out_offs[1];
}

/* The template form: the same bytes as kmsenv_seal_message_ex, the length as
 * the return value with any room to spare (untouched past the message), the
 * key wiped on every path, and its arguments checked. */
static void test_seal_tpl(int cipher, const uint8_t *key, size_t keylen, const uint8_t *fields,
                          size_t fieldslen, const uint8_t *auth, size_t authlen, const uint8_t *aad,
                          size_t aadlen, const uint8_t *pt, size_t n, const uint8_t *ivs,
                          const uint8_t *msg, size_t size)
{
    kmsenv_seal_tpl *t = NULL, *none = (kmsenv_seal_tpl *)1;
    uint8_t k[32], *out = malloc(size + 7);
    int64_t r;
    CHECK_RC(kmsenv_seal_tpl_new(cipher, fields, fieldslen, auth, authlen, aad, aadlen, &t), KMSENV_OK);
    CHECK(t != NULL && kmsenv_seal_tpl_size(t, n) == size && kmsenv_seal_tpl_size(NULL, n) == 0);
    memcpy(k, key, keylen);
    memset(out, 0xA5, size + 7);
    r = kmsenv_seal_with(t, k, keylen, pt, n, ivs, out, size + 7, 0);
    CHECK(r == (int64_t)size && memcmp(out, msg, size) == 0 && all_byte(out + size, 7, 0xA5));
    CHECK(memcmp(k, key, keylen) == 0);
    r = kmsenv_seal_with(t, k, keylen, pt, n, ivs, out, size, KMSENV_WIPE_KEY);
    CHECK(r == (int64_t)size && memcmp(out, msg, size) == 0 && all_byte(k, keylen, 0));
    memcpy(k, key, keylen); /* no room: refused, the key wiped, nothing left in out */
    r = kmsenv_seal_with(t, k, keylen, pt, n, ivs, out, size - 1, KMSENV_WIPE_KEY);
    CHECK(r == KMSENV_E_ARG && all_byte(k, keylen, 0));
    memcpy(k, key, keylen);
    CHECK(kmsenv_seal_with(NULL, k, keylen, pt, n, ivs, out, size, KMSENV_WIPE_KEY) == KMSENV_E_ARG);
    CHECK(all_byte(k, keylen, 0));
    memcpy(k, key, keylen);
    CHECK(kmsenv_seal_with(t, k, keylen ^ 1, pt, n, ivs, out, size, 0) < 0); /* a key of the wrong size */
    kmsenv_seal_tpl_free(t);
    kmsenv_seal_tpl_free(NULL);
    CHECK_RC(kmsenv_seal_tpl_new(7, fields, fieldslen, auth, authlen, aad, aadlen, &none), KMSENV_E_ARG);
    CHECK(none == NULL);
    CHECK_RC(kmsenv_seal_tpl_new(cipher, NULL, 1, auth, authlen, aad, aadlen, &none), KMSENV_E_ARG);
    CHECK_RC(kmsenv_seal_tpl_new(cipher, fields, fieldslen, auth, authlen, aad, aadlen, NULL), KMSENV_E_ARG);
    free(out);
}

/* The _ex variants: the same bytes and statuses as the plain calls, the
 * plaintext length as the return value, and with KMSENV_WIPE_KEY the caller's
 * key zeroed on every path, success or failure. */
static void test_message_ex(int cipher, const uint8_t *key, size_t keylen, const uint8_t *fields,
                            size_t fieldslen, const uint8_t *auth, size_t authlen, const uint8_t *aad,
                            size_t aadlen, const uint8_t *pt, size_t n, const uint8_t *ivs,
                            const uint8_t *msg, size_t size)
{
    uint8_t k[32], *out = malloc(size), *bad = malloc(size);
    size_t got = 0;
    int64_t r;
    memcpy(k, key, keylen);
    CHECK_RC(kmsenv_seal_message_ex(cipher, k, keylen, fields, fieldslen, auth, authlen, aad, aadlen,
                                    pt, n, ivs, out, size, &got, 0),
             KMSENV_OK);
    CHECK(got == size && memcmp(out, msg, size) == 0 && memcmp(k, key, keylen) == 0);
    CHECK_RC(kmsenv_seal_message_ex(cipher, k, keylen, fields, fieldslen, auth, authlen, aad, aadlen,
                                    pt, n, ivs, out, size, &got, KMSENV_WIPE_KEY),
             KMSENV_OK);
    CHECK(memcmp(out, msg, size) == 0 && all_byte(k, keylen, 0));
    memcpy(k, key, keylen); /* a failing seal (no room) wipes too */
    CHECK_RC(kmsenv_seal_message_ex(cipher, k, keylen, fields, fieldslen, auth, authlen, aad, aadlen,
                                    pt, n, ivs, out, size - 1, &got, KMSENV_WIPE_KEY),
             KMSENV_E_ARG);
    CHECK(all_byte(k, keylen, 0));
    memcpy(k, key, keylen);
    r = kmsenv_open_message_ex(cipher, k, keylen, auth, authlen, aad, aadlen, msg, size, out, size,
                               KMSENV_WIPE_KEY);
    CHECK(r == (int64_t)n && memcmp(out, pt, n) == 0 && all_byte(k, keylen, 0));
    memcpy(bad, msg, size);
    bad[size - 1] ^= 1;
    memcpy(k, key, keylen);
    r = kmsenv_open_message_ex(cipher, k, keylen, auth, authlen, aad, aadlen, bad, size, out, size,
                               KMSENV_WIPE_KEY);
    CHECK(r == KMSENV_E_AUTH && all_byte(out, n, 0) && all_byte(k, keylen, 0));
    memcpy(k, key, keylen);
    r = kmsenv_open_message_ex(cipher, k, keylen, auth, authlen, aad, aadlen, msg, size - 1, out, size, 0);
    CHECK(r == KMSENV_E_FORMAT && memcmp(k, key, keylen) == 0);
    test_seal_tpl(cipher, key, keylen, fields, fieldslen, auth, authlen, aad, aadlen, pt, n, ivs, msg, size);
    free(out);
    free(bad);
}

static void test_single_message(int cipher, size_t keylen)
{
    static const size_t sizes[] = {0, 1, 15, 16, 17, 1000, 70000};
    /* version, algorithm, an EDK SET and an empty context SET: realistic
     * fields; a second, long variant drives the heap path for the header. */
    static const uint8_t small_fields[] = {0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x31, 0x08,
                                           0x30, 0x06, 0x04, 0x01, 'a',  0x04, 0x01, 'b',
                                           0x31, 0x00};
    uint8_t key[32], auth[100], aad[40], ivs[24];
    size_t si, variant;
    fill_random(key, sizeof key);
    fill_random(auth, sizeof auth);
    fill_random(aad, sizeof aad);
    fill_random(ivs, sizeof ivs);
    for (variant = 0; variant < 2; variant++) {
        size_t fieldslen = variant ? 3000 : sizeof small_fields;
        uint8_t *fields = malloc(fieldslen);
        if (variant) {
            /* 02 01 01  02 01 02  31 L { 30 L { 04 01 'a'  04 L blob } }  31 00:
             * a header with one large EDK, so the header leaves the stack. */
            size_t blob = fieldslen - 6 - 4 - 4 - 3 - 4 - 2, seq = 3 + 4 + blob, set = 4 + seq;
            uint8_t *p = fields;
            memcpy(p, "\x02\x01\x01\x02\x01\x02", 6);
            p += 6;
            *p++ = 0x31;
            p = kmsenv__der_put_len(p, seq + 4);
            *p++ = 0x30;
            p = kmsenv__der_put_len(p, seq);
            memcpy(p, "\x04\x01" "a", 3);
            p += 3;
            *p++ = 0x04;
            p = kmsenv__der_put_len(p, blob);
            fill_random(p, blob);
            p += blob;
            *p++ = 0x31;
            *p++ = 0x00;
            CHECK((size_t)(p - fields) == fieldslen && set == seq + 4);
        } else {
            memcpy(fields, small_fields, fieldslen);
        }
        for (si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t n = sizes[si], size = kmsenv_sealed_size(fieldslen, n), got = 0, ptlen = 0, i;
            uint8_t *pt = malloc(n + 1), *msg = malloc(size), *ref = malloc(size);
            uint8_t *out = malloc(size), *other = malloc(size);
            fill_random(pt, n);
            CHECK(size > n + fieldslen);
            CHECK_RC(kmsenv_seal_message(cipher, key, keylen, fields, fieldslen, auth, sizeof auth,
                                         aad, sizeof aad, pt, n, ivs, msg, size, &got),
                     KMSENV_OK);
            CHECK(got == size);
            CHECK(reference_message(cipher, key, keylen, fields, fieldslen, auth, sizeof auth, aad,
                                    sizeof aad, pt, n, ivs, ref, size) == size);
            CHECK(memcmp(msg, ref, size) == 0);
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         msg, size, out, size, &ptlen),
                     KMSENV_OK);
            CHECK(ptlen == n && memcmp(out, pt, n) == 0);
            /* fresh IVs when none are given */
            CHECK_RC(kmsenv_seal_message(cipher, key, keylen, fields, fieldslen, auth, sizeof auth,
                                         aad, sizeof aad, pt, n, NULL, other, size, NULL),
                     KMSENV_OK);
            CHECK(memcmp(other, msg, size) != 0);
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         other, size, out, size, &ptlen),
                     KMSENV_OK);
            /* wrong auth fields: the header tag fails, nothing decrypted */
            auth[0] ^= 1;
            memset(out, 0xaa, size);
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         msg, size, out, size, &ptlen),
                     KMSENV_E_HEADER_AUTH);
            CHECK(all_byte(out, size, 0xaa));
            auth[0] ^= 1;
            /* wrong AAD: the body tag fails and the output is wiped */
            aad[0] ^= 1;
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         msg, size, out, size, &ptlen),
                     KMSENV_E_AUTH);
            CHECK(all_byte(out, n, 0));
            aad[0] ^= 1;
            /* the last byte is the body tag's: a flip is a body failure */
            msg[size - 1] ^= 1;
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         msg, size, out, size, &ptlen),
                     KMSENV_E_AUTH);
            msg[size - 1] ^= 1;
            if (n <= 17 && variant == 0) {
                /* every truncation is a format error, read within bounds (ASan) */
                for (i = 1; i < size; i++) {
                    uint8_t *cut = malloc(i);
                    memcpy(cut, msg, i);
                    CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad,
                                                 sizeof aad, cut, i, out, size, &ptlen),
                             KMSENV_E_FORMAT);
                    free(cut);
                }
                /* a trailing byte too */
                {
                    uint8_t *longer = malloc(size + 1);
                    memcpy(longer, msg, size);
                    longer[size] = 0;
                    CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad,
                                                 sizeof aad, longer, size + 1, out, size + 1,
                                                 &ptlen),
                             KMSENV_E_FORMAT);
                    free(longer);
                }
                /* Every bit flip fails, except inside the fields: the core does
                 * not interpret them, the caller authenticates them through
                 * `auth` (derived from the same bytes). Short lengths here, so
                 * the fields start at offset 4: 30 L 30 L fields. */
                CHECK(msg[0] == 0x30 && msg[1] < 0x80 && msg[2] == 0x30 && msg[3] < 0x80);
                for (i = 0; i < size * 8; i++) {
                    int rc;
                    size_t at = i / 8;
                    msg[at] ^= (uint8_t)(1u << (i % 8));
                    rc = kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad,
                                             sizeof aad, msg, size, out, size, &ptlen);
                    if (at >= 4 && at < 4 + fieldslen)
                        CHECK(rc == KMSENV_OK || rc == KMSENV_E_FORMAT);
                    else
                        CHECK(rc == KMSENV_E_FORMAT || rc == KMSENV_E_AUTH ||
                              rc == KMSENV_E_HEADER_AUTH);
                    msg[at] ^= (uint8_t)(1u << (i % 8));
                }
            }
            /* argument errors */
            CHECK_RC(kmsenv_seal_message(cipher, key, keylen, fields, fieldslen, auth, sizeof auth,
                                         aad, sizeof aad, pt, n, ivs, msg, size - 1, NULL),
                     KMSENV_E_ARG);
            CHECK_RC(kmsenv_seal_message(cipher, key, keylen, NULL, 5, auth, sizeof auth, aad,
                                         sizeof aad, pt, n, ivs, msg, size, NULL),
                     KMSENV_E_ARG);
            CHECK_RC(kmsenv_seal_message(cipher, key, 24, fields, fieldslen, auth, sizeof auth,
                                         aad, sizeof aad, pt, n, ivs, msg, size, NULL),
                     KMSENV_E_ARG);
            /* the exact plaintext size is enough room; one byte less is not */
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         msg, size, out, n, &ptlen),
                     KMSENV_OK);
            if (n > 0)
                CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad,
                                             sizeof aad, msg, size, out, n - 1, &ptlen),
                         KMSENV_E_ARG);
            CHECK_RC(kmsenv_open_message(cipher, key, keylen, auth, sizeof auth, aad, sizeof aad,
                                         msg, size, out, size, NULL),
                     KMSENV_E_ARG);
            test_message_ex(cipher, key, keylen, fields, fieldslen, auth, sizeof auth, aad, sizeof aad,
                            pt, n, ivs, msg, size);
            free(pt);
            free(msg);
            free(ref);
            free(out);
            free(other);
        }
        free(fields);
    }
}

#if defined(__linux__) && defined(MADV_HUGEPAGE)
/* 1 if the mapping holding addr carries the "hg" flag (MADV_HUGEPAGE) in
 * /proc/self/smaps, 0 if not, -1 if no mapping holds it. */
static int smaps_hg(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[1024];
    unsigned long lo, hi, a = (unsigned long)(uintptr_t)addr;
    int inside = 0, result = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            inside = lo <= a && a < hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            result = strstr(line, " hg") != NULL;
            break;
        }
    }
    fclose(f);
    return result;
}

/* The hint advises exactly the whole 2 MiB pages inside the buffer, only for
 * buffers of KMSENV_HUGEPAGE_MIN bytes or more, and not with
 * KMSENV_HUGEPAGES=0. */
static void test_hugepage_hint(void)
{
    const size_t huge = (size_t)2 << 20, maplen = (size_t)16 << 20;
    uint8_t *map, *base, *buf;
    size_t n = KMSENV_HUGEPAGE_MIN + huge / 2;
    int probe;

    map = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(map != MAP_FAILED);
    if (map == MAP_FAILED)
        return;
    base = (uint8_t *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
    probe = madvise(base, huge, MADV_HUGEPAGE);
    munmap(map, maplen);
    if (probe != 0) {
        printf("SKIP hugepage hint (this kernel has no transparent huge pages)\n");
        return;
    }

    map = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(map != MAP_FAILED);
    if (map == MAP_FAILED)
        return;
    base = (uint8_t *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
    buf = base + 4096; /* starts inside a huge page: that one is not advised */
    CHECK(smaps_hg(base + huge) == 0);

    kmsenv__hugepage_hint(buf, KMSENV_HUGEPAGE_MIN - 1); /* too small */
    CHECK(smaps_hg(base + huge) == 0);
    setenv("KMSENV_HUGEPAGES", "0", 1);
    kmsenv__hugepage_hint(buf, n);
    CHECK(smaps_hg(base + huge) == 0);
    unsetenv("KMSENV_HUGEPAGES");

    kmsenv__hugepage_hint(buf, n);
    CHECK(smaps_hg(buf) == 0);                  /* the partial first page */
    CHECK(smaps_hg(base + huge) == 1);          /* the first whole one */
    CHECK(smaps_hg(base + 3 * huge) == 1);      /* the last whole one, */
    CHECK(smaps_hg(base + 4 * huge) == 0);      /* and the one buf + n falls in */
    CHECK(buf + n > base + 4 * huge && buf + n < base + 5 * huge);
    kmsenv__hugepage_hint(NULL, n); /* nothing to advise */
    munmap(map, maplen);
}
#else
static void test_hugepage_hint(void)
{
    printf("SKIP hugepage hint (not Linux, or no MADV_HUGEPAGE)\n");
}
#endif

int main(void)
{
    test_misc();
    test_key_args();
    test_nist_gcm();
    test_sm4_block();
    test_sm4_gcm_rfc8998();
    test_sm4_ctr32_wrap();
    test_tamper();
    test_gcm_args();
    test_gcm_vs_reference();
    test_legacy_kat();
    test_legacy_ctr_carry();
    test_legacy_pkcs7();
    test_legacy_bad_padding();
    test_legacy_args();
    test_der_helpers();
    test_batch_roundtrip(KMSENV_CIPHER_AES, 16);
    test_batch_roundtrip(KMSENV_CIPHER_AES, 32);
    test_batch_roundtrip(KMSENV_CIPHER_SM4, 16);
    test_batch_malformed();
    test_single_message(KMSENV_CIPHER_AES, 16);
    test_single_message(KMSENV_CIPHER_AES, 32);
    test_single_message(KMSENV_CIPHER_SM4, 16);
    test_hugepage_hint();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
