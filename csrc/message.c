/*
 * message.c: one complete DER message per call, key setup included.
 *
 * The single-message path pays Python's per-call overhead for every native
 * call it makes; doing key setup, header tag, body and DER framing in one
 * call is what lets a whole message cost little more than a bare AES-GCM call.
 *
 *   30 L { 30 L { fields , 04 0c hiv , 04 10 htag } , 30 L { 04 0c iv , 04 L ct , 04 10 tag } }
 */
#include <openssl/err.h>

#include "internal.h"

#define IV KMSENV_GCM_IV_LEN
#define TAG KMSENV_GCM_TAG_LEN

static size_t header_content(size_t fieldslen)
{
    size_t n = fieldslen;
    return kmsenv__add_ok(&n, 2 + IV + 2 + TAG) ? n : 0;
}

size_t kmsenv_sealed_size(size_t fieldslen, size_t ptlen)
{
    size_t hc = header_content(fieldslen), htlv;
    if (hc == 0 || (htlv = kmsenv__tlv_size(hc)) == 0)
        return 0;
    return kmsenv_message_size(htlv, ptlen);
}

int kmsenv_seal_message(int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *fields, size_t fieldslen,
                        const uint8_t *auth, size_t authlen,
                        const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, const uint8_t *ivs,
                        uint8_t *out, size_t outcap, size_t *outlen)
{
    kmsenv_key *k = NULL;
    uint8_t drawn[2 * IV], *p, header_tag[TAG], stack[1024], *hdr;
    const uint8_t *iv;
    size_t total, hc, hlen, offsets[2] = {0, inlen}, out_offsets[2];
    int rc;

    if (KMSENV_BAD_BUF(fields, fieldslen) || KMSENV_BAD_BUF(auth, authlen) ||
        KMSENV_BAD_BUF(aad, aadlen) || KMSENV_BAD_BUF(in, inlen) || out == NULL)
        return KMSENV_E_ARG;
    total = kmsenv_sealed_size(fieldslen, inlen);
    hc = header_content(fieldslen);
    if (total == 0 || hc == 0 || total > outcap)
        return KMSENV_E_ARG;
    if (ivs == NULL) {
        rc = kmsenv_random(drawn, sizeof drawn);
        if (rc != KMSENV_OK)
            return rc;
        iv = drawn;
    } else {
        iv = ivs;
    }
    rc = kmsenv_key_new(cipher, key, keylen, &k);
    if (rc != KMSENV_OK)
        return rc;
    kmsenv__hugepage_hint(out, total);
    rc = kmsenv_gcm_seal(k, iv, auth, authlen, NULL, 0, NULL, header_tag);
    if (rc != KMSENV_OK)
        goto done;

    /* Build the header TLV (on the stack unless the header is unusually
     * large), then let the batch writer frame it with the body. */
    hlen = kmsenv__tlv_size(hc);
    if (hlen == 0) {
        rc = KMSENV_E_ARG;
        goto done;
    }
    hdr = hlen <= sizeof stack ? stack : OPENSSL_malloc(hlen);
    if (hdr == NULL) {
        rc = KMSENV_E_NOMEM;
        goto done;
    }
    p = hdr;
    *p++ = DER_SEQUENCE;
    p = kmsenv__der_put_len(p, hc);
    if (fieldslen)
        memcpy(p, fields, fieldslen);
    p += fieldslen;
    *p++ = DER_OCTET_STRING;
    *p++ = IV;
    memcpy(p, iv, IV);
    p += IV;
    *p++ = DER_OCTET_STRING;
    *p++ = TAG;
    memcpy(p, header_tag, TAG);
    rc = kmsenv_gcm_seal_messages(k, hdr, hlen, aad, aadlen, 1, in, offsets, iv + IV, out, outcap,
                                  out_offsets);
    if (hdr != stack)
        OPENSSL_free(hdr);
    if (rc == KMSENV_OK && outlen != NULL)
        *outlen = out_offsets[1];

done:
    kmsenv_key_free(k);
    kmsenv_wipe(header_tag, sizeof header_tag);
    if (rc != KMSENV_OK) {
        kmsenv_wipe(out, total);
        ERR_clear_error();
    }
    return rc;
}

/* Skips one TLV with the given tag inside [*off, end). */
static int skip(const uint8_t *m, size_t end, size_t *off, uint8_t tag)
{
    size_t len;
    if (!kmsenv__der_header(m, end, off, tag, &len))
        return 0;
    *off += len;
    return 1;
}

int kmsenv_open_message(int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *auth, size_t authlen,
                        const uint8_t *aad, size_t aadlen,
                        const uint8_t *msg, size_t msglen,
                        uint8_t *out, size_t outcap, size_t *outlen)
{
    kmsenv_key *k = NULL;
    const uint8_t *hiv, *htag, *iv, *ct, *tag;
    size_t off = 0, len, hend, ctlen;
    int rc;

    if (outlen == NULL || KMSENV_BAD_BUF(auth, authlen) || KMSENV_BAD_BUF(aad, aadlen) ||
        msg == NULL || msglen == 0 || (out == NULL && outcap != 0))
        return KMSENV_E_ARG;

    /* Strict framing first: nothing is keyed or decrypted for malformed input. */
    if (!kmsenv__der_header(msg, msglen, &off, DER_SEQUENCE, &len) || len != msglen - off)
        return KMSENV_E_FORMAT;
    if (!kmsenv__der_header(msg, msglen, &off, DER_SEQUENCE, &len))
        return KMSENV_E_FORMAT;
    hend = off + len;
    if (!skip(msg, hend, &off, DER_INTEGER) || !skip(msg, hend, &off, DER_INTEGER) ||
        !skip(msg, hend, &off, DER_SET) || !skip(msg, hend, &off, DER_SET))
        return KMSENV_E_FORMAT;
    if (!kmsenv__der_header(msg, hend, &off, DER_OCTET_STRING, &len) || len != IV)
        return KMSENV_E_FORMAT;
    hiv = msg + off;
    off += IV;
    if (!kmsenv__der_header(msg, hend, &off, DER_OCTET_STRING, &len) || len != TAG)
        return KMSENV_E_FORMAT;
    htag = msg + off;
    off += TAG;
    if (off != hend)
        return KMSENV_E_FORMAT;
    if (!kmsenv__der_header(msg, msglen, &off, DER_SEQUENCE, &len) || len != msglen - off)
        return KMSENV_E_FORMAT;
    if (!kmsenv__der_header(msg, msglen, &off, DER_OCTET_STRING, &len) || len != IV)
        return KMSENV_E_FORMAT;
    iv = msg + off;
    off += IV;
    if (!kmsenv__der_header(msg, msglen, &off, DER_OCTET_STRING, &ctlen))
        return KMSENV_E_FORMAT;
    ct = msg + off;
    off += ctlen;
    if (!kmsenv__der_header(msg, msglen, &off, DER_OCTET_STRING, &len) || len != TAG)
        return KMSENV_E_FORMAT;
    tag = msg + off;
    if (off + TAG != msglen)
        return KMSENV_E_FORMAT;
    if (outcap < ctlen || (ctlen != 0 && out == NULL))
        return KMSENV_E_ARG;

    rc = kmsenv_key_new(cipher, key, keylen, &k);
    if (rc != KMSENV_OK)
        return rc;
    rc = kmsenv_gcm_open(k, hiv, auth, authlen, NULL, 0, htag, NULL);
    if (rc == KMSENV_E_AUTH)
        rc = KMSENV_E_HEADER_AUTH;
    if (rc == KMSENV_OK) {
        kmsenv__hugepage_hint(out, ctlen);
        rc = kmsenv_gcm_open(k, iv, aad, aadlen, ctlen ? ct : NULL, ctlen, tag, ctlen ? out : NULL);
    }
    kmsenv_key_free(k);
    if (rc == KMSENV_OK)
        *outlen = ctlen;
    else
        ERR_clear_error();
    return rc;
}

/* The caller's raw key is only needed until kmsenv_key_new has copied it, so
 * with KMSENV_WIPE_KEY it is zeroed here, whatever the outcome, instead of by
 * one more call from Python per message. */
static void wipe_key_if(uint8_t *key, size_t keylen, int flags)
{
    if ((flags & KMSENV_WIPE_KEY) && key != NULL && keylen != 0)
        kmsenv_wipe(key, keylen);
}

int kmsenv_seal_message_ex(int cipher, uint8_t *key, size_t keylen,
                           const uint8_t *fields, size_t fieldslen,
                           const uint8_t *auth, size_t authlen,
                           const uint8_t *aad, size_t aadlen,
                           const uint8_t *in, size_t inlen, const uint8_t *ivs,
                           uint8_t *out, size_t outcap, size_t *outlen, int flags)
{
    int rc = kmsenv_seal_message(cipher, key, keylen, fields, fieldslen, auth, authlen, aad, aadlen,
                                 in, inlen, ivs, out, outcap, outlen);
    wipe_key_if(key, keylen, flags);
    return rc;
}

struct kmsenv_seal_tpl {
    int cipher;
    size_t fieldslen, authlen, aadlen;
    uint8_t *fields, *auth, *aad; /* one allocation, in this order */
};

int kmsenv_seal_tpl_new(int cipher, const uint8_t *fields, size_t fieldslen,
                        const uint8_t *auth, size_t authlen,
                        const uint8_t *aad, size_t aadlen, kmsenv_seal_tpl **out)
{
    kmsenv_seal_tpl *t;
    size_t total = sizeof(*t);
    if (out == NULL)
        return KMSENV_E_ARG;
    *out = NULL;
    if ((cipher != KMSENV_CIPHER_AES && cipher != KMSENV_CIPHER_SM4) || KMSENV_BAD_BUF(fields, fieldslen) ||
        KMSENV_BAD_BUF(auth, authlen) || KMSENV_BAD_BUF(aad, aadlen) || kmsenv_sealed_size(fieldslen, 0) == 0 ||
        !kmsenv__add_ok(&total, fieldslen) || !kmsenv__add_ok(&total, authlen) || !kmsenv__add_ok(&total, aadlen))
        return KMSENV_E_ARG;
    if ((t = OPENSSL_malloc(total)) == NULL) {
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    t->cipher = cipher;
    t->fieldslen = fieldslen;
    t->authlen = authlen;
    t->aadlen = aadlen;
    t->fields = (uint8_t *)(t + 1);
    t->auth = t->fields + fieldslen;
    t->aad = t->auth + authlen;
    if (fieldslen)
        memcpy(t->fields, fields, fieldslen);
    if (authlen)
        memcpy(t->auth, auth, authlen);
    if (aadlen)
        memcpy(t->aad, aad, aadlen);
    *out = t;
    return KMSENV_OK;
}

void kmsenv_seal_tpl_free(kmsenv_seal_tpl *t)
{
    OPENSSL_free(t); /* headers, contexts and EDKs are public: nothing to wipe */
}

size_t kmsenv_seal_tpl_size(const kmsenv_seal_tpl *t, size_t inlen)
{
    return t == NULL ? 0 : kmsenv_sealed_size(t->fieldslen, inlen);
}

int64_t kmsenv_seal_with(const kmsenv_seal_tpl *t, uint8_t *key, size_t keylen,
                         const uint8_t *in, size_t inlen, const uint8_t *ivs,
                         uint8_t *out, size_t outcap, int flags)
{
    size_t outlen = 0;
    int rc = t == NULL ? KMSENV_E_ARG
                       : kmsenv_seal_message(t->cipher, key, keylen, t->fields, t->fieldslen, t->auth,
                                             t->authlen, t->aad, t->aadlen, in, inlen, ivs, out, outcap,
                                             &outlen);
    wipe_key_if(key, keylen, flags);
    if (rc != KMSENV_OK)
        return rc;
    /* A message is at most 2^36 + a header: always representable. */
    return (int64_t)outlen;
}

int64_t kmsenv_open_message_ex(int cipher, uint8_t *key, size_t keylen,
                               const uint8_t *auth, size_t authlen,
                               const uint8_t *aad, size_t aadlen,
                               const uint8_t *msg, size_t msglen,
                               uint8_t *out, size_t outcap, int flags)
{
    size_t ptlen = 0;
    int rc = kmsenv_open_message(cipher, key, keylen, auth, authlen, aad, aadlen, msg, msglen, out,
                                 outcap, &ptlen);
    wipe_key_if(key, keylen, flags);
    if (rc != KMSENV_OK)
        return rc;
    /* GCM bodies are at most 2^36 - 32 bytes: always representable. */
    return (int64_t)ptlen;
}
