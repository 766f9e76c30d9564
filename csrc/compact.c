/*
 * compact.c: the compact column format (kmsenv_core.h, docs/format.md §4).
 * A value carries a key reference instead of the key header, and is sealed
 * under a per-segment subkey so that the number of values per data key is not
 * bounded by the random-IV limit of GCM. Version 2 key headers commit to their
 * data key and version 2 values bind their column name; version 1 is opened
 * only for readers that ask for it.
 */
#include <stdlib.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "internal.h"

/* One label per derivation and version, none a prefix of another's input. */
static const char SUBKEY_INFO_V1[] = "kmsenv/compact/v1/key";
static const char SUBKEY_INFO_V2[] = "kmsenv/compact/v2/key";
static const char COMMIT_INFO[] = "kmsenv/compact/v2/commitment";
#define SUBKEY_INFO_LEN (sizeof SUBKEY_INFO_V2 - 1)
#define COMMIT_INFO_LEN (sizeof COMMIT_INFO - 1)
KMSENV_STATIC_ASSERT(sizeof SUBKEY_INFO_V1 == sizeof SUBKEY_INFO_V2, "both subkey labels have one length");

/* The HKDF hash of a cipher and key length (SHA-256 for AES, SM3 for SM4). */
static int hash_for(int cipher, size_t keylen, int *hash)
{
    if (cipher == KMSENV_CIPHER_AES && (keylen == 16 || keylen == 32))
        *hash = KMSENV_HASH_SHA256;
    else if (cipher == KMSENV_CIPHER_SM4 && keylen == 16)
        *hash = KMSENV_HASH_SM3;
    else
        return 0;
    return 1;
}

int kmsenv_compact_subkey(int version, int cipher, const uint8_t *key, size_t keylen,
                          const uint8_t *header_hash, const uint8_t *segment, uint8_t *out)
{
    uint8_t info[SUBKEY_INFO_LEN + KMSENV_HEADER_HASH_LEN];
    int hash;
    if (key == NULL || header_hash == NULL || segment == NULL || out == NULL || (version != 1 && version != 2) ||
        !hash_for(cipher, keylen, &hash))
        return KMSENV_E_ARG;
    memcpy(info, version == 1 ? SUBKEY_INFO_V1 : SUBKEY_INFO_V2, SUBKEY_INFO_LEN);
    memcpy(info + SUBKEY_INFO_LEN, header_hash, KMSENV_HEADER_HASH_LEN);
    return kmsenv_hkdf(hash, key, keylen, segment, KMSENV_COMPACT_SEGMENT_LEN, info, sizeof info, out,
                       keylen);
}

int kmsenv_compact_commitment(int cipher, const uint8_t *key, size_t keylen,
                              const uint8_t *fields_hash, uint8_t *out)
{
    uint8_t info[COMMIT_INFO_LEN + KMSENV_HEADER_HASH_LEN];
    int hash;
    if (key == NULL || fields_hash == NULL || out == NULL || !hash_for(cipher, keylen, &hash))
        return KMSENV_E_ARG;
    memcpy(info, COMMIT_INFO, COMMIT_INFO_LEN);
    memcpy(info + COMMIT_INFO_LEN, fields_hash, KMSENV_HEADER_HASH_LEN);
    /* No salt (RFC 5869: HashLen zero bytes): the header has no nonce of its
     * own, and the label keeps this output apart from every subkey. */
    return kmsenv_hkdf(hash, key, keylen, NULL, 0, info, sizeof info, out, KMSENV_COMPACT_COMMIT_LEN);
}

int kmsenv_compact_check_commitment(int cipher, const uint8_t *key, size_t keylen,
                                    const uint8_t *fields_hash, const uint8_t *commitment)
{
    uint8_t want[KMSENV_COMPACT_COMMIT_LEN];
    int rc;
    if (commitment == NULL)
        return KMSENV_E_ARG;
    rc = kmsenv_compact_commitment(cipher, key, keylen, fields_hash, want);
    if (rc == KMSENV_OK && CRYPTO_memcmp(want, commitment, sizeof want) != 0)
        rc = KMSENV_E_AUTH;
    kmsenv_wipe(want, sizeof want);
    return rc;
}

static int subkey_new(int version, int cipher, const uint8_t *key, size_t keylen, const uint8_t *header_hash,
                      const uint8_t *segment, kmsenv_key **out)
{
    uint8_t sub[32];
    int rc = kmsenv_compact_subkey(version, cipher, key, keylen, header_hash, segment, sub);
    if (rc == KMSENV_OK)
        rc = kmsenv_key_new(cipher, sub, keylen, out);
    kmsenv_wipe(sub, sizeof sub);
    return rc;
}

/* AAD for one value: the 17-byte prefix, then (version 2) the length-prefixed
 * column name, then the row id when bound. Short ones are assembled in
 * `small`, longer ones in a growing heap buffer. */
typedef struct {
    uint8_t small[256];
    uint8_t *heap;
    size_t heapcap;
    int version;
    const uint8_t *name;
    size_t namelen;
} aadbuf;

static void aadbuf_init(aadbuf *b, int version, const uint8_t *name, size_t namelen)
{
    memset(b->small, 0, sizeof b->small);
    b->heap = NULL;
    b->heapcap = 0;
    b->version = version;
    b->name = name;
    b->namelen = namelen;
}

static const uint8_t *aad_for(aadbuf *b, const uint8_t *prefix, const kmsenv_binview *rows, size_t i,
                              size_t *aadlen)
{
    int64_t a = 0, z = 0;
    size_t rowlen = 0, head, total;
    uint8_t *dst;
    if (b->version == 1 && rows == NULL) {
        *aadlen = KMSENV_COMPACT_PREFIX_LEN;
        return prefix;
    }
    if (rows != NULL) {
        a = kmsenv__binview_off(rows, i);
        z = kmsenv__binview_off(rows, i + 1);
        rowlen = (size_t)(z - a);
    }
    /* namelen <= UINT32_MAX was checked by the caller. */
    head = KMSENV_COMPACT_PREFIX_LEN + (b->version == 2 ? 4 + b->namelen : 0);
    if (rowlen > SIZE_MAX - head)
        return NULL;
    total = head + rowlen;
    if (total <= sizeof b->small) {
        dst = b->small;
    } else {
        if (total > b->heapcap) {
            uint8_t *grown = malloc(total);
            if (grown == NULL)
                return NULL;
            if (b->heap != NULL) {
                kmsenv_wipe(b->heap, b->heapcap);
                free(b->heap);
            }
            b->heap = grown;
            b->heapcap = total;
        }
        dst = b->heap;
    }
    memcpy(dst, prefix, KMSENV_COMPACT_PREFIX_LEN);
    if (b->version == 2) {
        uint8_t *p = dst + KMSENV_COMPACT_PREFIX_LEN;
        p[0] = (uint8_t)(b->namelen >> 24);
        p[1] = (uint8_t)(b->namelen >> 16);
        p[2] = (uint8_t)(b->namelen >> 8);
        p[3] = (uint8_t)b->namelen;
        if (b->namelen)
            memcpy(p + 4, b->name, b->namelen);
    }
    if (rowlen)
        memcpy(dst + head, rows->data + a, rowlen);
    *aadlen = total;
    return dst;
}

/* The column name is at most 2^32 - 1 bytes (its length field). */
static int name_ok(const uint8_t *name, size_t namelen)
{
    return !KMSENV_BAD_BUF(name, namelen) && (uint64_t)namelen <= UINT32_MAX;
}

static void aadbuf_free(aadbuf *b)
{
    kmsenv_wipe(b->small, sizeof b->small);
    if (b->heap != NULL) {
        kmsenv_wipe(b->heap, b->heapcap);
        free(b->heap);
    }
}

static int rows_ok(const kmsenv_binview *in, const kmsenv_binview *rows)
{
    size_t i;
    if (rows == NULL)
        return 1;
    if (!kmsenv__binview_check(rows) || rows->length != in->length)
        return 0;
    for (i = 0; i < in->length; i++)
        if (kmsenv__binview_valid(in, i) && !kmsenv__binview_valid(rows, i))
            return 0;
    return 1;
}

static int out_ok(const kmsenv_binout *o)
{
    return o != NULL && o->offsets != NULL && (o->offset_width == 4 || o->offset_width == 8) &&
           !KMSENV_BAD_BUF(o->data, o->capacity);
}

int kmsenv_compact_seal(int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *header_hash, const uint8_t *segment,
                        const uint8_t *name, size_t namelen,
                        const kmsenv_binview *in, const kmsenv_binview *rows,
                        const uint8_t *ivs, kmsenv_binout *out)
{
    kmsenv__ivpool pool = {{0}, 0, 0};
    aadbuf ab;
    kmsenv_key *sub = NULL;
    size_t pos, first, i;
    int rc;

    aadbuf_init(&ab, 2, name, namelen);
    if (header_hash == NULL || segment == NULL || !name_ok(name, namelen) || !out_ok(out) ||
        !kmsenv__binview_check(in) || in->length > KMSENV_COMPACT_MAX_SEGMENT || !rows_ok(in, rows))
        return KMSENV_E_ARG;
    first = pos = kmsenv__binout_get(out, 0);
    if (pos == SIZE_MAX || pos > out->capacity)
        return KMSENV_E_ARG;
    rc = subkey_new(2, cipher, key, keylen, header_hash, segment, &sub);
    if (rc != KMSENV_OK)
        return rc;

    for (i = 0; i < in->length; i++) {
        if (kmsenv__binview_valid(in, i)) {
            int64_t a = kmsenv__binview_off(in, i), b = kmsenv__binview_off(in, i + 1);
            size_t ptlen = (size_t)(b - a), aadlen;
            uint8_t *p = out->data + pos;
            const uint8_t *aad;
            if (ptlen > out->capacity - pos || out->capacity - pos - ptlen < KMSENV_COMPACT_OVERHEAD) {
                rc = KMSENV_E_ARG;
                goto fail;
            }
            p[0] = (uint8_t)(KMSENV_COMPACT_FORMAT | (rows != NULL ? KMSENV_COMPACT_ROW_BOUND : 0));
            memcpy(p + 1, header_hash, KMSENV_COMPACT_REF_LEN);
            memcpy(p + 1 + KMSENV_COMPACT_REF_LEN, segment, KMSENV_COMPACT_SEGMENT_LEN);
            {
                const uint8_t *iv = ivs != NULL ? ivs + i * KMSENV_GCM_IV_LEN
                                                : kmsenv__ivpool_next(&pool, in->length - i);
                if (iv == NULL) {
                    rc = KMSENV_E_CRYPTO;
                    goto fail;
                }
                memcpy(p + KMSENV_COMPACT_PREFIX_LEN, iv, KMSENV_GCM_IV_LEN);
            }
            aad = aad_for(&ab, p, rows, i, &aadlen);
            if (aad == NULL) {
                rc = KMSENV_E_NOMEM;
                goto fail;
            }
            rc = kmsenv_gcm_seal(sub, p + KMSENV_COMPACT_PREFIX_LEN, aad, aadlen,
                                 ptlen ? in->data + a : NULL, ptlen,
                                 ptlen ? p + KMSENV_COMPACT_PREFIX_LEN + KMSENV_GCM_IV_LEN : NULL,
                                 p + KMSENV_COMPACT_PREFIX_LEN + KMSENV_GCM_IV_LEN + ptlen);
            if (rc != KMSENV_OK)
                goto fail;
            pos += ptlen + KMSENV_COMPACT_OVERHEAD;
        }
        if (!kmsenv__binout_put(out, i + 1, pos)) {
            rc = KMSENV_E_ARG;
            goto fail;
        }
    }
    kmsenv_key_free(sub);
    aadbuf_free(&ab);
    kmsenv_wipe(&pool, sizeof pool);
    return KMSENV_OK;

fail:
    kmsenv_key_free(sub);
    aadbuf_free(&ab);
    kmsenv_wipe(&pool, sizeof pool);
    kmsenv_wipe(out->data + first, pos - first);
    ERR_clear_error();
    return rc;
}

int kmsenv_compact_open(int version, int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *header_hash, const uint8_t *name, size_t namelen,
                        const kmsenv_binview *in, const kmsenv_binview *rows, size_t start,
                        size_t *stopped, kmsenv_binout *out)
{
    aadbuf ab;
    const int expected = version == 1 ? KMSENV_COMPACT_FORMAT_V1 : KMSENV_COMPACT_FORMAT;
    kmsenv_key *sub = NULL;
    uint8_t segment[KMSENV_COMPACT_SEGMENT_LEN];
    size_t pos, first, i;
    int rc = KMSENV_OK;

    aadbuf_init(&ab, version, name, namelen);
    if ((version != 1 && version != 2) || header_hash == NULL || stopped == NULL || !name_ok(name, namelen) ||
        !out_ok(out) || !kmsenv__binview_check(in) || start > in->length || !rows_ok(in, rows) || key == NULL)
        return KMSENV_E_ARG;
    first = pos = kmsenv__binout_get(out, start);
    if (pos == SIZE_MAX || pos > out->capacity)
        return KMSENV_E_ARG;

    for (i = start; i < in->length; i++) {
        if (kmsenv__binview_valid(in, i)) {
            int64_t a = kmsenv__binview_off(in, i), b = kmsenv__binview_off(in, i + 1);
            size_t vlen = (size_t)(b - a), ctlen, aadlen;
            const uint8_t *v = in->data + a, *aad;
            int bound, format;
            format = vlen < KMSENV_COMPACT_OVERHEAD ? 0 : v[0] & ~KMSENV_COMPACT_ROW_BOUND;
            if (format != KMSENV_COMPACT_FORMAT && format != KMSENV_COMPACT_FORMAT_V1) {
                rc = KMSENV_E_FORMAT;
                goto stop;
            }
            /* Another reference: the caller looks its header up (and decides
             * on a value of the other version there). */
            if (memcmp(v + 1, header_hash, KMSENV_COMPACT_REF_LEN) != 0) {
                rc = KMSENV_E_OTHER_KEY;
                goto stop;
            }
            /* A value of the other version under this header's reference:
             * never valid (each version derives its own subkeys and AAD). */
            if (format != expected) {
                rc = KMSENV_E_FORMAT;
                goto stop;
            }
            bound = (v[0] & KMSENV_COMPACT_ROW_BOUND) != 0;
            if (bound != (rows != NULL)) {
                rc = KMSENV_E_FORMAT;
                goto stop;
            }
            ctlen = vlen - KMSENV_COMPACT_OVERHEAD;
            if (ctlen > out->capacity - pos) {
                rc = KMSENV_E_ARG;
                goto stop;
            }
            if (sub == NULL || memcmp(segment, v + 1 + KMSENV_COMPACT_REF_LEN, sizeof segment) != 0) {
                kmsenv_key_free(sub);
                sub = NULL;
                memcpy(segment, v + 1 + KMSENV_COMPACT_REF_LEN, sizeof segment);
                rc = subkey_new(version, cipher, key, keylen, header_hash, segment, &sub);
                if (rc != KMSENV_OK)
                    goto stop;
            }
            aad = aad_for(&ab, v, rows, i, &aadlen);
            if (aad == NULL) {
                rc = KMSENV_E_NOMEM;
                goto stop;
            }
            rc = kmsenv_gcm_open(sub, v + KMSENV_COMPACT_PREFIX_LEN, aad, aadlen,
                                 ctlen ? v + KMSENV_COMPACT_PREFIX_LEN + KMSENV_GCM_IV_LEN : NULL,
                                 ctlen, v + vlen - KMSENV_GCM_TAG_LEN,
                                 ctlen ? out->data + pos : NULL);
            if (rc != KMSENV_OK)
                goto stop;
            pos += ctlen;
        }
        if (!kmsenv__binout_put(out, i + 1, pos)) {
            rc = KMSENV_E_ARG;
            goto stop;
        }
    }
    *stopped = in->length;
    kmsenv_key_free(sub);
    aadbuf_free(&ab);
    return KMSENV_OK;

stop:
    *stopped = i;
    kmsenv_key_free(sub);
    aadbuf_free(&ab);
    if (rc != KMSENV_E_OTHER_KEY)
        kmsenv_wipe(out->data + first, pos - first);
    ERR_clear_error();
    return rc;
}
