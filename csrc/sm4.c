/* sm4.c: SM4-GCM. The system OpenSSL 3.0 has SM4-ECB/CTR but no SM4-GCM, so
 * the mode comes from OpenSSL's exported gcm128 code driven by EVP SM4 as
 * the block function and EVP SM4-CTR as the bulk counter-mode stream (or
 * the SIMD kernel kernels.c chose). A kernel with its own whole-GCM
 * functions (gfni512-vpclmul: zmm GHASH, sm4_gfni.c) replaces gcm128 for
 * one-shot seal/open; the streaming API (frames.c) keeps gcm128. */
#include <openssl/err.h>

#include "internal.h"

static uint32_t load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

int kmsenv__sm4_init(kmsenv_sm4 *s, const unsigned char key[16])
{
    s->block = kmsenv__sm4_block_evp;
    s->ctr32 = kmsenv__sm4_ctr32_evp;
    s->gcm_seal = NULL;
    s->gcm_open = NULL;
    s->failed = 0;
    s->ecb = EVP_CIPHER_CTX_new();
    s->ctr = EVP_CIPHER_CTX_new();
    if (s->ecb == NULL || s->ctr == NULL)
        return KMSENV_E_NOMEM;
    if (EVP_EncryptInit_ex(s->ecb, EVP_sm4_ecb(), NULL, key, NULL) != 1 ||
        EVP_CIPHER_CTX_set_padding(s->ecb, 0) != 1 ||
        EVP_EncryptInit_ex(s->ctr, EVP_sm4_ctr(), NULL, key, NULL) != 1)
        return KMSENV_E_CRYPTO;
    /* The kernel kernels.c chose (GFNI or AES-NI method, self-tested); EVP
     * stays the fallback (and the reference the tests compare against). */
    {
        const kmsenv__sm4_kernel *kk = kmsenv__sm4_kernel_chosen();
        if (kk != NULL) {
            kk->setkey(s->rk, key);
            s->block = kk->block;
            s->ctr32 = kk->ctr32;
            /* A whole-GCM kernel (gfni512-vpclmul) takes over one-shot
             * seal/open; gcm128 stays for the streaming API (frames.c). */
            if (kk->gcm_init != NULL) {
                kk->gcm_init(s);
                s->gcm_seal = kk->gcm_seal;
                s->gcm_open = kk->gcm_open;
            }
        }
    }
    return KMSENV_OK;
}

void kmsenv__sm4_cleanup(kmsenv_sm4 *s)
{
    EVP_CIPHER_CTX_free(s->ecb);
    EVP_CIPHER_CTX_free(s->ctr);
    s->ecb = s->ctr = NULL;
    kmsenv_wipe(s->rk, sizeof(s->rk));
    kmsenv_wipe(s->hpow, sizeof(s->hpow));
}

/* The `key` is our kmsenv_sm4, which we own and may mutate: the const in the
 * block128_f/ctr128_f signatures is OpenSSL's, not a promise we rely on. */
void kmsenv__sm4_block_evp(const unsigned char in[16], unsigned char out[16], const void *key)
{
    kmsenv_sm4 *s = (kmsenv_sm4 *)key;
    int outl;
    if (EVP_EncryptUpdate(s->ecb, out, &outl, in, 16) != 1 || outl != 16) {
        s->failed = 1;
        memset(out, 0, 16);
    }
}

/*
 * ctr128_f for gcm128: GCM increments only the low 32 bits of the counter
 * block (mod 2^32) while EVP CTR carries across all 128, so the stream is
 * restarted at every 32-bit wrap (and every KMSENV_EVP_CHUNK bytes). With a
 * 12-byte IV the counter starts at 2 and a legal message never wraps, but the
 * ctr128_f contract does not assume that.
 */
void kmsenv__sm4_ctr32_evp(const unsigned char *in, unsigned char *out, size_t blocks,
                           const void *key, const unsigned char ivec[16])
{
    kmsenv_sm4 *s = (kmsenv_sm4 *)key;
    unsigned char ctr[16];
    uint32_t low;
    int outl;

    memcpy(ctr, ivec, 16);
    low = load_be32(ctr + 12);
    while (blocks != 0) {
        uint64_t to_wrap = (((uint64_t)1) << 32) - low;
        size_t n = blocks;
        if ((uint64_t)n > to_wrap)
            n = (size_t)to_wrap;
        if (n > KMSENV_EVP_CHUNK / 16)
            n = KMSENV_EVP_CHUNK / 16;
        if (EVP_EncryptInit_ex(s->ctr, NULL, NULL, NULL, ctr) != 1 ||
            EVP_EncryptUpdate(s->ctr, out, &outl, in, (int)(n * 16)) != 1 ||
            (size_t)outl != n * 16) {
            s->failed = 1;
            return;
        }
        in += n * 16;
        out += n * 16;
        blocks -= n;
        low += (uint32_t)n; /* wraps to 0 on purpose */
        store_be32(ctr + 12, low);
    }
}

int kmsenv__sm4_gcm_seal(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                         const uint8_t *in, size_t inlen, uint8_t *out, uint8_t *tag)
{
    kmsenv_sm4 *s = &k->sm4;
    if (s->gcm_seal != NULL)
        return s->gcm_seal(s, iv, aad, aadlen, in, inlen, out, tag);
    s->failed = 0;
    CRYPTO_gcm128_setiv(k->gcm, iv, KMSENV_GCM_IV_LEN);
    if (aadlen != 0 && CRYPTO_gcm128_aad(k->gcm, aad, aadlen) != 0)
        return KMSENV_E_CRYPTO;
    if (inlen != 0 && CRYPTO_gcm128_encrypt_ctr32(k->gcm, in, out, inlen, s->ctr32) != 0)
        return KMSENV_E_CRYPTO;
    CRYPTO_gcm128_tag(k->gcm, tag, KMSENV_GCM_TAG_LEN);
    return s->failed ? KMSENV_E_CRYPTO : KMSENV_OK;
}

int kmsenv__sm4_gcm_open(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                         const uint8_t *in, size_t inlen, const uint8_t *tag, uint8_t *out)
{
    kmsenv_sm4 *s = &k->sm4;
    int mismatch;
    if (s->gcm_open != NULL) /* same contract: out holds the plaintext, KMSENV_E_AUTH */
        return s->gcm_open(s, iv, aad, aadlen, in, inlen, tag, out);
    s->failed = 0;
    CRYPTO_gcm128_setiv(k->gcm, iv, KMSENV_GCM_IV_LEN);
    if (aadlen != 0 && CRYPTO_gcm128_aad(k->gcm, aad, aadlen) != 0)
        return KMSENV_E_CRYPTO;
    if (inlen != 0 && CRYPTO_gcm128_decrypt_ctr32(k->gcm, in, out, inlen, s->ctr32) != 0)
        return KMSENV_E_CRYPTO;
    /* finish compares with CRYPTO_memcmp: 0 only on a full 16-byte match. */
    mismatch = CRYPTO_gcm128_finish(k->gcm, tag, KMSENV_GCM_TAG_LEN);
    if (s->failed)
        return KMSENV_E_CRYPTO;
    return mismatch == 0 ? KMSENV_OK : KMSENV_E_AUTH;
}
