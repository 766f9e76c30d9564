/* legacy.c: the unauthenticated CBC / CBC-PKCS7 / CTR modes older messages
 * use. Rare, so the context is re-keyed per call; PKCS#7 is done here so the
 * unpadding check is constant time and never depends on EVP's. */
#include <openssl/err.h>

#include "internal.h"

static int mode_ok(int mode)
{
    return mode == KMSENV_MODE_CBC || mode == KMSENV_MODE_CBC_PKCS7 || mode == KMSENV_MODE_CTR;
}

static const EVP_CIPHER *legacy_cipher(const kmsenv_key *k, int mode)
{
    int ctr = mode == KMSENV_MODE_CTR;
    if (k->cipher == KMSENV_CIPHER_SM4)
        return ctr ? EVP_sm4_ctr() : EVP_sm4_cbc();
    if (k->keylen == 16)
        return ctr ? EVP_aes_128_ctr() : EVP_aes_128_cbc();
    return ctr ? EVP_aes_256_ctr() : EVP_aes_256_cbc();
}

static int legacy_begin(kmsenv_key *k, int mode, const uint8_t *iv, int enc)
{
    if (k->legacy == NULL && (k->legacy = EVP_CIPHER_CTX_new()) == NULL)
        return KMSENV_E_NOMEM;
    if (EVP_CipherInit_ex(k->legacy, legacy_cipher(k, mode), NULL, k->raw, iv, enc) != 1 ||
        EVP_CIPHER_CTX_set_padding(k->legacy, 0) != 1)
        return KMSENV_E_CRYPTO;
    return KMSENV_OK;
}

/* len is block aligned except for CTR's tail, so EVP returns every byte. */
static int legacy_run(EVP_CIPHER_CTX *c, const uint8_t *in, size_t len, uint8_t *out)
{
    int outl;
    while (len != 0) {
        size_t step = len < KMSENV_EVP_CHUNK ? len : KMSENV_EVP_CHUNK;
        if (EVP_CipherUpdate(c, out, &outl, in, (int)step) != 1 || (size_t)outl != step)
            return KMSENV_E_CRYPTO;
        in += step;
        out += step;
        len -= step;
    }
    return KMSENV_OK;
}

static int common_args_ok(const kmsenv_key *k, int mode, const uint8_t *iv, const uint8_t *in,
                          size_t inlen, size_t *outlen)
{
    return k != NULL && mode_ok(mode) && iv != NULL && outlen != NULL &&
           !KMSENV_BAD_BUF(in, inlen);
}

int kmsenv_legacy_encrypt(kmsenv_key *k, int mode, const uint8_t *iv, const uint8_t *in,
                          size_t inlen, uint8_t *out, size_t outcap, size_t *outlen)
{
    size_t whole = inlen, need = inlen;
    int rc;

    if (!common_args_ok(k, mode, iv, in, inlen, outlen))
        return KMSENV_E_ARG;
    *outlen = 0;
    if (mode == KMSENV_MODE_CBC && inlen % 16 != 0)
        return KMSENV_E_ARG;
    if (mode == KMSENV_MODE_CBC_PKCS7) {
        whole = inlen - inlen % 16;
        if (whole > SIZE_MAX - 16)
            return KMSENV_E_ARG;
        need = whole + 16;
    }
    if (need > outcap || KMSENV_BAD_BUF(out, need) || kmsenv__partial_overlap(in, out, inlen))
        return KMSENV_E_ARG;

    rc = legacy_begin(k, mode, iv, 1);
    if (rc == KMSENV_OK)
        rc = legacy_run(k->legacy, in, whole, out);
    if (rc == KMSENV_OK && mode == KMSENV_MODE_CBC_PKCS7) {
        unsigned char last[16];
        size_t tail = inlen - whole;
        if (tail != 0)
            memcpy(last, in + whole, tail); /* read before out may overwrite it */
        memset(last + tail, (int)(16 - tail), 16 - tail);
        rc = legacy_run(k->legacy, last, 16, out + whole);
        kmsenv_wipe(last, sizeof(last));
    }
    if (rc != KMSENV_OK) {
        kmsenv_wipe(out, need);
        ERR_clear_error();
        return rc;
    }
    *outlen = need;
    return KMSENV_OK;
}

/* All-ones when x == 0, else 0; no branches on secret bytes. */
static unsigned int ct_is_zero(unsigned int x)
{
    return 0u - ((~x & (x - 1u)) >> (sizeof(unsigned int) * CHAR_BIT - 1));
}

/* All-ones when a < b, for a, b < 2^31. */
static unsigned int ct_lt(unsigned int a, unsigned int b)
{
    return 0u - ((a - b) >> (sizeof(unsigned int) * CHAR_BIT - 1));
}

/* Returns the padding length (1..16) when the block is well padded, else 0,
 * looking at all 16 bytes whatever their values. */
static size_t pkcs7_check(const unsigned char last[16])
{
    unsigned int pad = last[15];
    unsigned int bad = ct_is_zero(pad) | ct_lt(16u, pad);
    unsigned int i;
    for (i = 0; i < 16; i++) {
        unsigned int in_pad = ct_lt(15u - i, pad); /* i >= 16 - pad */
        bad |= in_pad & ~ct_is_zero((unsigned int)last[i] ^ pad);
    }
    return (size_t)(pad & ~bad);
}

int kmsenv_legacy_decrypt(kmsenv_key *k, int mode, const uint8_t *iv, const uint8_t *in,
                          size_t inlen, uint8_t *out, size_t outcap, size_t *outlen)
{
    size_t whole = inlen, pad = 0;
    int rc;

    if (!common_args_ok(k, mode, iv, in, inlen, outlen))
        return KMSENV_E_ARG;
    *outlen = 0;
    if (mode == KMSENV_MODE_CBC && inlen % 16 != 0)
        return KMSENV_E_ARG;
    /* Decrypt always asks for room for inlen bytes: the plaintext size is
     * only known after the padding check, which must not be cut short. */
    if (inlen > outcap || KMSENV_BAD_BUF(out, inlen) || kmsenv__partial_overlap(in, out, inlen))
        return KMSENV_E_ARG;
    /* A padded ciphertext is at least one whole block; anything else cannot
     * carry valid padding, which is a property of the data, not the call. */
    if (mode == KMSENV_MODE_CBC_PKCS7) {
        if (inlen == 0 || inlen % 16 != 0)
            return KMSENV_E_PADDING;
        whole = inlen - 16;
    }

    rc = legacy_begin(k, mode, iv, 0);
    if (rc == KMSENV_OK)
        rc = legacy_run(k->legacy, in, whole, out);
    if (rc == KMSENV_OK && mode == KMSENV_MODE_CBC_PKCS7) {
        /* The last block is decrypted aside so padding bytes never land in out. */
        unsigned char last[16];
        rc = legacy_run(k->legacy, in + whole, 16, last);
        if (rc == KMSENV_OK) {
            pad = pkcs7_check(last);
            if (pad == 0)
                rc = KMSENV_E_PADDING;
            else
                memcpy(out + whole, last, 16 - pad);
        }
        kmsenv_wipe(last, sizeof(last));
    }
    if (rc != KMSENV_OK) {
        kmsenv_wipe(out, inlen);
        ERR_clear_error();
        return rc;
    }
    *outlen = mode == KMSENV_MODE_CBC_PKCS7 ? inlen - pad : inlen;
    return KMSENV_OK;
}
