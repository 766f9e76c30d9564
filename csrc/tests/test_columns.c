/*
 * test_columns.c: C-only tests for arrow.c and compact.c (Arrow column views,
 * DER messages per value, compact values), built by run.sh with ASan+UBSan
 * and under valgrind. Compact values are checked against an independent
 * opening with kmsenv_compact_subkey + kmsenv_gcm_open; version 1 values
 * (read only) are made the same long way. The key commitment is checked
 * against kmsenv_hkdf with the label spelled out here.
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

static const uint8_t NAME[] = "email";
#define NAME_LEN (sizeof NAME - 1)

/* The AAD of a version 2 value, built the long way: prefix || u32be(name
 * length) || name || row id. Returns its length (aad holds 17 + 4 + 64 + 64). */
static size_t aad_v2(uint8_t *aad, const uint8_t *v, const uint8_t *name, size_t namelen,
                     const uint8_t *row, size_t rowlen)
{
    size_t n = 0;
    memcpy(aad, v, 17);
    n = 17;
    aad[n++] = 0;
    aad[n++] = 0;
    aad[n++] = (uint8_t)(namelen >> 8);
    aad[n++] = (uint8_t)namelen;
    memcpy(aad + n, name, namelen);
    n += namelen;
    if (row && rowlen)
        memcpy(aad + n, row, rowlen);
    return n + (row ? rowlen : 0);
}

/* Opens one compact value the long way and compares it with the plaintext. */
static int reference_open(int cipher, const uint8_t *key, size_t keylen, const uint8_t *hash,
                          const uint8_t *v, size_t vlen, const uint8_t *row, size_t rowlen,
                          const uint8_t *pt, size_t ptlen)
{
    uint8_t sub[32], aad[17 + 4 + 64 + 64], *out;
    kmsenv_key *k = NULL;
    size_t aadlen;
    int ok;
    if (vlen != ptlen + KMSENV_COMPACT_OVERHEAD || rowlen > 64)
        return 0;
    if (v[0] != (row ? 0xC7 : 0xC5) || memcmp(v + 1, hash, 8) != 0)
        return 0;
    if (kmsenv_compact_subkey(2, cipher, key, keylen, hash, v + 9, sub) != KMSENV_OK)
        return 0;
    if (kmsenv_key_new(cipher, sub, keylen, &k) != KMSENV_OK)
        return 0;
    aadlen = aad_v2(aad, v, NAME, NAME_LEN, row, rowlen);
    out = malloc(ptlen + 1);
    ok = kmsenv_gcm_open(k, v + 17, aad, aadlen, v + 29, ptlen, v + vlen - 16, out) == KMSENV_OK &&
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
    CHECK_RC(kmsenv_compact_seal(cipher, key, keylen, hash, segment, NAME, NAME_LEN, &in.view,
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
        CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view, bound ? &rows.view : NULL,
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
        CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view, bound ? NULL : &rows.view,
                                     0, &stopped, &opened.out),
                 KMSENV_E_FORMAT);
        /* Another column name (or none): every value fails its tag, the first at once. */
        {
            static const uint8_t PHONE[] = "phone";
            size_t first_present = 0;
            while (!kmsenv__binview_valid(&in.view, first_present))
                first_present++;
            CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, PHONE, sizeof PHONE - 1, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_AUTH);
            CHECK(stopped == first_present);
            CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NULL, 0, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_AUTH);
            /* A prefix of the name. */
            CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN - 1, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_AUTH);
            /* Version 2 values are not version 1 values. */
            CHECK_RC(kmsenv_compact_open(1, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_FORMAT);
            CHECK(stopped == first_present);
            ERR_clear_error();
        }
        /* Another header hash: the first present value belongs to another key. */
        {
            uint8_t other[32];
            memcpy(other, hash, 32);
            other[0] ^= 1;
            CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, other, NAME, NAME_LEN, &sc.view,
                                         bound ? &rows.view : NULL, 0, &stopped, &opened.out),
                     KMSENV_E_OTHER_KEY);
            CHECK(stopped == 0 || (nulls && !kmsenv__binview_valid(&in.view, 0)));
            /* Same reference, other digest bytes: the subkey differs, the tag fails. */
            memcpy(other, hash, 32);
            other[31] ^= 1;
            CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, other, NAME, NAME_LEN, &sc.view,
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
                rc = kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view,
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
        CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view, bound ? &rows.view : NULL,
                                     150, &stopped, &opened.out),
                 KMSENV_OK);
        /* Output too small: refused, nothing written past capacity (ASan). */
        opened.out.capacity = 10;
        put_off(opened.offsets, width, 0, 0);
        CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view, bound ? &rows.view : NULL,
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
        CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &sc.view, &rows.view, 0, &stopped,
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
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, NULL, NULL, &o), KMSENV_E_ARG);
    offs[2] = 17; /* past data_len */
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, NULL, NULL, &o), KMSENV_E_ARG);
    offs[0] = -1;
    offs[2] = 12;
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, NULL, NULL, &o), KMSENV_E_ARG);
    offs[0] = 0;
    v.offset_width = 3;
    CHECK_RC(kmsenv_compact_open(2, KMSENV_CIPHER_AES, key, 32, hash, NULL, 0, &v, NULL, 0, &stopped, &o),
             KMSENV_E_ARG);
    v.offset_width = 4;
    o.capacity = 40; /* 12 + 45 does not fit */
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, NULL, NULL, &o), KMSENV_E_ARG);
    o.capacity = sizeof outbuf;
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, NULL, NULL, &o), KMSENV_OK);
    CHECK(outoffs[2] == 12 + 2 * KMSENV_COMPACT_OVERHEAD);
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 24, hash, seg, NULL, 0, &v, NULL, NULL, &o), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_open(2, KMSENV_CIPHER_AES, key, 32, hash, NULL, 0, &v, NULL, 3, &stopped, &o),
             KMSENV_E_ARG);
    /* Short values are format errors, not reads past the end. */
    outoffs[0] = 0;
    CHECK_RC(kmsenv_compact_open(2, KMSENV_CIPHER_AES, key, 32, hash, NULL, 0, &v, NULL, 0, &stopped, &o),
             KMSENV_E_FORMAT);
    CHECK(stopped == 0);
    {   /* rows of another length, or null where a value is present */
        int32_t roffs[3] = {0, 1, 2};
        uint8_t rbits = 1;
        kmsenv_binview r = {2, data, 2, roffs, 4, &rbits, 0};
        CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, &r, NULL, &o), KMSENV_E_ARG);
        r.length = 1;
        r.validity = NULL;
        CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 0, &v, &r, NULL, &o), KMSENV_E_ARG);
    }
}

/* The commitment is HKDF(key, no salt, label || fields hash, 32), and the
 * check accepts only the key (and fields) it was made with. */
static void test_commitment(int cipher, size_t keylen)
{
    static const char label[] = "kmsenv/compact/v2/commitment";
    uint8_t key[32], fh[32], c[32], want[32], info[sizeof label - 1 + 32];
    int hash = cipher == KMSENV_CIPHER_SM4 ? KMSENV_HASH_SM3 : KMSENV_HASH_SHA256;
    RAND_bytes(key, sizeof key);
    RAND_bytes(fh, sizeof fh);
    memcpy(info, label, sizeof label - 1);
    memcpy(info + sizeof label - 1, fh, 32);
    CHECK_RC(kmsenv_hkdf(hash, key, keylen, NULL, 0, info, sizeof info, want, 32), KMSENV_OK);
    CHECK_RC(kmsenv_compact_commitment(cipher, key, keylen, fh, c), KMSENV_OK);
    CHECK(memcmp(c, want, 32) == 0);
    CHECK_RC(kmsenv_compact_check_commitment(cipher, key, keylen, fh, c), KMSENV_OK);
    key[keylen - 1] ^= 1; /* another data key */
    CHECK_RC(kmsenv_compact_check_commitment(cipher, key, keylen, fh, c), KMSENV_E_AUTH);
    key[keylen - 1] ^= 1;
    fh[5] ^= 1; /* another header */
    CHECK_RC(kmsenv_compact_check_commitment(cipher, key, keylen, fh, c), KMSENV_E_AUTH);
    fh[5] ^= 1;
    c[31] ^= 0x80; /* another commitment */
    CHECK_RC(kmsenv_compact_check_commitment(cipher, key, keylen, fh, c), KMSENV_E_AUTH);
    c[31] ^= 0x80;
    /* The commitment differs from the first 32 bytes of any subkey-style output. */
    {
        uint8_t sub[32], zero_seg[8] = {0};
        CHECK_RC(kmsenv_compact_subkey(2, cipher, key, keylen, fh, zero_seg, sub), KMSENV_OK);
        CHECK(memcmp(sub, c, keylen) != 0);
    }
    CHECK_RC(kmsenv_compact_check_commitment(cipher, key, keylen, fh, NULL), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_check_commitment(cipher, NULL, keylen, fh, c), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_commitment(cipher, key, keylen, NULL, c), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_commitment(cipher, key, 24, fh, c), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_subkey(3, cipher, key, keylen, fh, fh, c), KMSENV_E_ARG);
}

/* Version 1 values (made here the long way: "kmsenv/compact/v1/key", AAD =
 * prefix || row id, no column name) open with version 1 only. */
static void test_v1_values(int cipher, size_t keylen, int bound)
{
    enum { M = 20 };
    uint8_t key[32], hash[32], segment[8], sub[32], data[M * (KMSENV_COMPACT_OVERHEAD + 40)];
    uint8_t rowdata[M * 4], opened[M * 40 + 1];
    int32_t offs[M + 1], roffs[M + 1], ooffs[M + 1];
    kmsenv_key *k = NULL;
    size_t i, pos = 0, stopped = 99;
    kmsenv_binview v, r;
    kmsenv_binout o;
    RAND_bytes(key, sizeof key);
    RAND_bytes(hash, sizeof hash);
    RAND_bytes(segment, sizeof segment);
    CHECK_RC(kmsenv_compact_subkey(1, cipher, key, keylen, hash, segment, sub), KMSENV_OK);
    CHECK_RC(kmsenv_key_new(cipher, sub, keylen, &k), KMSENV_OK);
    for (i = 0; i < M; i++) {
        uint8_t *p = data + pos, pt[40], aad[17 + 4];
        size_t ptlen = i * 2;
        memset(pt, (int)i, sizeof pt);
        roffs[i] = (int32_t)(4 * i);
        memcpy(rowdata + 4 * i, "r", 1);
        rowdata[4 * i + 1] = (uint8_t)('0' + i / 10);
        rowdata[4 * i + 2] = (uint8_t)('0' + i % 10);
        rowdata[4 * i + 3] = '!';
        offs[i] = (int32_t)pos;
        p[0] = bound ? 0xC3 : 0xC1;
        memcpy(p + 1, hash, 8);
        memcpy(p + 9, segment, 8);
        RAND_bytes(p + 17, 12);
        memcpy(aad, p, 17);
        memcpy(aad + 17, rowdata + 4 * i, 4);
        CHECK_RC(kmsenv_gcm_seal(k, p + 17, aad, bound ? 21 : 17, ptlen ? pt : NULL, ptlen,
                                 ptlen ? p + 29 : NULL, p + 29 + ptlen),
                 KMSENV_OK);
        pos += ptlen + KMSENV_COMPACT_OVERHEAD;
    }
    offs[M] = (int32_t)pos;
    roffs[M] = 4 * M;
    v = (kmsenv_binview){M, data, pos, offs, 4, NULL, 0};
    r = (kmsenv_binview){M, rowdata, sizeof rowdata, roffs, 4, NULL, 0};
    memset(ooffs, 0, sizeof ooffs);
    o = (kmsenv_binout){opened, sizeof opened, ooffs, 4};
    /* The name is not part of a version 1 value: any name opens it. */
    CHECK_RC(kmsenv_compact_open(1, cipher, key, keylen, hash, NAME, NAME_LEN, &v, bound ? &r : NULL, 0,
                                 &stopped, &o),
             KMSENV_OK);
    CHECK(stopped == M);
    for (i = 0; i < M; i++) {
        size_t j;
        CHECK((size_t)(ooffs[i + 1] - ooffs[i]) == i * 2);
        for (j = 0; j < i * 2; j++)
            if (opened[ooffs[i] + (int32_t)j] != (uint8_t)i)
                break;
        CHECK(j == i * 2);
    }
    /* A version 2 reader of the same reference refuses it (format, not tag). */
    ooffs[0] = 0;
    CHECK_RC(kmsenv_compact_open(2, cipher, key, keylen, hash, NAME, NAME_LEN, &v, bound ? &r : NULL, 0,
                                 &stopped, &o),
             KMSENV_E_FORMAT);
    CHECK(stopped == 0);
    /* A version 1 row swap is still caught by the row binding. */
    if (bound) {
        memcpy(rowdata + 4 * 3, "zzzz", 4);
        CHECK_RC(kmsenv_compact_open(1, cipher, key, keylen, hash, NULL, 0, &v, &r, 0, &stopped, &o),
                 KMSENV_E_AUTH);
        CHECK(stopped == 3);
    }
    kmsenv_key_free(k);
    kmsenv_wipe(sub, sizeof sub);
    ERR_clear_error();
}

static void test_bad_names(void)
{
    uint8_t key[32] = {0}, hash[32] = {0}, seg[8] = {0}, data[16] = {0}, outbuf[256];
    int32_t offs[3] = {0, 8, 12};
    int32_t outoffs[3] = {0};
    kmsenv_binview v = {2, data, sizeof data, offs, 4, NULL, 0};
    kmsenv_binout o = {outbuf, sizeof outbuf, outoffs, 4};
    size_t stopped;
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, NULL, 3, &v, NULL, NULL, &o), KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_open(2, KMSENV_CIPHER_AES, key, 32, hash, NULL, 3, &v, NULL, 0, &stopped, &o),
             KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_open(0, KMSENV_CIPHER_AES, key, 32, hash, NULL, 0, &v, NULL, 0, &stopped, &o),
             KMSENV_E_ARG);
    CHECK_RC(kmsenv_compact_open(3, KMSENV_CIPHER_AES, key, 32, hash, NULL, 0, &v, NULL, 0, &stopped, &o),
             KMSENV_E_ARG);
#if SIZE_MAX > UINT32_MAX
    /* Past the 4-byte length field: refused before anything is read. */
    CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, data, (size_t)UINT32_MAX + 1, &v, NULL,
                                 NULL, &o),
             KMSENV_E_ARG);
#endif
    /* A long name goes through the heap AAD buffer. */
    {
        uint8_t *big = malloc(1000);
        memset(big, 'n', 1000);
        CHECK_RC(kmsenv_compact_seal(KMSENV_CIPHER_AES, key, 32, hash, seg, big, 1000, &v, NULL, NULL, &o), KMSENV_OK);
        {
            uint8_t plain[64];
            int32_t poffs[3] = {0};
            kmsenv_binview sv = {2, outbuf, (size_t)outoffs[2], outoffs, 4, NULL, 0};
            kmsenv_binout po = {plain, sizeof plain, poffs, 4};
            CHECK_RC(kmsenv_compact_open(2, KMSENV_CIPHER_AES, key, 32, hash, big, 1000, &sv, NULL, 0, &stopped,
                                         &po),
                     KMSENV_OK);
            CHECK(poffs[2] == 12 && memcmp(plain, data, 12) == 0);
            big[999] = 'm';
            CHECK_RC(kmsenv_compact_open(2, KMSENV_CIPHER_AES, key, 32, hash, big, 1000, &sv, NULL, 0, &stopped,
                                         &po),
                     KMSENV_E_AUTH);
        }
        free(big);
        ERR_clear_error();
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
    test_bad_names();
    for (cipher = 0; cipher < 3; cipher++) {
        int c = cipher == 2 ? KMSENV_CIPHER_SM4 : KMSENV_CIPHER_AES;
        size_t kl = cipher == 0 ? 32 : 16;
        test_commitment(c, kl);
        for (bound = 0; bound < 2; bound++)
            test_v1_values(c, kl, bound);
    }
    test_der_column(4);
    test_der_column(8);
    printf("test_columns: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
