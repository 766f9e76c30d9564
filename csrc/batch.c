/*
 * batch.c: many complete DER messages sharing one header, in one call.
 *
 *   30 L { header , 30 L { 04 0c iv , 04 L ct , 04 10 tag } }
 *
 * Lengths are DER definite and minimal, at most 4 length octets (0x84), which
 * bounds every field at 2^32 - 1 bytes.
 */
#include <openssl/err.h>

#include "internal.h"

typedef struct {
    size_t body_content; /* inside the body SEQUENCE */
    size_t msg_content;  /* inside the outer SEQUENCE */
    size_t total;
} layout;

static int layout_of(size_t headerlen, size_t ptlen, layout *l)
{
    size_t ct_tlv = kmsenv__tlv_size(ptlen), body_tlv;
    if (ct_tlv == 0)
        return 0;
    l->body_content = 2 + KMSENV_GCM_IV_LEN;
    if (!kmsenv__add_ok(&l->body_content, ct_tlv) || !kmsenv__add_ok(&l->body_content, 2 + KMSENV_GCM_TAG_LEN))
        return 0;
    body_tlv = kmsenv__tlv_size(l->body_content);
    l->msg_content = headerlen;
    if (body_tlv == 0 || !kmsenv__add_ok(&l->msg_content, body_tlv))
        return 0;
    l->total = kmsenv__tlv_size(l->msg_content);
    return l->total != 0;
}

size_t kmsenv_message_size(size_t headerlen, size_t ptlen)
{
    layout l;
    return layout_of(headerlen, ptlen, &l) ? l.total : 0;
}

int kmsenv__der_write_message(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                              const uint8_t *aad, size_t aadlen, const uint8_t *iv_in,
                              const uint8_t *in, size_t ptlen, uint8_t *out, size_t *written)
{
    uint8_t iv[KMSENV_GCM_IV_LEN], *p = out, *tag;
    layout l;
    int rc;
    if (!layout_of(headerlen, ptlen, &l))
        return KMSENV_E_ARG;
    /* The IV may live in the output area (the batch IV pool): copy it first. */
    memcpy(iv, iv_in, KMSENV_GCM_IV_LEN);
    *p++ = DER_SEQUENCE;
    p = kmsenv__der_put_len(p, l.msg_content);
    if (headerlen != 0)
        memcpy(p, header, headerlen);
    p += headerlen;
    *p++ = DER_SEQUENCE;
    p = kmsenv__der_put_len(p, l.body_content);
    *p++ = DER_OCTET_STRING;
    *p++ = KMSENV_GCM_IV_LEN;
    memcpy(p, iv, KMSENV_GCM_IV_LEN);
    p += KMSENV_GCM_IV_LEN;
    *p++ = DER_OCTET_STRING;
    p = kmsenv__der_put_len(p, ptlen);
    tag = p + ptlen + 2;
    rc = kmsenv_gcm_seal(k, iv, aad, aadlen, ptlen ? in : NULL, ptlen, ptlen ? p : NULL, tag);
    if (rc != KMSENV_OK)
        return rc;
    p += ptlen;
    *p++ = DER_OCTET_STRING;
    *p++ = KMSENV_GCM_TAG_LEN;
    *written = l.total;
    return KMSENV_OK;
}

/* Every message is at least this long, more than one IV: see the IV pool. */
#define MIN_MESSAGE (2 + 2 + 2 + KMSENV_GCM_IV_LEN + 2 + 2 + KMSENV_GCM_TAG_LEN)
KMSENV_STATIC_ASSERT(MIN_MESSAGE > KMSENV_GCM_IV_LEN, "IV pool invariant");

int kmsenv_gcm_seal_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                             const uint8_t *aad, size_t aadlen, size_t n, const uint8_t *in,
                             const size_t *in_offsets, const uint8_t *ivs, uint8_t *out,
                             size_t outcap, size_t *out_offsets)
{
    size_t total = 0, pos = 0, i;
    const uint8_t *ivpool;
    int rc;

    if (k == NULL || out_offsets == NULL)
        return KMSENV_E_ARG;
    if (n == 0) {
        out_offsets[0] = 0;
        return KMSENV_OK;
    }
    if (in_offsets == NULL || KMSENV_BAD_BUF(header, headerlen) || KMSENV_BAD_BUF(aad, aadlen) ||
        n > SIZE_MAX / KMSENV_GCM_IV_LEN)
        return KMSENV_E_ARG;
    for (i = 0; i < n; i++) {
        size_t size;
        if (in_offsets[i + 1] < in_offsets[i])
            return KMSENV_E_ARG;
        size = kmsenv_message_size(headerlen, in_offsets[i + 1] - in_offsets[i]);
        if (size == 0 || !kmsenv__add_ok(&total, size))
            return KMSENV_E_ARG;
    }
    if (KMSENV_BAD_BUF(in, in_offsets[n] - in_offsets[0]) || out == NULL || total > outcap)
        return KMSENV_E_ARG;

    /*
     * Random IVs are drawn in one RAND_bytes call into the last n*12 bytes of
     * the output area, then consumed front to back. Message i ends at or
     * before out + total - 12*(n-1-i) because every later message is longer
     * than an IV, so writing message i never clobbers an IV still unread.
     */
    if (ivs != NULL) {
        ivpool = ivs;
    } else {
        ivpool = out + total - n * KMSENV_GCM_IV_LEN;
        rc = kmsenv_random(out + total - n * KMSENV_GCM_IV_LEN, n * KMSENV_GCM_IV_LEN);
        if (rc != KMSENV_OK)
            goto fail;
    }

    for (i = 0; i < n; i++) {
        size_t ptlen = in_offsets[i + 1] - in_offsets[i], written;
        out_offsets[i] = pos;
        rc = kmsenv__der_write_message(k, header, headerlen, aad, aadlen,
                                       ivpool + i * KMSENV_GCM_IV_LEN,
                                       ptlen ? in + in_offsets[i] : NULL, ptlen, out + pos, &written);
        if (rc != KMSENV_OK)
            goto fail;
        pos += written;
    }
    out_offsets[n] = pos;
    return KMSENV_OK;

fail:
    kmsenv_wipe(out, total);
    ERR_clear_error();
    return rc;
}

/* Reads one tag + strict DER length at *off; on success *len bytes of value
 * are known to follow inside [*off, end). */
int kmsenv__der_header(const uint8_t *m, size_t end, size_t *off, uint8_t tag, size_t *len)
{
    size_t o = *off, v, nbytes, i;
    if (end - o < 2 || m[o] != tag)
        return 0;
    v = m[o + 1];
    o += 2;
    if (v >= 0x80) {
        nbytes = v & 0x7f;
        /* 0x80 is BER's indefinite length; more than 4 octets is never ours. */
        if (nbytes == 0 || nbytes > 4 || end - o < nbytes || m[o] == 0)
            return 0;
        for (v = 0, i = 0; i < nbytes; i++)
            v = (v << 8) | m[o + i];
        o += nbytes;
        if (v < 0x80) /* should have been the short form */
            return 0;
    }
    if (v > end - o)
        return 0;
    *off = o;
    *len = v;
    return 1;
}

int kmsenv__der_parse_message(const uint8_t *m, size_t mlen, const uint8_t *header,
                              size_t headerlen, kmsenv__der_parsed *out)
{
    size_t off = 0, len;
    if (!kmsenv__der_header(m, mlen, &off, DER_SEQUENCE, &len) || len != mlen - off)
        return 0;
    if (len < headerlen || (headerlen != 0 && memcmp(m + off, header, headerlen) != 0))
        return 0;
    off += headerlen;
    if (!kmsenv__der_header(m, mlen, &off, DER_SEQUENCE, &len) || len != mlen - off)
        return 0;
    if (!kmsenv__der_header(m, mlen, &off, DER_OCTET_STRING, &len) || len != KMSENV_GCM_IV_LEN)
        return 0;
    out->iv = m + off;
    off += len;
    if (!kmsenv__der_header(m, mlen, &off, DER_OCTET_STRING, &len))
        return 0;
    out->ct = m + off;
    out->ctlen = len;
    off += len;
    if (!kmsenv__der_header(m, mlen, &off, DER_OCTET_STRING, &len) || len != KMSENV_GCM_TAG_LEN)
        return 0;
    out->tag = m + off;
    off += len;
    return off == mlen;
}

int kmsenv_gcm_open_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                             const uint8_t *aad, size_t aadlen, size_t n, const uint8_t *in,
                             const size_t *in_offsets, uint8_t *out, size_t outcap,
                             size_t *out_offsets, int *status)
{
    size_t pos = 0, span, i;
    int first = KMSENV_OK;

    if (k == NULL || out_offsets == NULL || (n != 0 && status == NULL))
        return KMSENV_E_ARG;
    if (n == 0) {
        out_offsets[0] = 0;
        return KMSENV_OK;
    }
    if (in_offsets == NULL || KMSENV_BAD_BUF(header, headerlen) || KMSENV_BAD_BUF(aad, aadlen))
        return KMSENV_E_ARG;
    for (i = 0; i < n; i++)
        if (in_offsets[i + 1] < in_offsets[i])
            return KMSENV_E_ARG;
    span = in_offsets[n] - in_offsets[0];
    if (KMSENV_BAD_BUF(in, span) || KMSENV_BAD_BUF(out, span) || span > outcap)
        return KMSENV_E_ARG;

    /* Each plaintext is shorter than its message, so out never overflows. */
    for (i = 0; i < n; i++) {
        size_t mlen = in_offsets[i + 1] - in_offsets[i];
        kmsenv__der_parsed p;
        int st;
        out_offsets[i] = pos;
        if (mlen == 0 || !kmsenv__der_parse_message(in + in_offsets[i], mlen, header, headerlen, &p)) {
            st = KMSENV_E_FORMAT;
        } else {
            st = kmsenv_gcm_open(k, p.iv, aad, aadlen, p.ct, p.ctlen, p.tag,
                                 p.ctlen ? out + pos : NULL);
            if (st == KMSENV_OK)
                pos += p.ctlen;
        }
        status[i] = st;
        if (st != KMSENV_OK && first == KMSENV_OK)
            first = st;
    }
    out_offsets[n] = pos;
    return first;
}
