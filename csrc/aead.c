/* aead.c: the data key object and GCM seal/open. AES-GCM goes through EVP
 * with contexts keyed once; SM4-GCM is in sm4.c. */
#include <openssl/err.h>

#include "internal.h"

/* The EVP GCM context for one direction, keyed on first use: a key that only
 * seals never pays for the decrypt context, and with the VAES kernel active
 * one-message keys (kmsenv_seal_message, compact segments) need neither,
 * which halves the cost of a key for small messages. */
EVP_CIPHER_CTX *kmsenv__aes_evp(kmsenv_key *k, int decrypt)
{
    EVP_CIPHER_CTX **slot = decrypt ? &k->dec : &k->enc;
    const EVP_CIPHER *gcm;
    if (*slot != NULL)
        return *slot;
    gcm = k->keylen == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    *slot = EVP_CIPHER_CTX_new();
    if (*slot == NULL)
        return NULL;
    /* The key schedule happens here, once; messages only set the IV. */
    if (EVP_CipherInit_ex(*slot, gcm, NULL, k->raw, NULL, decrypt ? 0 : 1) != 1) {
        EVP_CIPHER_CTX_free(*slot);
        *slot = NULL;
        ERR_clear_error();
    }
    return *slot;
}

static int aes_contexts_new(kmsenv_key *k)
{
    /* The kernel kernels.c chose (self-tested, fastest here); EVP stays the
     * fallback and reference, created when first needed. */
    const kmsenv__aes_kernel *kk = kmsenv__aes_kernel_chosen();
    if (kk != NULL) {
        if ((k->aes_simd = kk->ctx_new(k->raw, k->keylen)) == NULL)
            return KMSENV_E_NOMEM;
        k->aes_kernel = kk;
    }
    return KMSENV_OK;
}

static int sm4_contexts_new(kmsenv_key *k)
{
    int rc = kmsenv__sm4_init(&k->sm4, k->raw);
    if (rc != KMSENV_OK)
        return rc;
    /* gcm128 keeps &k->sm4 as the key its block/ctr functions receive; k is
     * heap allocated, so that address is stable for the key's lifetime. */
    k->gcm = CRYPTO_gcm128_new(&k->sm4, k->sm4.block);
    if (k->gcm == NULL)
        return KMSENV_E_NOMEM;
    return k->sm4.failed ? KMSENV_E_CRYPTO : KMSENV_OK;
}

int kmsenv_key_new(int cipher, const uint8_t *key, size_t keylen, kmsenv_key **out)
{
    kmsenv_key *k;
    int rc;

    if (out == NULL)
        return KMSENV_E_ARG;
    *out = NULL;
    if (key == NULL)
        return KMSENV_E_ARG;
    if (cipher == KMSENV_CIPHER_AES) {
        if (keylen != 16 && keylen != 32)
            return KMSENV_E_ARG;
    } else if (cipher == KMSENV_CIPHER_SM4) {
        if (keylen != 16)
            return KMSENV_E_ARG;
        if (!(kmsenv_features() & KMSENV_FEATURE_SM4))
            return KMSENV_E_UNSUPPORTED;
    } else {
        return KMSENV_E_ARG;
    }

    k = OPENSSL_zalloc(sizeof(*k));
    if (k == NULL) {
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    k->cipher = cipher;
    k->keylen = keylen;
    memcpy(k->raw, key, keylen);

    rc = cipher == KMSENV_CIPHER_AES ? aes_contexts_new(k) : sm4_contexts_new(k);
    if (rc != KMSENV_OK) {
        kmsenv_key_free(k);
        ERR_clear_error();
        return rc;
    }
    *out = k;
    return KMSENV_OK;
}

void kmsenv_key_free(kmsenv_key *k)
{
    if (k == NULL)
        return;
    /* EVP and gcm128 cleanse their own key schedules when freed. */
    EVP_CIPHER_CTX_free(k->enc);
    EVP_CIPHER_CTX_free(k->dec);
    if (k->aes_kernel != NULL)
        k->aes_kernel->ctx_free(k->aes_simd);
    EVP_CIPHER_CTX_free(k->legacy);
    CRYPTO_gcm128_release(k->gcm);
    kmsenv__sm4_cleanup(&k->sm4);
    kmsenv__clear_free(k, sizeof(*k));
}

/* Feeds AAD in int-sized pieces. */
static int evp_aad(EVP_CIPHER_CTX *c, const uint8_t *aad, size_t aadlen)
{
    int outl;
    while (aadlen != 0) {
        size_t step = aadlen < KMSENV_EVP_CHUNK ? aadlen : KMSENV_EVP_CHUNK;
        if (EVP_CipherUpdate(c, NULL, &outl, aad, (int)step) != 1)
            return 0;
        aad += step;
        aadlen -= step;
    }
    return 1;
}

/* Streams the body in int-sized pieces; GCM never holds bytes back. */
static int evp_body(EVP_CIPHER_CTX *c, const uint8_t *in, size_t inlen, uint8_t *out)
{
    int outl;
    while (inlen != 0) {
        size_t step = inlen < KMSENV_EVP_CHUNK ? inlen : KMSENV_EVP_CHUNK;
        if (EVP_CipherUpdate(c, out, &outl, in, (int)step) != 1 || (size_t)outl != step)
            return 0;
        in += step;
        out += step;
        inlen -= step;
    }
    return 1;
}

static int aes_gcm_seal(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *c;
    unsigned char fin[16];
    int outl;

    if (k->aes_kernel != NULL)
        return k->aes_kernel->seal(k->aes_simd, iv, aad, aadlen, in, inlen, out, tag);
    if ((c = kmsenv__aes_evp(k, 0)) == NULL)
        return KMSENV_E_CRYPTO;
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv) != 1 || !evp_aad(c, aad, aadlen) ||
        !evp_body(c, in, inlen, out) || EVP_EncryptFinal_ex(c, fin, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, KMSENV_GCM_TAG_LEN, tag) != 1)
        return KMSENV_E_CRYPTO;
    return KMSENV_OK;
}

static int aes_gcm_open(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, const uint8_t *tag, uint8_t *out)
{
    EVP_CIPHER_CTX *c;
    unsigned char fin[16];
    int outl;

    if (k->aes_kernel != NULL)
        return k->aes_kernel->open(k->aes_simd, iv, aad, aadlen, in, inlen, tag, out);
    if ((c = kmsenv__aes_evp(k, 1)) == NULL)
        return KMSENV_E_CRYPTO;
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, iv) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, KMSENV_GCM_TAG_LEN, (void *)tag) != 1 ||
        !evp_aad(c, aad, aadlen) || !evp_body(c, in, inlen, out))
        return KMSENV_E_CRYPTO;
    /* The provider compares the tag with CRYPTO_memcmp. */
    if (EVP_DecryptFinal_ex(c, fin, &outl) != 1)
        return KMSENV_E_AUTH;
    return KMSENV_OK;
}

static int gcm_args_ok(const kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                       const uint8_t *in, size_t inlen, const uint8_t *out, const uint8_t *tag)
{
    if (k == NULL || iv == NULL || tag == NULL)
        return 0;
    if (KMSENV_BAD_BUF(aad, aadlen) || KMSENV_BAD_BUF(in, inlen) || KMSENV_BAD_BUF(out, inlen))
        return 0;
    if ((uint64_t)inlen > KMSENV_GCM_MAX_IN || (uint64_t)aadlen > KMSENV_GCM_MAX_AAD)
        return 0;
    return !kmsenv__partial_overlap(in, out, inlen);
}

int kmsenv_gcm_seal(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t inlen, uint8_t *out, uint8_t *tag)
{
    int rc;
    if (!gcm_args_ok(k, iv, aad, aadlen, in, inlen, out, tag))
        return KMSENV_E_ARG;
    if (k->cipher == KMSENV_CIPHER_AES)
        rc = aes_gcm_seal(k, iv, aad, aadlen, in, inlen, out, tag);
    else
        rc = kmsenv__sm4_gcm_seal(k, iv, aad, aadlen, in, inlen, out, tag);
    if (rc != KMSENV_OK) {
        /* A half-made ciphertext is useless; leave nothing behind. */
        kmsenv_wipe(out, inlen);
        kmsenv_wipe(tag, KMSENV_GCM_TAG_LEN);
        ERR_clear_error();
    }
    return rc;
}

int kmsenv_gcm_open(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t inlen, const uint8_t *tag, uint8_t *out)
{
    int rc;
    if (!gcm_args_ok(k, iv, aad, aadlen, in, inlen, out, tag))
        return KMSENV_E_ARG;
    if (k->cipher == KMSENV_CIPHER_AES)
        rc = aes_gcm_open(k, iv, aad, aadlen, in, inlen, tag, out);
    else
        rc = kmsenv__sm4_gcm_open(k, iv, aad, aadlen, in, inlen, tag, out);
    if (rc != KMSENV_OK) {
        /* Unverified plaintext must never reach the caller. */
        kmsenv_wipe(out, inlen);
        ERR_clear_error();
    }
    return rc;
}
