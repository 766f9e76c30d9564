/*
 * test_sm2.c: C-only tests for sm2.c (SM3, the SM2 Z value and digest, SM2
 * signature verification and signing). Known answers: SM3 from GB/T 32905
 * appendix A, the SM2 key, message, Z, digest and signature from the public
 * gmsm SM2 guide (kms-local-server.md section 14.4).
 */
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "internal.h"
#include "check.h"

static const char *D_HEX = "6c5a0a0b2eed3cbec3e4f1252bfe0e28c504a1c6bf1999eebb0af9ef0f8e6c85";
static const char *PUB_HEX = "8356e642a40ebd18d29ba3532fbd9f3bbee8f027c3f6f39a5ba2f870369f9988"
                             "981f5efe55d1c5cdf6c0ef2b070847a14f7fdf4272a8df09c442f3058af94ba1";
static const char *Z_HEX = "1a5970f7804cbe332809ecb70e4e8de3cee55309321f568a14b12d05270b236d";
static const char *E_HEX = "4cac379502f9c465060ae33889cc95606fbc16f2128733f95a7539ca9d6f5290";
static const char *SIG_HEX = "304402205b3a799bd94c9063120d7286769220af6b0fa127009af3e873c0e8742edc5f89"
                             "0220097968a4c8b040fd548d1456b33f470cabd8456bfea53e8a828f92f6d4bdcd77";
static const char *MSG = "ShangMi SM2 Sign Standard";
static const uint8_t ID[] = "1234567812345678";

static uint8_t pub[64], priv[32], z_want[32], e_want[32], sig[80];
static size_t siglen;

static void test_sm3(void)
{
    uint8_t out[32], want[32];
    uint8_t abc16[64];
    size_t i;

    unhex("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0", want);
    CHECK_RC(kmsenv_sm3((const uint8_t *)"abc", 3, out), KMSENV_OK);
    CHECK(memcmp(out, want, 32) == 0);
    for (i = 0; i < sizeof abc16; i++)
        abc16[i] = (uint8_t)"abcd"[i % 4];
    unhex("debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732", want);
    CHECK_RC(kmsenv_sm3(abc16, sizeof abc16, out), KMSENV_OK);
    CHECK(memcmp(out, want, 32) == 0);
    unhex("1ab21d8355cfa17f8e61194831e81a8f22bec8c728fefb747ed035eb5082aa2b", want);
    CHECK_RC(kmsenv_sm3(NULL, 0, out), KMSENV_OK);
    CHECK(memcmp(out, want, 32) == 0);
    CHECK_RC(kmsenv_sm3(NULL, 1, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm3(abc16, 1, NULL), KMSENV_E_ARG);
}

static void test_z_and_digest(void)
{
    uint8_t out[32], bad[64];
    static uint8_t long_id[KMSENV_SM2_ID_MAX + 1];

    CHECK_RC(kmsenv_sm2_z(pub, ID, 16, out), KMSENV_OK);
    CHECK(memcmp(out, z_want, 32) == 0);
    CHECK_RC(kmsenv_sm2_digest(pub, ID, 16, (const uint8_t *)MSG, strlen(MSG), out), KMSENV_OK);
    CHECK(memcmp(out, e_want, 32) == 0);
    /* Another ID gives another Z. */
    CHECK_RC(kmsenv_sm2_z(pub, (const uint8_t *)"ALICE123@YAHOO.COM", 18, out), KMSENV_OK);
    CHECK(memcmp(out, z_want, 32) != 0);
    /* The longest ID ENTL can express works; one more byte does not. */
    CHECK_RC(kmsenv_sm2_z(pub, long_id, KMSENV_SM2_ID_MAX, out), KMSENV_OK);
    CHECK_RC(kmsenv_sm2_z(pub, long_id, KMSENV_SM2_ID_MAX + 1, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_z(pub, NULL, 0, out), KMSENV_OK);
    CHECK_RC(kmsenv_sm2_z(pub, NULL, 1, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_z(NULL, ID, 16, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_digest(pub, ID, 16, NULL, 1, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_digest(pub, ID, 16, NULL, 0, out), KMSENV_OK);
    /* A point off the curve is refused before anything is hashed. */
    memcpy(bad, pub, 64);
    bad[63] ^= 1;
    CHECK_RC(kmsenv_sm2_z(bad, ID, 16, out), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_check_public_key(bad), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_check_public_key(pub), KMSENV_OK);
}

static void test_verify(void)
{
    uint8_t e[32], s[80], bad[64];
    size_t n;

    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, sig, siglen), KMSENV_OK);
    /* a flipped digest bit, signature bit */
    memcpy(e, e_want, 32);
    e[0] ^= 1;
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e, sig, siglen), KMSENV_E_AUTH);
    memcpy(s, sig, siglen);
    s[siglen - 1] ^= 1;
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, siglen), KMSENV_E_AUTH);
    /* SM3(M) without Z is not what was signed */
    CHECK_RC(kmsenv_sm3((const uint8_t *)MSG, strlen(MSG), e), KMSENV_OK);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e, sig, siglen), KMSENV_E_AUTH);
    /* a trailing byte */
    memcpy(s, sig, siglen);
    s[siglen] = 0;
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, siglen + 1), KMSENV_E_AUTH);
    /* truncated */
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, sig, siglen - 1), KMSENV_E_AUTH);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, NULL, 0), KMSENV_E_AUTH);
    /* SEQUENCE length in long form: 30 81 44 ... */
    s[0] = 0x30;
    s[1] = 0x81;
    memcpy(s + 2, sig + 1, siglen - 1);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, siglen + 1), KMSENV_E_AUTH);
    /* r with a superfluous leading zero: 30 45 02 21 00 <r> 02 20 <s> */
    n = 0;
    s[n++] = 0x30;
    s[n++] = 0x45;
    s[n++] = 0x02;
    s[n++] = 0x21;
    s[n++] = 0x00;
    memcpy(s + n, sig + 4, 32);
    n += 32;
    memcpy(s + n, sig + 36, 34);
    n += 34;
    CHECK(n == siglen + 1);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, n), KMSENV_E_AUTH);
    /* r = 0, s = 1 (DER-valid, out of range) and a negative INTEGER */
    memcpy(s, "\x30\x06\x02\x01\x00\x02\x01\x01", 8);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, 8), KMSENV_E_AUTH);
    memcpy(s, "\x30\x06\x02\x01\x80\x02\x01\x01", 8);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, 8), KMSENV_E_AUTH);
    /* too long for an SM2 signature */
    memset(s, 0, sizeof s);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, sizeof s), KMSENV_E_AUTH);
    /* bad key, bad pointers */
    memcpy(bad, pub, 64);
    bad[0] ^= 0x40;
    CHECK_RC(kmsenv_sm2_verify_digest(bad, e_want, sig, siglen), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_verify_digest(NULL, e_want, sig, siglen), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, NULL, sig, siglen), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, NULL, 8), KMSENV_E_ARG);
}

static void test_sign(void)
{
    uint8_t s[KMSENV_SM2_SIG_MAX], s2[KMSENV_SM2_SIG_MAX];
    size_t n = 0, n2 = 0;
    int i;

    for (i = 0; i < 8; i++) {
        CHECK_RC(kmsenv_sm2_sign_digest(priv, pub, e_want, s, sizeof s, &n), KMSENV_OK);
        CHECK(n >= 8 && n <= KMSENV_SM2_SIG_MAX);
        CHECK_RC(kmsenv_sm2_verify_digest(pub, e_want, s, n), KMSENV_OK);
    }
    /* randomized: two signatures of one digest differ */
    CHECK_RC(kmsenv_sm2_sign_digest(priv, pub, e_want, s2, sizeof s2, &n2), KMSENV_OK);
    CHECK(n != n2 || memcmp(s, s2, n) != 0);
    CHECK_RC(kmsenv_sm2_sign_digest(priv, pub, e_want, s, sizeof s - 1, &n), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_sign_digest(NULL, pub, e_want, s, sizeof s, &n), KMSENV_E_ARG);
    CHECK_RC(kmsenv_sm2_sign_digest(priv, pub, e_want, s, sizeof s, NULL), KMSENV_E_ARG);
}

/* OpenSSL's own SM2 with the distinguishing ID (EVP_PKEY_CTX_set1_id, Z
 * computed inside OpenSSL over the message) agrees with the core's Z and
 * digest: a signature the core makes over SM3(Z || M) verifies as OpenSSL's
 * SM3withSM2 signature of M, and not under another ID. */
static int openssl_verify_message(const uint8_t *id, size_t idlen, const uint8_t *s, size_t n)
{
    uint8_t point[65];
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_from_name(NULL, "SM2", NULL);
    EVP_PKEY *pkey = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = -1;

    point[0] = 4;
    memcpy(point + 1, pub, 64);
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"SM2", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point);
    params[2] = OSSL_PARAM_construct_end();
    if (kctx && md && EVP_PKEY_fromdata_init(kctx) == 1 &&
        EVP_PKEY_fromdata(kctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1 &&
        (pctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL)) != NULL &&
        EVP_PKEY_CTX_set1_id(pctx, id, (int)idlen) == 1) {
        EVP_MD_CTX_set_pkey_ctx(md, pctx);
        if (EVP_DigestVerifyInit_ex(md, NULL, "SM3", NULL, NULL, pkey, NULL) == 1)
            ok = EVP_DigestVerify(md, s, n, (const uint8_t *)MSG, strlen(MSG)) == 1;
    }
    EVP_MD_CTX_free(md);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(kctx);
    ERR_clear_error();
    return ok;
}

static void test_against_openssl_id(void)
{
    uint8_t s[KMSENV_SM2_SIG_MAX];
    size_t n = 0;

    CHECK(openssl_verify_message(ID, 16, sig, siglen) == 1);
    CHECK_RC(kmsenv_sm2_sign_digest(priv, pub, e_want, s, sizeof s, &n), KMSENV_OK);
    CHECK(openssl_verify_message(ID, 16, s, n) == 1);
    CHECK(openssl_verify_message((const uint8_t *)"ALICE123@YAHOO.COM", 18, s, n) == 0);
}

int main(void)
{
    CHECK(unhex(PUB_HEX, pub) == 64);
    CHECK(unhex(D_HEX, priv) == 32);
    CHECK(unhex(Z_HEX, z_want) == 32);
    CHECK(unhex(E_HEX, e_want) == 32);
    siglen = unhex(SIG_HEX, sig);
    CHECK(siglen == 70);
    test_sm3();
    test_z_and_digest();
    test_verify();
    test_sign();
    test_against_openssl_id();
    printf("test_sm2: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
