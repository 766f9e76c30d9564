/*
 * test_columns.c: C-only tests for arrow.c and compact.c (Arrow column views,
 * DER messages per value, compact values), built by run.sh with ASan+UBSan
 * and under valgrind. Compact values are checked against an independent
 * opening with kmsenv_compact_subkey + kmsenv_gcm_open.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "internal.h"
#include "check.h"

#define N 300

typedef struct {
    uint8_t *data;
    size_t data_len;
    uint8_t *offsets;
    int width;
    uint8_t validity[N / 8 + 2];
    kmsenv_binview view;
} column;

static void put_off(uint8_t *offs, int width, size_t i, int64_t v)
{
    if (width == 4) {
        int32_t x = (int32_t)v;
        memcpy(offs + 4 * i, &x, 4);
    } else {
        memcpy(offs + 8 * i, &v, 8);
    }
}

static int64_t get_off(const uint8_t *offs, int width, size_t i)
{
    if (width == 4) {
        int32_t x;
        memcpy(&x, offs + 4 * i, 4);
        return x;
    } else {
        int64_t x;
        memcpy(&x, offs + 8 * i, 8);
        return x;
    }
}

/* n values of length i % 37 (value i null when i % 11 == 5 and nulls). */
static void make_column(column *c, size_t n, int width, int nulls, size_t lead)
{
    size_t i, pos = lead;
    c->width = width;
    c->data_len = lead;
    for (i = 0; i < n; i++)
        c->data_len += i % 37;
    c->data = malloc(c->data_len ? c->data_len : 1);
    c->offsets = malloc((n + 1) * (size_t)width);
    if (!c->data || !c->offsets)
        abort();
    RAND_bytes(c->data, (int)(c->data_len ? c->data_len : 1));
    memset(c->validity, 0, sizeof c->validity);
    for (i = 0; i < n; i++) {
        put_off(c->offsets, width, i, (int64_t)pos);
        if (!(nulls && i % 11 == 5))
            c->validity[(i + 3) >> 3] |= (uint8_t)(1u << ((i + 3) & 7));
        pos += i % 37;
    }
    put_off(c->offsets, width, n, (int64_t)pos);
    c->view.length = n;
    c->view.data = c->data;
    c->view.data_len = c->data_len;
    c->view.offsets = c->offsets;
    c->view.offset_width = width;
    c->view.validity = nulls ? c->validity : NULL;
    c->view.validity_offset = 3;
}

static void free_column(column *c)
{
    free(c->data);
    free(c->offsets);
}

typedef struct {
    kmsenv_binout out;
    uint8_t *data, *offsets;
} output;

static void make_output(output *o, size_t n, size_t cap, int width)
{
    o->data = calloc(cap ? cap : 1, 1);
    o->offsets = calloc(n + 1, (size_t)width);
    if (!o->data || !o->offsets)
        abort();
    o->out.data = o->data;
    o->out.capacity = cap;
    o->out.offsets = o->offsets;
    o->out.offset_width = width;
}

static void free_output(output *o)
{
    free(o->data);
    free(o->offsets);
}

static const uint8_t *value_of(const column *c, size_t i, size_t *len)
{
    int64_t a = get_off(c->offsets, c->width, i), b = get_off(c->offsets, c->width, i + 1);
    *len = (size_t)(b - a);
    return c->data + a;
}

/* Opens one compact value the long way and compares it with the plaintext. */
static int reference_open(int cipher, const uint8_t *key, size_t keylen, const uint8_t *hash,
                          const uint8_t *v, size_t vlen, const uint8_t *row, size_t rowlen,
                          const uint8_t *pt, size_t ptlen)
{
    uint8_t sub[32], aad[17 + 64], *out;
    kmsenv_key *k = NULL;
    int ok;
    if (vlen != ptlen + KMSENV_COMPACT_OVERHEAD || rowlen > 64)
        return 0;
    if (v[0] != (row ? 0xC3 : 0xC1) || memcmp(v + 1, hash, 8) != 0)
        return 0;
    if (kmsenv_compact_subkey(cipher, key, keylen, hash, v + 9, sub) != KMSENV_OK)
        return 0;
    if (kmsenv_key_new(cipher, sub, keylen, &k) != KMSENV_OK)
        return 0;
    memcpy(aad, v, 17);
    if (row && rowlen)
        memcpy(aad + 17, row, rowlen);
    out = malloc(ptlen + 1);
    ok = kmsenv_gcm_open(k, v + 17, aad, 17 + (row ? rowlen : 0), v + 29, ptlen, v + vlen - 16,
                         out) == KMSENV_OK &&
         (ptlen == 0 || memcmp(out, pt, ptlen) == 0);
    free(out);
    kmsenv_key_free(k);
    kmsenv_wipe(sub, sizeof sub);
    return ok;
}

static void test_compact_roundtrip(int cipher, size_t keylen, int width, int outwidth, int nulls,
                                   int bound)
{
    uint8_t key[32], hash[32], segment[8];
    column in, rows;
    output sealed, opened;
    size_t i, cap, stopped = 99;
    RAND_bytes(key, sizeof key);
    RAND_bytes(hash, sizeof hash);
    RAND_bytes(segment, sizeof segment);
    make_column(&in, N, width, nulls, 5);
    make_column(&rows, N, 4, 0, 0);
    cap = in.data_len + KMSENV_COMPACT_OVERHEAD * N;
    make_output(&sealed, N, cap, outwidth);
    CHECK_RC(kmsenv_compact_seal(cipher, key, keylen, hash, segment, &in.view,
                                 bound ? &rows.view : NULL, NULL, &sealed.out),
             KMSENV_OK);
    for (i = 0; i < N; i++) {
        int64_t a = get_off(sealed.offsets, outwidth, i), b = get_off(sealed.offsets, outwidth, i + 1);
        size_t ptlen, rowlen;
        const uint8_t *pt = value_of(&in, i, &ptlen), *row = value_of(&rows, i, &rowlen);
        if (!kmsenv__binview_valid(&in.view, i)) {
            CHECK(a == b);
            continue;
        }
        CHECK(reference_open(cipher, key, keylen, hash, sealed.data + a, (size_t)(b - a),
                             bound ? row : NULL, rowlen, pt, ptlen));
        CHECK(memcmp(sealed.data + a + 9, segment, 8) == 0);
    }
    /* Open it again through the batch call. */
    {
        column sc = in;
        sc.data = sealed.data;
        sc.data_len = (size_t)get_off(sealed.offsets, outwidth, N);
        sc.offsets = sealed.offsets;
        sc.width = outwidth;
        sc.view.data = sc.data;
        sc.view.data_len = sc.data_len;
        sc.view.offsets = sc.offsets;
        sc.view.offset_width = outwidth;
        make_output(&opened, N, sc.data_len, width);
        CHECK_RC(kmsenv_compact_open(cipher, key, keylen, hash, &sc.view, bound ? &rows.view : NULL,
                                     0, &stopped, &opened.out),
                 KMSENV_OK);
        CHECK(stopped == N);
        for (i = 0; i < N; i++) {
            size_t ptlen;
            const uint8_t *pt = value_of(&in, i, &ptlen);
            int64_t a = get_off(opened.offsets, width, i), b = get_off(opened.offsets, width, i + 1);
            if (!kmsenv__binview_valid(&in.view, i))
                CHECK(a == b);
            else
                CHECK((size_t)(b - a) == ptlen && memcmp(opened.data + a, pt, ptlen) == 0);
        }
        /* Row binding must match what the reader passes. */
        CHECK_RC(kmsenv_compact_open(cipher, key, keylen, hash, &sc.view, bound ? NULL : &rows.view,
                                     0, &stopped, &opened.out),
                 KMSENV_E_FORMAT);
        /* Another header hash: the first present value belongs to another key. */
        {
            uint8_t other[32];
            memcpy(other, hash, 32);
            other[0] ^= 1;
            CHECK_RC(kmsenv_compact_open(cipher, key, keylen, other, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_OTHER_KEY);
            CHECK(stopped == 0 || (nulls && !kmsenv__binview_valid(&in.view, 0)));
            /* Same reference, other digest bytes: the subkey differs, the tag fails. */
            memcpy(other, hash, 32);
            other[31] ^= 1;
            CHECK_RC(kmsenv_compact_open(cipher, key, keylen, other, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_AUTH);
        }
        /* Every byte of value 7 flipped in turn: never OK. */
        {
            int64_t a = get_off(sealed.offsets, outwidth, 7), b = get_off(sealed.offsets, outwidth, 8);
            int64_t j;
            int all_fail = 1;
            for (j = a; j < b; j++) {
                int rc;
                sealed.data[j] ^= 0x40;
                opened.out.capacity = sc.data_len;
                put_off(opened.offsets, width, 0, 0);
                rc = kmsenv_compact_open(cipher, key, keylen, hash, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out);
                if (rc == KMSENV_OK || stopped != 7)
                    all_fail = 0;
                sealed.data[j] ^= 0x40;
            }
            CHECK(all_fail);
            ERR_clear_error();
        }
        /* Resume from the middle: offsets[start] says where to write. */
        put_off(opened.offsets, width, 150, 17);
        CHECK_RC(kmsenv_compact_open(cipher, key, keylen, hash, &sc.view, bound ? &rows.view : NULL,
                                     150, &stopped, &opened.out),
                 KMSENV_OK);
        /* Output too small: refused, nothing written past capacity (ASan). */
        opened.out.capacity = 10;
        put_off(opened.offsets, width, 0, 0);
        CHECK_RC(kmsenv_compact_open(cipher, key, keylen, hash, &sc.view, bound ? &rows.view : NULL,
                                     0, &stopped, &opened.out),
                 KMSENV_E_ARG);
        free_output(&opened);
    }
    /* Swap two present values: with rows bound that is caught. */
    if (bound && !nulls) {
        column sc = in;
        uint8_t *copy = malloc((size_t)get_off(sealed.offsets, outwidth, N));
        int64_t a1 = get_off(sealed.offsets, outwidth, 40), b1 = get_off(sealed.offsets, outwidth, 41);
        int64_t a2 = get_off(sealed.offsets, outwidth, 77), b2 = get_off(sealed.offsets, outwidth, 78);
        uint8_t *offs2 = malloc((N + 1) * (size_t)outwidth);
        size_t pos = 0;
        for (i = 0; i < N; i++) {
            int64_t a = get_off(sealed.offsets, outwidth, i), b = get_off(sealed.offsets, outwidth, i + 1);
            if (i == 40) { a = a2; b = b2; }
            else if (i == 77) { a = a1; b = b1; }
            put_off(offs2, outwidth, i, (int64_t)pos);
            memcpy(copy + pos, sealed.data + a, (size_t)(b - a));
            pos += (size_t)(b - a);
        }
        put_off(offs2, outwidth, N, (int64_t)pos);
        sc.view.data = copy;
        sc.view.data_len = pos;
        sc.view.offsets = offs2;
        sc.view.offset_width = outwidth;
        make_output(&opened, N, pos, width);
        CHECK_RC(kmsenv_compact_open(cipher, key, keylen, hash, &sc.view, &rows.view, 0, &stopped,
                                     &opened.out),
                 KMSENV_E_AUTH);
        CHECK(stopped == 40);
        free_output(&opened);
        free(copy);
        free(offs2);
    }
    free_output(&sealed);
    free_column(&in);
    free_column(&rows);
}

static void test_bad_views(void)
{
    uint8_t key[32] = {0}, hash[32] = {0}, seg[8] = {0}, data[16] = {0}, outbuf[256];
    int32_t offs[3] = {0, 8, 4};
    int32_t outoffs[3] = {0};
    kmsenv_binview v = {2, data, sizeof data, offs, 4, NULL, 0};
    kmsenv_binout o = {outbuf, sizeof outbuf, outoffs, 4};
    size_t stopped;
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, NULL, NULL, &o), KMSENV_E_ARG);
    offs[2] = 17; /* past data_len */
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, NULL, NULL, &o), KMSENV_E_ARG);
    offs[0] = -1;
    offs[2] = 12;
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, NULL, NULL, &o), KMSENV_E_ARG);
    offs[0] = 0;
    v.offset_width = 3;
    CHECK_RC(kmsenv_compact_open(KMSENV_CIPHER_AES, key, 32, hash, &v, NULL, 0, &stopped, &o), KMSENV_E_ARG);
    v.offset_width = 4;
    o.capacity = 40; /* 12 + 45 does not fit */
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, NULL, NULL, &o), KMSENV_E_ARG);
    o.capacity = sizeof outbuf;
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, NULL, NULL, &o), KMSENV_OK);
    CHECK(outoffs[2] == 12 + 2 * KMSENV_COMPACT_OVERHEAD);
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 24, hash, seg, &v, NULL, NULL, &o), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_open(KMSENV_CIPHER_AES, key, 32, hash, &v, NULL, 3, &stopped, &o), KMSENV_E_ARG);
    /* Short values are format errors, not reads past the end. */
    outoffs[0] = 0;
    CHECK_RC(kmsenv_compact_open(KMSENV_CIPHER_AES, key, 32, hash, &v, NULL, 0, &stopped, &o), KMSENV_E_FORMAT);
    CHECK(stopped == 0);
    {   /* rows of another length, or null where a value is present */
        int32_t roffs[3] = {0, 1, 2};
        uint8_t rbits = 1;
        kmsenv_binview r = {2, data, 2, roffs, 4, &rbits, 0};
        CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, &r, NULL, &o), KMSENV_E_ARG);
        r.length = 1;
        r.validity = NULL;
        CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, &v, &r, NULL, &o), KMSENV_E_ARG);
    }
}

static void test_der_column(int width)
{
    uint8_t key[32], header[40], aad[9] = "ctx-bytes";
    column in;
    output sealed, opened, ref;
    kmsenv_key *k = NULL;
    size_t i, cap, stopped, msgs;
    RAND_bytes(key, sizeof key);
    memset(header, 0, sizeof header);
    header[0] = 0x30; /* a stand-in header TLV: 30 26 + 38 bytes */
    header[1] = 38;
    RAND_bytes(header + 2, 38);
    CHECK_RC(kmsenv_key_new(KMSENV_CIPHER_AES, key, 32, &k), KMSENV_OK);
    make_column(&in, N, width, 1, 0);
    cap = kmsenv_arrow_messages_size(sizeof header, &in.view);
    CHECK(cap > in.data_len);
    make_output(&sealed, N, cap, 8);
    CHECK_RC(kmsenv_arrow_seal_messages(k, header, sizeof header, aad, sizeof aad, &in.view, NULL, &sealed.out),
             KMSENV_OK);
    CHECK((size_t)get_off(sealed.offsets, 8, N) == cap);
    /* Each message opens with the one-batch API too. */
    {
        size_t *offs = malloc((N + 1) * sizeof(size_t));
        int *status = malloc(N * sizeof(int));
        msgs = 0;
        for (i = 0; i <= N; i++)
            offs[i] = (size_t)get_off(sealed.offsets, 8, i);
        make_output(&ref, N, cap, 8);
        kmsenv_gcm_open_messages(k, header, sizeof header, aad, sizeof aad, N, sealed.data, offs,
                                 ref.data, cap, (size_t *)ref.offsets, status);
        for (i = 0; i < N; i++) {
            size_t ptlen;
            const uint8_t *pt = value_of(&in, i, &ptlen);
            if (!kmsenv__binview_valid(&in.view, i))
                continue;
            msgs++;
            CHECK(status[i] == KMSENV_OK);
            CHECK(((size_t *)ref.offsets)[i + 1] - ((size_t *)ref.offsets)[i] == ptlen &&
                  memcmp(ref.data + ((size_t *)ref.offsets)[i], pt, ptlen) == 0);
        }
        CHECK(msgs > 0);
        free(offs);
        free(status);
        free_output(&ref);
    }
    {
        kmsenv_binview sv = {N, sealed.data, cap, sealed.offsets, 8, in.view.validity, 3};
        make_output(&opened, N, cap, width);
        CHECK_RC(kmsenv_arrow_open_messages(k, header, sizeof header, aad, sizeof aad, &sv, 0, &stopped,
                                            &opened.out),
                 KMSENV_OK);
        CHECK(stopped == N);
        for (i = 0; i < N; i++) {
            size_t ptlen;
            const uint8_t *pt = value_of(&in, i, &ptlen);
            int64_t a = get_off(opened.offsets, width, i), b = get_off(opened.offsets, width, i + 1);
            if (kmsenv__binview_valid(&in.view, i))
                CHECK((size_t)(b - a) == ptlen && memcmp(opened.data + a, pt, ptlen) == 0);
            else
                CHECK(a == b);
        }
        /* Another header: stop at the first present value. */
        header[10] ^= 1;
        CHECK_RC(kmsenv_arrow_open_messages(k, header, sizeof header, aad, sizeof aad, &sv, 0,
                                            &stopped, &opened.out),
                 KMSENV_E_OTHER_KEY);
        CHECK(stopped == 0);
        header[10] ^= 1;
        /* A body bit flipped in value 20: AUTH at 20. */
        sealed.data[get_off(sealed.offsets, 8, 21) - 20] ^= 1;
        CHECK_RC(kmsenv_arrow_open_messages(k, header, sizeof header, aad, sizeof aad, &sv, 0,
                                            &stopped, &opened.out),
                 KMSENV_E_AUTH);
        CHECK(stopped == 20);
        free_output(&opened);
    }
    kmsenv_key_free(k);
    free_output(&sealed);
    free_column(&in);
}

int main(void)
{
    int cipher, w, ow, nulls, bound;
    for (cipher = 0; cipher < 3; cipher++)
        for (w = 4; w <= 8; w += 4)
            for (ow = 4; ow <= 8; ow += 4)
                for (nulls = 0; nulls < 2; nulls++)
                    for (bound = 0; bound < 2; bound++)
                        test_compact_roundtrip(cipher == 2 ? KMSENV_CIPHER_SM4 : KMSENV_CIPHER_AES,
                                               cipher == 1 ? 16 : cipher == 2 ? 16 : 32, w, ow, nulls,
                                               bound);
    test_bad_views();
    test_der_column(4);
    test_der_column(8);
    printf("test_columns: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
