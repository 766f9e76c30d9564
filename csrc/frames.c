/* frames.c: batches of framed-stream frames sealed/opened on several threads,
 * the incremental GCM used for the single-tag Java stream layout, and HKDF.
 *
 * Each worker thread builds its own kmsenv_key from the raw key: key objects
 * hold mutable EVP/gcm128 state and must never be shared across threads.
 * Threads come from kmsenv_thread.h (pthreads, or Win32 threads on Windows). */
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>

#include "internal.h"
#include "kmsenv_thread.h"

#define FINAL_MARKER UINT32_C(0xFFFFFFFF)
#define AAD_LEN (KMSENV_FRAME_MSGID_LEN + 5)
/* Below this many bytes per thread, starting a thread costs more than it saves. */
#define MIN_BYTES_PER_THREAD ((size_t)128 * 1024)

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

typedef struct frame_job {
    const uint8_t *in;
    uint8_t *out;
    uint8_t *tag; /* seal: where the tag goes */
    const uint8_t *tag_in; /* open: the tag read */
    size_t len;
    uint32_t seq;
    int final;
} frame_job;

/* What the workers of one batch share: the next job to claim, and whether
 * one has failed (then nobody claims more). Only kmsenv__atomic_* touch it. */
typedef struct claims {
    kmsenv__counter next;
    kmsenv__counter stop;
} claims;

typedef struct worker {
    int cipher;
    const uint8_t *key;
    size_t keylen;
    const uint8_t *base_iv;
    const uint8_t *msgid;
    frame_job *jobs;
    size_t n;
    claims *shared;
    int decrypt;
    int rc;
    size_t failed; /* index of the first failing job, valid when rc != OK */
} worker;

/* Claims jobs one at a time until none is left or one failed anywhere. Jobs
 * are claimed in index order, so when job f fails every job below f was
 * already claimed and runs to its end: the lowest failure any worker records
 * is the one a single thread would have met first. */
static void run_worker(void *arg)
{
    worker *w = arg;
    kmsenv_key *k = NULL;
    uint8_t iv[KMSENV_GCM_IV_LEN], aad[AAD_LEN];
    int rc;

    rc = kmsenv_key_new(w->cipher, w->key, w->keylen, &k);
    if (rc != KMSENV_OK) {
        kmsenv__atomic_set(&w->shared->stop);
        w->failed = 0; /* no key: the batch fails as a whole */
        w->rc = rc;
        return;
    }
    memcpy(aad, w->msgid, KMSENV_FRAME_MSGID_LEN);
    while (!kmsenv__atomic_get(&w->shared->stop)) {
        size_t i = (size_t)kmsenv__atomic_next(&w->shared->next);
        frame_job *j;
        uint32_t x;
        if (i >= w->n)
            break;
        j = &w->jobs[i];
        memcpy(iv, w->base_iv, KMSENV_GCM_IV_LEN);
        x = get_be32(iv + 8) ^ j->seq;
        put_be32(iv + 8, x);
        put_be32(aad + KMSENV_FRAME_MSGID_LEN, j->seq);
        aad[KMSENV_FRAME_MSGID_LEN + 4] = (uint8_t)(j->final ? 1 : 0);
        if (w->decrypt)
            rc = kmsenv_gcm_open(k, iv, aad, AAD_LEN, j->in, j->len, j->tag_in, j->out);
        else
            rc = kmsenv_gcm_seal(k, iv, aad, AAD_LEN, j->in, j->len, j->out, j->tag);
        if (rc != KMSENV_OK) {
            kmsenv__atomic_set(&w->shared->stop); /* all or nothing: the rest is moot */
            w->failed = i;
            break;
        }
    }
    /* Written once: the workers' structs sit side by side on the caller's stack. */
    w->rc = rc;
    kmsenv_key_free(k);
}

/* Runs jobs[0..n) on up to nthreads threads (the caller's included), each
 * claiming the next job when it is free, so a thread on a slower or busier
 * core takes fewer; returns the status of the lowest failing job and its index. */
static int run_jobs(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                    const uint8_t *msgid, frame_job *jobs, size_t n, size_t total_bytes,
                    int decrypt, int nthreads, size_t *failed)
{
    worker ws[KMSENV_FRAMES_MAX_THREADS];
    kmsenv__thread threads[KMSENV_FRAMES_MAX_THREADS];
    int started[KMSENV_FRAMES_MAX_THREADS];
    claims shared = {0, 0};
    size_t t, nt, by_size;
    int rc = KMSENV_OK;

    nt = nthreads < 1 ? 1 : (size_t)nthreads;
    if (nt > KMSENV_FRAMES_MAX_THREADS)
        nt = KMSENV_FRAMES_MAX_THREADS;
    by_size = total_bytes / MIN_BYTES_PER_THREAD;
    if (nt > by_size)
        nt = by_size == 0 ? 1 : by_size;
    if (nt > n)
        nt = n == 0 ? 1 : n;

    for (t = 0; t < nt; t++) {
        ws[t] = (worker){cipher, key, keylen, base_iv, msgid, jobs, n, &shared, decrypt, KMSENV_OK, 0};
        started[t] = 0;
    }
    for (t = 1; t < nt; t++)
        started[t] = kmsenv__thread_start(&threads[t], run_worker, &ws[t]);
    run_worker(&ws[0]);
    for (t = 1; t < nt; t++) {
        if (started[t])
            kmsenv__thread_join(&threads[t]);
        /* a thread that could not start claims nothing: the others took its share */
    }
    for (t = 0; t < nt; t++) {
        if (ws[t].rc != KMSENV_OK && (rc == KMSENV_OK || ws[t].failed < *failed)) {
            rc = ws[t].rc;
            *failed = ws[t].failed;
        }
    }
    ERR_clear_error();
    return rc;
}

static int frame_size_ok(size_t fs)
{
    return fs >= KMSENV_FRAME_MIN_SIZE && fs <= KMSENV_FRAME_MAX_SIZE;
}

static int key_args_ok(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                       const uint8_t *msgid)
{
    if (key == NULL || base_iv == NULL || msgid == NULL)
        return 0;
    if (cipher == KMSENV_CIPHER_AES)
        return keylen == 16 || keylen == 32;
    return cipher == KMSENV_CIPHER_SM4 && keylen == 16;
}

size_t kmsenv_frames_sealed_size(size_t frame_size, size_t inlen, int last_is_final)
{
    size_t full, rest, size;
    if (!frame_size_ok(frame_size))
        return 0;
    full = inlen / frame_size;
    rest = inlen % frame_size;
    if (!last_is_final && rest != 0)
        return 0;
    /* Overflow-free: overheads are tiny next to frame_size >= 1024. */
    size = full * (frame_size + KMSENV_FRAME_REGULAR_OVERHEAD);
    if (last_is_final)
        size += rest + KMSENV_FRAME_FINAL_OVERHEAD;
    return size;
}

int kmsenv_frames_seal(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                       const uint8_t *msgid, uint32_t first_seq, size_t frame_size,
                       int last_is_final, const uint8_t *in, size_t inlen, uint8_t *out,
                       size_t outcap, size_t *outlen, int nthreads)
{
    size_t need, full, n, i, failed = 0;
    frame_job *jobs;
    uint8_t *p;
    int rc;

    if (outlen == NULL)
        return KMSENV_E_ARG;
    *outlen = 0;
    if (!key_args_ok(cipher, key, keylen, base_iv, msgid) || KMSENV_BAD_BUF(in, inlen))
        return KMSENV_E_ARG;
    need = kmsenv_frames_sealed_size(frame_size, inlen, last_is_final);
    if (need == 0) {
        if (inlen != 0 || last_is_final || !frame_size_ok(frame_size))
            return KMSENV_E_ARG;
        return KMSENV_OK; /* nothing to seal */
    }
    if (out == NULL || outcap < need)
        return KMSENV_E_ARG;
    if ((uintptr_t)out < (uintptr_t)in + inlen && (uintptr_t)in < (uintptr_t)out + need)
        return KMSENV_E_ARG; /* the wire layout shifts data: no overlap at all */
    full = inlen / frame_size;
    n = full + (last_is_final ? 1 : 0);
    if (first_seq == 0 || (uint64_t)first_seq + n - 1 > KMSENV_FRAME_MAX_SEQ)
        return KMSENV_E_ARG;

    jobs = OPENSSL_malloc(n * sizeof(*jobs));
    if (jobs == NULL) {
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    p = out;
    for (i = 0; i < n; i++) {
        uint32_t seq = first_seq + (uint32_t)i;
        int final = last_is_final && i == full;
        size_t len = final ? inlen % frame_size : frame_size;
        if (final) {
            put_be32(p, FINAL_MARKER);
            put_be32(p + 4, seq);
            put_be32(p + 8, (uint32_t)len);
            p += 12;
        } else {
            put_be32(p, seq);
            p += 4;
        }
        jobs[i] = (frame_job){in + i * frame_size, p, p + len, NULL, len, seq, final};
        p += len + KMSENV_GCM_TAG_LEN;
    }
    rc = run_jobs(cipher, key, keylen, base_iv, msgid, jobs, n, inlen, 0, nthreads, &failed);
    OPENSSL_free(jobs);
    if (rc != KMSENV_OK) {
        kmsenv_wipe(out, need);
        return rc;
    }
    *outlen = need;
    return KMSENV_OK;
}

/* Splits in[0..inlen) into frames (no crypto); on a malformed frame returns
 * KMSENV_E_FORMAT with *failed = its index. jobs == NULL only counts. */
static int parse_frames(const uint8_t *in, size_t inlen, uint32_t first_seq, size_t fs,
                        uint8_t *out, frame_job *jobs, size_t *n_out, size_t *pt_out,
                        int *final_seen, size_t *failed)
{
    size_t pos = 0, n = 0, pt = 0;
    uint64_t expect = first_seq;

    *final_seen = 0;
    while (pos < inlen) {
        size_t left = inlen - pos, len;
        uint32_t first;
        int final;
        *failed = n;
        if (expect == 0 || expect > KMSENV_FRAME_MAX_SEQ || left < 4)
            return KMSENV_E_FORMAT;
        first = get_be32(in + pos);
        final = first == FINAL_MARKER;
        if (final) {
            if (left < 12 || get_be32(in + pos + 4) != expect)
                return KMSENV_E_FORMAT;
            len = get_be32(in + pos + 8);
            /* Exactly to the end: truncated and trailing bytes both fail. */
            if (len >= fs || left - 12 != len + KMSENV_GCM_TAG_LEN)
                return KMSENV_E_FORMAT;
            pos += 12;
        } else {
            if (first != expect || left - 4 < fs + KMSENV_GCM_TAG_LEN)
                return KMSENV_E_FORMAT;
            len = fs;
            pos += 4;
        }
        if (jobs != NULL)
            jobs[n] = (frame_job){in + pos, out + pt, NULL, in + pos + len, len, (uint32_t)expect, final};
        pos += len + KMSENV_GCM_TAG_LEN;
        pt += len;
        n++;
        expect++;
        if (final)
            *final_seen = 1;
    }
    *n_out = n;
    *pt_out = pt;
    return KMSENV_OK;
}

int kmsenv_frames_open(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                       const uint8_t *msgid, uint32_t first_seq, size_t frame_size,
                       const uint8_t *in, size_t inlen, uint8_t *out, size_t outcap,
                       size_t *outlen, size_t *nframes, int *final_seen, size_t *failed_index,
                       int nthreads)
{
    size_t n = 0, pt = 0, failed = 0;
    frame_job *jobs;
    int rc, fin = 0;

    if (outlen == NULL || nframes == NULL || final_seen == NULL || failed_index == NULL)
        return KMSENV_E_ARG;
    *outlen = 0;
    *nframes = 0;
    *final_seen = 0;
    *failed_index = 0;
    if (!key_args_ok(cipher, key, keylen, base_iv, msgid) || !frame_size_ok(frame_size) ||
        KMSENV_BAD_BUF(in, inlen) || KMSENV_BAD_BUF(out, outcap))
        return KMSENV_E_ARG;
    /* Plaintext does not sit at the ciphertext's offsets: no overlap at all. */
    if (inlen != 0 && outcap != 0 && (uintptr_t)out < (uintptr_t)in + inlen &&
        (uintptr_t)in < (uintptr_t)out + outcap)
        return KMSENV_E_ARG;

    rc = parse_frames(in, inlen, first_seq, frame_size, out, NULL, &n, &pt, &fin, &failed);
    if (rc != KMSENV_OK) {
        *failed_index = failed;
        kmsenv_wipe(out, outcap);
        return rc;
    }
    if (n == 0)
        return KMSENV_OK;
    if (outcap < pt)
        return KMSENV_E_ARG;
    jobs = OPENSSL_malloc(n * sizeof(*jobs));
    if (jobs == NULL) {
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    parse_frames(in, inlen, first_seq, frame_size, out, jobs, &n, &pt, &fin, &failed);
    rc = run_jobs(cipher, key, keylen, base_iv, msgid, jobs, n, pt, 1, nthreads, &failed);
    OPENSSL_free(jobs);
    if (rc != KMSENV_OK) {
        /* Frames other workers verified go too: the batch is all or nothing. */
        kmsenv_wipe(out, outcap);
        *failed_index = failed;
        return rc;
    }
    *outlen = pt;
    *nframes = n;
    *final_seen = fin;
    return KMSENV_OK;
}

/* ------------------------------------------------------------ incremental GCM */

enum { ST_AAD, ST_DATA, ST_DONE };

struct kmsenv_gcm_stream {
    kmsenv_key *k;
    int decrypt;
    int state;
    uint64_t total; /* bytes through update, against the GCM limit */
};

int kmsenv_gcm_stream_new(int cipher, const uint8_t *key, size_t keylen, const uint8_t *iv,
                          int decrypt, kmsenv_gcm_stream **out)
{
    kmsenv_gcm_stream *s;
    int rc;

    if (out == NULL)
        return KMSENV_E_ARG;
    *out = NULL;
    if (iv == NULL)
        return KMSENV_E_ARG;
    s = OPENSSL_zalloc(sizeof(*s));
    if (s == NULL) {
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    s->decrypt = decrypt != 0;
    rc = kmsenv_key_new(cipher, key, keylen, &s->k);
    if (rc == KMSENV_OK) {
        if (cipher == KMSENV_CIPHER_AES) {
            EVP_CIPHER_CTX *c = kmsenv__aes_evp(s->k, s->decrypt);
            if (c == NULL || EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, -1) != 1)
                rc = KMSENV_E_CRYPTO;
        } else {
            s->k->sm4.failed = 0;
            CRYPTO_gcm128_setiv(s->k->gcm, iv, KMSENV_GCM_IV_LEN);
        }
    }
    if (rc != KMSENV_OK) {
        kmsenv_gcm_stream_free(s);
        ERR_clear_error();
        return rc;
    }
    *out = s;
    return KMSENV_OK;
}

static EVP_CIPHER_CTX *stream_ctx(kmsenv_gcm_stream *s)
{
    return s->decrypt ? s->k->dec : s->k->enc;
}

int kmsenv_gcm_stream_aad(kmsenv_gcm_stream *s, const uint8_t *aad, size_t aadlen)
{
    int outl;
    if (s == NULL || s->state != ST_AAD || KMSENV_BAD_BUF(aad, aadlen) ||
        (uint64_t)aadlen > KMSENV_GCM_MAX_AAD)
        return KMSENV_E_ARG;
    s->state = ST_DATA;
    if (aadlen == 0)
        return KMSENV_OK;
    if (s->k->cipher == KMSENV_CIPHER_AES) {
        while (aadlen != 0) {
            size_t step = aadlen < KMSENV_EVP_CHUNK ? aadlen : KMSENV_EVP_CHUNK;
            if (EVP_CipherUpdate(stream_ctx(s), NULL, &outl, aad, (int)step) != 1)
                goto fail;
            aad += step;
            aadlen -= step;
        }
    } else if (CRYPTO_gcm128_aad(s->k->gcm, aad, aadlen) != 0) {
        goto fail;
    }
    return KMSENV_OK;
fail:
    s->state = ST_DONE;
    ERR_clear_error();
    return KMSENV_E_CRYPTO;
}

int kmsenv_gcm_stream_update(kmsenv_gcm_stream *s, const uint8_t *in, size_t inlen, uint8_t *out)
{
    int outl;
    size_t left = inlen;
    const uint8_t *ip = in;
    uint8_t *op = out;

    if (s == NULL || s->state == ST_DONE || KMSENV_BAD_BUF(in, inlen) || KMSENV_BAD_BUF(out, inlen) ||
        kmsenv__partial_overlap(in, out, inlen))
        return KMSENV_E_ARG;
    if ((uint64_t)inlen > KMSENV_GCM_MAX_IN - s->total)
        return KMSENV_E_ARG; /* past 2^36 - 32 bytes GCM's counter would repeat */
    s->state = ST_DATA;
    if (inlen == 0)
        return KMSENV_OK;
    if (s->k->cipher == KMSENV_CIPHER_AES) {
        while (left != 0) {
            size_t step = left < KMSENV_EVP_CHUNK ? left : KMSENV_EVP_CHUNK;
            if (EVP_CipherUpdate(stream_ctx(s), op, &outl, ip, (int)step) != 1 || (size_t)outl != step)
                goto fail;
            ip += step;
            op += step;
            left -= step;
        }
    } else {
        int r = s->decrypt ? CRYPTO_gcm128_decrypt_ctr32(s->k->gcm, in, out, inlen, s->k->sm4.ctr32)
                           : CRYPTO_gcm128_encrypt_ctr32(s->k->gcm, in, out, inlen, s->k->sm4.ctr32);
        if (r != 0 || s->k->sm4.failed)
            goto fail;
    }
    s->total += inlen;
    return KMSENV_OK;
fail:
    s->state = ST_DONE;
    kmsenv_wipe(out, inlen);
    ERR_clear_error();
    return KMSENV_E_CRYPTO;
}

int kmsenv_gcm_stream_final(kmsenv_gcm_stream *s, uint8_t *tag)
{
    unsigned char fin[16];
    int outl;
    if (s == NULL || tag == NULL || s->decrypt || s->state == ST_DONE)
        return KMSENV_E_ARG;
    s->state = ST_DONE;
    if (s->k->cipher == KMSENV_CIPHER_AES) {
        if (EVP_EncryptFinal_ex(s->k->enc, fin, &outl) != 1 ||
            EVP_CIPHER_CTX_ctrl(s->k->enc, EVP_CTRL_AEAD_GET_TAG, KMSENV_GCM_TAG_LEN, tag) != 1) {
            ERR_clear_error();
            return KMSENV_E_CRYPTO;
        }
    } else {
        CRYPTO_gcm128_tag(s->k->gcm, tag, KMSENV_GCM_TAG_LEN);
        if (s->k->sm4.failed)
            return KMSENV_E_CRYPTO;
    }
    return KMSENV_OK;
}

int kmsenv_gcm_stream_verify(kmsenv_gcm_stream *s, const uint8_t *tag)
{
    unsigned char fin[16];
    int outl;
    if (s == NULL || tag == NULL || !s->decrypt || s->state == ST_DONE)
        return KMSENV_E_ARG;
    s->state = ST_DONE;
    if (s->k->cipher == KMSENV_CIPHER_AES) {
        if (EVP_CIPHER_CTX_ctrl(s->k->dec, EVP_CTRL_AEAD_SET_TAG, KMSENV_GCM_TAG_LEN, (void *)tag) != 1) {
            ERR_clear_error();
            return KMSENV_E_CRYPTO;
        }
        /* The provider compares with CRYPTO_memcmp. */
        if (EVP_DecryptFinal_ex(s->k->dec, fin, &outl) != 1) {
            ERR_clear_error();
            return KMSENV_E_AUTH;
        }
        return KMSENV_OK;
    }
    /* CRYPTO_gcm128_finish compares with CRYPTO_memcmp. */
    if (CRYPTO_gcm128_finish(s->k->gcm, tag, KMSENV_GCM_TAG_LEN) != 0)
        return s->k->sm4.failed ? KMSENV_E_CRYPTO : KMSENV_E_AUTH;
    return s->k->sm4.failed ? KMSENV_E_CRYPTO : KMSENV_OK;
}

void kmsenv_gcm_stream_free(kmsenv_gcm_stream *s)
{
    if (s == NULL)
        return;
    kmsenv_key_free(s->k);
    kmsenv__clear_free(s, sizeof(*s));
}

/* ------------------------------------------------------------ HKDF */

int kmsenv_hkdf(int hash, const uint8_t *ikm, size_t ikmlen, const uint8_t *salt, size_t saltlen,
                const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen)
{
    static const uint8_t empty[1] = {0};
    const char *digest;
    EVP_KDF *kdf;
    EVP_KDF_CTX *ctx;
    OSSL_PARAM params[5], *p = params;
    int rc = KMSENV_OK;

    if (hash == KMSENV_HASH_SHA256)
        digest = "SHA256";
    else if (hash == KMSENV_HASH_SM3)
        digest = "SM3";
    else
        return KMSENV_E_ARG;
    if (KMSENV_BAD_BUF(ikm, ikmlen) || KMSENV_BAD_BUF(salt, saltlen) || KMSENV_BAD_BUF(info, infolen) ||
        out == NULL || outlen == 0 || outlen > 255 * 32 || ikmlen == 0)
        return KMSENV_E_ARG;
    kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (kdf == NULL) {
        ERR_clear_error();
        return KMSENV_E_UNSUPPORTED;
    }
    ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (ctx == NULL) {
        ERR_clear_error();
        return KMSENV_E_NOMEM;
    }
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)(saltlen ? salt : empty), saltlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)(infolen ? info : empty), infolen);
    *p = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(ctx, out, outlen, params) != 1) {
        /* A missing digest (SM3 disabled) is the likely cause. */
        rc = KMSENV_E_UNSUPPORTED;
        kmsenv_wipe(out, outlen);
        ERR_clear_error();
    }
    EVP_KDF_CTX_free(ctx);
    return rc;
}
