/*
 * sm2.c: SM3 and SM2 signatures (GB/T 32918.2) for kmsenv.signing.
 *
 * KMS signs a digest, never the message: for SM2DSA the digest is
 * e = SM3(Z || M) with Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA).
 * The core computes Z itself (the formula is public and fixed, and doing it
 * here keeps digest-mode verification, where the caller already holds e, on
 * the same path as message mode) and verifies e with OpenSSL's SM2 signature
 * provider (EVP_PKEY_verify over the digest, no distinguishing-ID handling in
 * OpenSSL at all).
 *
 * Public keys travel as x || y (64 bytes, big-endian); the Python layer takes
 * them out of the SubjectPublicKeyInfo, which `cryptography` cannot load for
 * SM2. Signatures are DER SEQUENCE { INTEGER r, INTEGER s }, checked here for
 * strict DER before OpenSSL sees them (OpenSSL 3.0 also re-encodes and
 * compares; this check does not depend on that).
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "internal.h"

KMSENV_STATIC_ASSERT(KMSENV_SM3_LEN == 32, "SM3 digests are 32 bytes");
KMSENV_STATIC_ASSERT(KMSENV_SM2_POINT_LEN == 64, "an SM2 point is x || y of 32 bytes each");

/* sm2p256v1 (GB/T 32918.5): a, b, xG, yG, as Z takes them. */
static const uint8_t sm2_curve[128] = {
    0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFC,
    0x28, 0xE9, 0xFA, 0x9E, 0x9D, 0x9F, 0x5E, 0x34, 0x4D, 0x5A, 0x9E, 0x4B, 0xCF, 0x65, 0x09, 0xA7,
    0xF3, 0x97, 0x89, 0xF5, 0x15, 0xAB, 0x8F, 0x92, 0xDD, 0xBC, 0xBD, 0x41, 0x4D, 0x94, 0x0E, 0x93,
    0x32, 0xC4, 0xAE, 0x2C, 0x1F, 0x19, 0x81, 0x19, 0x5F, 0x99, 0x04, 0x46, 0x6A, 0x39, 0xC9, 0x94,
    0x8F, 0xE3, 0x0B, 0xBF, 0xF2, 0x66, 0x0B, 0xE1, 0x71, 0x5A, 0x45, 0x89, 0x33, 0x4C, 0x74, 0xC7,
    0xBC, 0x37, 0x36, 0xA2, 0xF4, 0xF6, 0x77, 0x9C, 0x59, 0xBD, 0xCE, 0xE3, 0x6B, 0x69, 0x21, 0x53,
    0xD0, 0xA9, 0x87, 0x7C, 0xC6, 0x2A, 0x47, 0x40, 0x02, 0xDF, 0x32, 0xE5, 0x21, 0x39, 0xF0, 0xA0,
};

/* ---------------------------------------------------------------- SM3 */

/* SM3 over up to two pieces (Z || M needs two; a plain digest one). */
static int sm3_pieces(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen, uint8_t *out)
{
    EVP_MD *md = EVP_MD_fetch(NULL, "SM3", NULL);
    EVP_MD_CTX *ctx;
    unsigned int outlen = 0;
    int rc = KMSENV_OK;

    if (md == NULL) { /* SM3 disabled in this libcrypto */
        ERR_clear_error();
        return KMSENV_E_UNSUPPORTED;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        EVP_MD_free(md);
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    if (EVP_DigestInit_ex(ctx, md, NULL) != 1 || (alen && EVP_DigestUpdate(ctx, a, alen) != 1) ||
        (blen && EVP_DigestUpdate(ctx, b, blen) != 1) || EVP_DigestFinal_ex(ctx, out, &outlen) != 1 ||
        outlen != KMSENV_SM3_LEN) {
        kmsenv_wipe(out, KMSENV_SM3_LEN);
        ERR_clear_error();
        rc = KMSENV_E_CRYPTO;
    }
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    return rc;
}

int kmsenv_sm3(const uint8_t *in, size_t inlen, uint8_t *out)
{
    if (KMSENV_BAD_BUF(in, inlen) || out == NULL)
        return KMSENV_E_ARG;
    return sm3_pieces(in, inlen, NULL, 0, out);
}

/* ---------------------------------------------------------------- keys */

static int little_endian(void)
{
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* An SM2 EVP_PKEY from x || y (and, for signing, the private scalar d, 32
 * bytes big-endian). EVP_PKEY_fromdata decodes the point with
 * EC_POINT_oct2point, which refuses a point that is not on the curve. */
static int sm2_pkey(const uint8_t *pub, const uint8_t *priv, EVP_PKEY **out)
{
    uint8_t point[1 + KMSENV_SM2_POINT_LEN];
    uint8_t scalar[KMSENV_SM2_PRIV_LEN]; /* OSSL_PARAM integers are native-endian */
    OSSL_PARAM params[4], *p = params;
    EVP_PKEY_CTX *ctx;
    int rc = KMSENV_OK, i;

    *out = NULL;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"SM2", 0);
    if (pub != NULL) {
        point[0] = 0x04;
        memcpy(point + 1, pub, KMSENV_SM2_POINT_LEN);
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point);
    }
    if (priv != NULL) {
        for (i = 0; i < KMSENV_SM2_PRIV_LEN; i++)
            scalar[i] = priv[little_endian() ? KMSENV_SM2_PRIV_LEN - 1 - i : i];
        *p++ = OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_PRIV_KEY, scalar, sizeof scalar);
    }
    *p = OSSL_PARAM_construct_end();

    ctx = EVP_PKEY_CTX_new_from_name(NULL, "SM2", NULL);
    if (ctx == NULL) {
        rc = KMSENV_E_UNSUPPORTED;
    } else if (EVP_PKEY_fromdata_init(ctx) != 1 ||
               EVP_PKEY_fromdata(ctx, out, priv != NULL ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY,
                                 params) != 1) {
        rc = KMSENV_E_ARG; /* not a point on sm2p256v1 (or a bad scalar) */
        *out = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    kmsenv_wipe(scalar, sizeof scalar);
    ERR_clear_error();
    return rc;
}

int kmsenv_sm2_check_public_key(const uint8_t *pub)
{
    EVP_PKEY *pkey;
    int rc;

    if (pub == NULL)
        return KMSENV_E_ARG;
    rc = sm2_pkey(pub, NULL, &pkey);
    EVP_PKEY_free(pkey);
    return rc;
}

/* ---------------------------------------------------------------- Z and e */

int kmsenv_sm2_z(const uint8_t *pub, const uint8_t *id, size_t idlen, uint8_t *out)
{
    /* ENTL (2) + ID + a, b, xG, yG (128) + xA, yA (64) */
    uint8_t buf[2 + KMSENV_SM2_ID_MAX + sizeof sm2_curve + KMSENV_SM2_POINT_LEN];
    size_t n = 0;
    int rc;

    if (pub == NULL || out == NULL || KMSENV_BAD_BUF(id, idlen) || idlen > KMSENV_SM2_ID_MAX)
        return KMSENV_E_ARG;
    rc = kmsenv_sm2_check_public_key(pub);
    if (rc != KMSENV_OK)
        return rc;
    buf[n++] = (uint8_t)((idlen * 8) >> 8); /* ENTL: the ID's length in bits, 16 bits */
    buf[n++] = (uint8_t)(idlen * 8);
    if (idlen)
        memcpy(buf + n, id, idlen);
    n += idlen;
    memcpy(buf + n, sm2_curve, sizeof sm2_curve);
    n += sizeof sm2_curve;
    memcpy(buf + n, pub, KMSENV_SM2_POINT_LEN);
    n += KMSENV_SM2_POINT_LEN;
    return sm3_pieces(buf, n, NULL, 0, out);
}

int kmsenv_sm2_digest(const uint8_t *pub, const uint8_t *id, size_t idlen, const uint8_t *msg, size_t msglen,
                      uint8_t *out)
{
    uint8_t z[KMSENV_SM3_LEN];
    int rc;

    if (out == NULL || KMSENV_BAD_BUF(msg, msglen))
        return KMSENV_E_ARG;
    rc = kmsenv_sm2_z(pub, id, idlen, z);
    if (rc == KMSENV_OK)
        rc = sm3_pieces(z, sizeof z, msg, msglen, out);
    return rc;
}

/* ---------------------------------------------------------------- DER */

/* One minimal, non-negative, non-zero-length DER INTEGER of at most 33
 * content bytes at sig[*pos]; advances *pos. */
static int der_uint(const uint8_t *sig, size_t end, size_t *pos)
{
    size_t at = *pos, len;

    if (end - at < 2 || sig[at] != 0x02)
        return 0;
    len = sig[at + 1];
    at += 2;
    if (len == 0 || len > 33 || len > end - at) /* also refuses long-form lengths (>= 0x80) */
        return 0;
    if (sig[at] & 0x80) /* negative */
        return 0;
    if (len > 1 && sig[at] == 0 && !(sig[at + 1] & 0x80)) /* superfluous leading zero */
        return 0;
    *pos = at + len;
    return 1;
}

/* Strict DER SEQUENCE { INTEGER r, INTEGER s } filling sig[0..siglen) exactly. */
static int strict_der_signature(const uint8_t *sig, size_t siglen)
{
    size_t pos = 2;

    if (siglen < 8 || siglen > KMSENV_SM2_SIG_MAX || sig[0] != 0x30 || sig[1] != siglen - 2)
        return 0;
    return der_uint(sig, siglen, &pos) && der_uint(sig, siglen, &pos) && pos == siglen;
}

/* ---------------------------------------------------------------- verify / sign */

int kmsenv_sm2_verify_digest(const uint8_t *pub, const uint8_t *digest, const uint8_t *sig, size_t siglen)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    int rc;

    if (pub == NULL || digest == NULL || KMSENV_BAD_BUF(sig, siglen))
        return KMSENV_E_ARG;
    rc = sm2_pkey(pub, NULL, &pkey);
    if (rc != KMSENV_OK)
        return rc;
    if (!strict_der_signature(sig, siglen)) {
        EVP_PKEY_free(pkey);
        return KMSENV_E_AUTH;
    }
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (ctx == NULL) {
        rc = KMSENV_E_NOMEM;
    } else if (EVP_PKEY_verify_init(ctx) != 1) {
        rc = KMSENV_E_UNSUPPORTED;
    } else {
        /* 1 verifies; 0 does not; < 0 for r or s out of [1, n-1] and the like. */
        rc = EVP_PKEY_verify(ctx, sig, siglen, digest, KMSENV_SM3_LEN) == 1 ? KMSENV_OK : KMSENV_E_AUTH;
    }
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return rc;
}

int kmsenv_sm2_sign_digest(const uint8_t *priv, const uint8_t *pub, const uint8_t *digest, uint8_t *sig,
                           size_t sigcap, size_t *siglen)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    size_t len = sigcap;
    int rc;

    if (priv == NULL || pub == NULL || digest == NULL || sig == NULL || siglen == NULL ||
        sigcap < KMSENV_SM2_SIG_MAX)
        return KMSENV_E_ARG;
    *siglen = 0;
    rc = sm2_pkey(pub, priv, &pkey);
    if (rc != KMSENV_OK)
        return rc;
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (ctx == NULL)
        rc = KMSENV_E_NOMEM;
    else if (EVP_PKEY_sign_init(ctx) != 1)
        rc = KMSENV_E_UNSUPPORTED;
    else if (EVP_PKEY_sign(ctx, sig, &len, digest, KMSENV_SM3_LEN) != 1 || len > sigcap)
        rc = KMSENV_E_CRYPTO;
    else
        *siglen = len;
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey); /* EC keys clear their private scalar when freed */
    ERR_clear_error();
    return rc;
}
