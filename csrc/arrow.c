/*
 * arrow.c: batches over Arrow variable-size binary columns, read in place
 * (offsets + data + validity), so Python never makes an object per value.
 * Here: the view checks and DER messages; compact.c has the compact format.
 */
#include <stdlib.h>

#include <openssl/err.h>

#include "internal.h"

int kmsenv__binview_check(const kmsenv_binview *v)
{
    size_t i;
    int64_t prev;
    if (v == NULL || (v->offset_width != 4 && v->offset_width != 8))
        return 0;
    if (KMSENV_BAD_BUF(v->data, v->data_len))
        return 0;
    if (v->offsets == NULL)
        return 0; /* Arrow always has length + 1 offsets, even for length 0 */
    if (v->length > (SIZE_MAX - 1) / 8)
        return 0;
    prev = kmsenv__binview_off(v, 0);
    if (prev < 0)
        return 0;
    for (i = 1; i <= v->length; i++) {
        int64_t cur = kmsenv__binview_off(v, i);
        if (cur < prev)
            return 0;
        prev = cur;
    }
    return (uint64_t)prev <= (uint64_t)v->data_len;
}

const uint8_t *kmsenv__ivpool_next(kmsenv__ivpool *p, size_t left)
{
    if (p->used == p->pooled) {
        p->pooled = left < KMSENV_IVPOOL_BLOCK ? left : KMSENV_IVPOOL_BLOCK;
        p->used = 0;
        if (kmsenv_random(p->buf, p->pooled * KMSENV_GCM_IV_LEN) != KMSENV_OK) {
            p->pooled = 0;
            return NULL;
        }
    }
    return p->buf + p->used++ * KMSENV_GCM_IV_LEN;
}

int kmsenv__binout_put(kmsenv_binout *o, size_t i, size_t pos)
{
    if (o->offset_width == 4) {
        int32_t x;
        if (pos > (size_t)INT32_MAX)
            return 0;
        x = (int32_t)pos;
        memcpy((uint8_t *)o->offsets + 4 * i, &x, 4);
    } else {
        int64_t x;
        if (pos > (size_t)INT64_MAX)
            return 0;
        x = (int64_t)pos;
        memcpy((uint8_t *)o->offsets + 8 * i, &x, 8);
    }
    return 1;
}

size_t kmsenv__binout_get(const kmsenv_binout *o, size_t i)
{
    if (o->offset_width == 4) {
        int32_t x;
        memcpy(&x, (const uint8_t *)o->offsets + 4 * i, 4);
        return x < 0 ? SIZE_MAX : (size_t)x;
    } else {
        int64_t x;
        memcpy(&x, (const uint8_t *)o->offsets + 8 * i, 8);
        return x < 0 ? SIZE_MAX : (size_t)x;
    }
}

static int binout_ok(const kmsenv_binout *o)
{
    return o != NULL && o->offsets != NULL && (o->offset_width == 4 || o->offset_width == 8) &&
           !KMSENV_BAD_BUF(o->data, o->capacity);
}

size_t kmsenv_arrow_messages_size(size_t headerlen, const kmsenv_binview *in)
{
    size_t total = 0, i;
    if (!kmsenv__binview_check(in))
        return 0;
    for (i = 0; i < in->length; i++) {
        size_t size;
        if (!kmsenv__binview_valid(in, i))
            continue;
        size = kmsenv_message_size(
            headerlen, (size_t)(kmsenv__binview_off(in, i + 1) - kmsenv__binview_off(in, i)));
        if (size == 0 || !kmsenv__add_ok(&total, size))
            return 0;
    }
    return total;
}

int kmsenv_arrow_seal_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                               const uint8_t *aad, size_t aadlen, const kmsenv_binview *in,
                               const uint8_t *ivs, kmsenv_binout *out)
{
    kmsenv__ivpool pool = {{0}, 0, 0};
    size_t pos, i, need;
    int rc = KMSENV_OK;

    if (k == NULL || !binout_ok(out) || KMSENV_BAD_BUF(header, headerlen) ||
        KMSENV_BAD_BUF(aad, aadlen) || !kmsenv__binview_check(in))
        return KMSENV_E_ARG;
    need = kmsenv_arrow_messages_size(headerlen, in);
    if (need == 0 && in->length != 0) {
        for (i = 0; i < in->length; i++)
            if (kmsenv__binview_valid(in, i))
                return KMSENV_E_ARG; /* a present value that cannot be encoded */
    }
    pos = kmsenv__binout_get(out, 0);
    if (pos == SIZE_MAX || pos > out->capacity || need > out->capacity - pos)
        return KMSENV_E_ARG;

    for (i = 0; i < in->length; i++) {
        size_t written = 0;
        if (kmsenv__binview_valid(in, i)) {
            const uint8_t *iv;
            int64_t a = kmsenv__binview_off(in, i), b = kmsenv__binview_off(in, i + 1);
            iv = ivs != NULL ? ivs + i * KMSENV_GCM_IV_LEN : kmsenv__ivpool_next(&pool, in->length - i);
            if (iv == NULL) {
                rc = KMSENV_E_CRYPTO;
                goto fail;
            }
            rc = kmsenv__der_write_message(k, header, headerlen, aad, aadlen, iv,
                                           b > a ? in->data + a : NULL, (size_t)(b - a),
                                           out->data + pos, &written);
            if (rc != KMSENV_OK)
                goto fail;
        }
        pos += written;
        if (!kmsenv__binout_put(out, i + 1, pos)) {
            rc = KMSENV_E_ARG;
            goto fail;
        }
    }
    kmsenv_wipe(&pool, sizeof pool);
    return KMSENV_OK;

fail:
    kmsenv_wipe(&pool, sizeof pool);
    kmsenv_wipe(out->data, out->capacity);
    ERR_clear_error();
    return rc;
}

int kmsenv_arrow_open_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                               const uint8_t *aad, size_t aadlen, const kmsenv_binview *in,
                               size_t start, size_t *stopped, kmsenv_binout *out)
{
    size_t pos, first, i;
    if (k == NULL || stopped == NULL || !binout_ok(out) || KMSENV_BAD_BUF(header, headerlen) ||
        KMSENV_BAD_BUF(aad, aadlen) || !kmsenv__binview_check(in) || start > in->length)
        return KMSENV_E_ARG;
    first = pos = kmsenv__binout_get(out, start);
    if (pos == SIZE_MAX || pos > out->capacity)
        return KMSENV_E_ARG;
    for (i = start; i < in->length; i++) {
        if (kmsenv__binview_valid(in, i)) {
            int64_t a = kmsenv__binview_off(in, i), b = kmsenv__binview_off(in, i + 1);
            size_t mlen = (size_t)(b - a);
            kmsenv__der_parsed p;
            int st;
            if (mlen == 0 || !kmsenv__der_parse_message(in->data + a, mlen, header, headerlen, &p)) {
                *stopped = i;
                return KMSENV_E_OTHER_KEY;
            }
            if (p.ctlen > out->capacity - pos) {
                *stopped = i;
                kmsenv_wipe(out->data + first, pos - first);
                return KMSENV_E_ARG;
            }
            st = kmsenv_gcm_open(k, p.iv, aad, aadlen, p.ct, p.ctlen, p.tag,
                                 p.ctlen ? out->data + pos : NULL);
            if (st != KMSENV_OK) {
                *stopped = i;
                kmsenv_wipe(out->data + first, pos - first);
                ERR_clear_error();
                return st;
            }
            pos += p.ctlen;
        }
        if (!kmsenv__binout_put(out, i + 1, pos)) {
            *stopped = i;
            kmsenv_wipe(out->data + first, pos - first);
            return KMSENV_E_ARG;
        }
    }
    *stopped = in->length;
    return KMSENV_OK;
}
