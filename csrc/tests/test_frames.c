/*
 * test_frames.c: C-only tests for frames.c (frame batches, incremental GCM,
 * HKDF), built by run.sh with ASan+UBSan and under valgrind. Frames are
 * checked against one-shot kmsenv_gcm_seal with hand-built IVs and AADs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rand.h>

#include "internal.h"
#include "check.h"



#define FS 1024


static int all_zero(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Frame `seq` of a message, sealed independently with the one-shot API. */
static void reference_frame(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                            const uint8_t *msgid, uint32_t seq, int final, const uint8_t *pt,
                            size_t len, uint8_t *ct, uint8_t *tag)
{
    kmsenv_key *k = NULL;
    uint8_t iv[12], aad[37];
    uint32_t low;
    memcpy(iv, base_iv, 12);
    low = ((uint32_t)iv[8] << 24 | (uint32_t)iv[9] << 16 | (uint32_t)iv[10] << 8 | iv[11]) ^ seq;
    put32(iv + 8, low);
    memcpy(aad, msgid, 32);
    put32(aad + 32, seq);
    aad[36] = (uint8_t)final;
    CHECK_RC(kmsenv_key_new(cipher, key, keylen, &k), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_seal(k, iv, aad, sizeof aad, pt, len, ct, tag), KMSENV_OK);
    kmsenv_key_free(k);
}

static void test_roundtrip(int cipher, size_t keylen)
{
    static const size_t lens[] = {0, 1, FS - 1, FS, FS + 1, 3 * FS, 700 * FS + 5};
    uint8_t key[32], base_iv[12], msgid[32];
    size_t li;

    RAND_bytes(key, sizeof key);
    RAND_bytes(base_iv, sizeof base_iv);
    RAND_bytes(msgid, sizeof msgid);
    for (li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t len = lens[li], need, outlen = 0, ptlen = 0, nframes = 0, failidx = 99, i, full;
        int fin = -1;
        uint8_t *pt = malloc(len + 1), *w1, *w3, *back;
        uint8_t ct[FS], tag[16];
        RAND_bytes(pt, (int)len + 1);
        need = kmsenv_frames_sealed_size(FS, len, 1);
        full = len / FS;
        CHECK(need == full * (FS + 20) + len % FS + 28);
        w1 = malloc(need);
        w3 = malloc(need);
        back = malloc(len + 1);
        CHECK_RC(kmsenv_frames_seal(cipher, key, keylen, base_iv, msgid, 7, FS, 1, pt, len, w1, need, &outlen, 1),
                 KMSENV_OK);
        CHECK(outlen == need);
        CHECK_RC(kmsenv_frames_seal(cipher, key, keylen, base_iv, msgid, 7, FS, 1, pt, len, w3, need, &outlen, 3),
                 KMSENV_OK);
        CHECK(memcmp(w1, w3, need) == 0); /* thread count never changes the bytes */
        /* Every frame equals an independent one-shot seal. */
        for (i = 0; i <= full; i++) {
            int final = i == full;
            size_t flen = final ? len % FS : FS;
            const uint8_t *f = w1 + i * (FS + 20);
            reference_frame(cipher, key, keylen, base_iv, msgid, 7 + (uint32_t)i, final, pt + i * FS, flen, ct, tag);
            if (final) {
                uint8_t head[12];
                put32(head, 0xFFFFFFFFu);
                put32(head + 4, 7 + (uint32_t)i);
                put32(head + 8, (uint32_t)flen);
                CHECK(memcmp(f, head, 12) == 0);
                f += 12;
            } else {
                uint8_t head[4];
                put32(head, 7 + (uint32_t)i);
                CHECK(memcmp(f, head, 4) == 0);
                f += 4;
            }
            CHECK(flen == 0 || memcmp(f, ct, flen) == 0);
            CHECK(memcmp(f + flen, tag, 16) == 0);
        }
        CHECK_RC(kmsenv_frames_open(cipher, key, keylen, base_iv, msgid, 7, FS, w1, need, back, len + 1, &ptlen,
                                    &nframes, &fin, &failidx, 2),
                 KMSENV_OK);
        CHECK(ptlen == len && nframes == full + 1 && fin == 1 && memcmp(back, pt, len) == 0);

        /* A flipped bit in the last frame: all or nothing, its index reported. */
        w1[need - 1] ^= 1;
        memset(back, 0xAA, len + 1);
        CHECK_RC(kmsenv_frames_open(cipher, key, keylen, base_iv, msgid, 7, FS, w1, need, back, len + 1, &ptlen,
                                    &nframes, &fin, &failidx, 3),
                 KMSENV_E_AUTH);
        CHECK(failidx == full && ptlen == 0 && all_zero(back, len + 1));
        w1[need - 1] ^= 1;
        /* Wrong first sequence number: the seq fields no longer match. */
        CHECK_RC(kmsenv_frames_open(cipher, key, keylen, base_iv, msgid, 8, FS, w1, need, back, len + 1, &ptlen,
                                    &nframes, &fin, &failidx, 1),
                 KMSENV_E_FORMAT);
        CHECK(failidx == 0);
        /* Another message id: every tag fails, the first is named. */
        msgid[0] ^= 1;
        CHECK_RC(kmsenv_frames_open(cipher, key, keylen, base_iv, msgid, 7, FS, w1, need, back, len + 1, &ptlen,
                                    &nframes, &fin, &failidx, 2),
                 KMSENV_E_AUTH);
        CHECK(failidx == 0 && all_zero(back, len + 1));
        msgid[0] ^= 1;
        free(pt);
        free(w1);
        free(w3);
        free(back);
    }
}

static void test_open_format(void)
{
    uint8_t key[16] = {1}, iv[12] = {0}, msgid[32] = {2};
    size_t len = 3 * FS + 10, need = kmsenv_frames_sealed_size(FS, len, 1), outlen, ptlen, nf, fi;
    uint8_t *pt = calloc(1, len), *w = malloc(need + 8), *back = malloc(len);
    int fin;

    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, 1, pt, len, w, need, &outlen, 1),
             KMSENV_OK);
    /* Cut anywhere inside: FORMAT, naming the cut frame. */
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, need - 1, back, len, &ptlen, &nf,
                                &fin, &fi, 1),
             KMSENV_E_FORMAT);
    CHECK(fi == 3);
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, FS + 10, back, len, &ptlen, &nf,
                                &fin, &fi, 1),
             KMSENV_E_FORMAT);
    CHECK(fi == 0);
    /* Whole regular frames only: fine, no final seen. */
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, 2 * (FS + 20), back, len, &ptlen,
                                &nf, &fin, &fi, 1),
             KMSENV_OK);
    CHECK(nf == 2 && fin == 0 && ptlen == 2 * FS);
    /* Trailing bytes after the final frame. */
    memset(w + need, 0, 8);
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, need + 8, back, len, &ptlen, &nf,
                                &fin, &fi, 1),
             KMSENV_E_FORMAT);
    CHECK(fi == 3);
    /* Final length >= frame size. */
    put32(w + 3 * (FS + 20) + 8, FS);
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, need, back, len, &ptlen, &nf, &fin,
                                &fi, 1),
             KMSENV_E_FORMAT);
    put32(w + 3 * (FS + 20) + 8, 10);
    /* Swapped frames: the seq field of frame 0 says 2. */
    {
        uint8_t *tmp = malloc(FS + 20);
        memcpy(tmp, w, FS + 20);
        memcpy(w, w + FS + 20, FS + 20);
        memcpy(w + FS + 20, tmp, FS + 20);
        CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, need, back, len, &ptlen, &nf,
                                    &fin, &fi, 1),
                 KMSENV_E_FORMAT);
        CHECK(fi == 0);
        /* ... and with the seq fields fixed up, the AAD still catches it. */
        put32(w, 1);
        put32(w + FS + 20, 2);
        CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, w, need, back, len, &ptlen, &nf,
                                    &fin, &fi, 2),
                 KMSENV_E_AUTH);
        CHECK(fi == 0 && all_zero(back, len));
        free(tmp);
    }
    /* Argument checks. */
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS - 1, w, need, back, len, &ptlen, &nf,
                                &fin, &fi, 1),
             KMSENV_E_ARG);
    CHECK(kmsenv_frames_sealed_size(FS, 10, 0) == 0);
    CHECK(kmsenv_frames_sealed_size(KMSENV_FRAME_MAX_SIZE + 1, 10, 1) == 0);
    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 16, iv, msgid, 0, FS, 1, pt, 10, w, need, &outlen, 1),
             KMSENV_E_ARG);
    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 16, iv, msgid, (uint32_t)KMSENV_FRAME_MAX_SEQ, FS, 1, pt,
                                FS + 1, w, need, &outlen, 1),
             KMSENV_E_ARG); /* would need seq MAX+1 */
    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 16, iv, msgid, (uint32_t)KMSENV_FRAME_MAX_SEQ, FS, 1, pt, 1,
                                w, need, &outlen, 1),
             KMSENV_OK);
    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 16, iv, msgid, 1, FS, 1, pt, len, w, need - 1, &outlen, 1),
             KMSENV_E_ARG);
    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 15, iv, msgid, 1, FS, 1, pt, len, w, need, &outlen, 1),
             KMSENV_E_ARG);
    free(pt);
    free(w);
    free(back);
}

static void test_gcm_stream(int cipher, size_t keylen)
{
    uint8_t key[32], iv[12], aad[40], pt[5000], ct[5000], tag[16], tag2[16], back[5000];
    kmsenv_key *k = NULL;
    kmsenv_gcm_stream *s = NULL;
    size_t pos, steps[] = {1, 15, 16, 17, 333, 4096};
    int si = 0;

    RAND_bytes(key, sizeof key);
    RAND_bytes(iv, sizeof iv);
    RAND_bytes(aad, sizeof aad);
    RAND_bytes(pt, sizeof pt);
    CHECK_RC(kmsenv_key_new(cipher, key, keylen, &k), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_seal(k, iv, aad, sizeof aad, pt, sizeof pt, ct, tag), KMSENV_OK);
    kmsenv_key_free(k);

    CHECK_RC(kmsenv_gcm_stream_new(cipher, key, keylen, iv, 0, &s), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_aad(s, aad, sizeof aad), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_aad(s, aad, sizeof aad), KMSENV_E_ARG); /* once only */
    for (pos = 0; pos < sizeof pt;) {
        size_t step = steps[si++ % 6];
        if (step > sizeof pt - pos)
            step = sizeof pt - pos;
        CHECK_RC(kmsenv_gcm_stream_update(s, pt + pos, step, back + pos), KMSENV_OK);
        pos += step;
    }
    CHECK_RC(kmsenv_gcm_stream_verify(s, tag), KMSENV_E_ARG); /* encrypt mode */
    CHECK_RC(kmsenv_gcm_stream_final(s, tag2), KMSENV_OK);
    CHECK(memcmp(back, ct, sizeof ct) == 0 && memcmp(tag, tag2, 16) == 0);
    CHECK_RC(kmsenv_gcm_stream_update(s, pt, 1, back), KMSENV_E_ARG); /* after final */
    kmsenv_gcm_stream_free(s);

    CHECK_RC(kmsenv_gcm_stream_new(cipher, key, keylen, iv, 1, &s), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_aad(s, aad, sizeof aad), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_update(s, ct, 2500, back), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_update(s, ct + 2500, 2500, back + 2500), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_verify(s, tag), KMSENV_OK);
    CHECK(memcmp(back, pt, sizeof pt) == 0);
    kmsenv_gcm_stream_free(s);

    tag[15] ^= 1;
    CHECK_RC(kmsenv_gcm_stream_new(cipher, key, keylen, iv, 1, &s), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_aad(s, aad, sizeof aad), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_update(s, ct, sizeof ct, back), KMSENV_OK);
    CHECK_RC(kmsenv_gcm_stream_verify(s, tag), KMSENV_E_AUTH);
    kmsenv_gcm_stream_free(s);
    kmsenv_gcm_stream_free(NULL);

    CHECK_RC(kmsenv_gcm_stream_new(cipher, key, keylen + 1, iv, 0, &s), KMSENV_E_ARG);
    CHECK(s == NULL);
    CHECK_RC(kmsenv_gcm_stream_new(cipher, key, keylen, NULL, 0, &s), KMSENV_E_ARG);
}

static void test_hkdf(void)
{
    uint8_t ikm[22], salt[13], info[10], out[42], want[42];
    size_t i;
    memset(ikm, 0x0b, sizeof ikm);
    for (i = 0; i < sizeof salt; i++)
        salt[i] = (uint8_t)i;
    for (i = 0; i < sizeof info; i++)
        info[i] = (uint8_t)(0xf0 + i);
    /* RFC 5869 test case 1. */
    unhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865", want);
    CHECK_RC(kmsenv_hkdf(KMSENV_HASH_SHA256, ikm, sizeof ikm, salt, sizeof salt, info, sizeof info, out, 42),
             KMSENV_OK);
    CHECK(memcmp(out, want, 42) == 0);
    /* The same inputs with SM3, as computed by pyca/cryptography's HKDF. */
    unhex("c69fe91b7aaee2dd5718d72dcaee0cce93f1b8e41f792da51261b6a517e68b36ed2c595572b01dfa359b", want);
    CHECK_RC(kmsenv_hkdf(KMSENV_HASH_SM3, ikm, sizeof ikm, salt, sizeof salt, info, sizeof info, out, 42),
             KMSENV_OK);
    CHECK(memcmp(out, want, 42) == 0);
    CHECK_RC(kmsenv_hkdf(3, ikm, sizeof ikm, salt, sizeof salt, info, sizeof info, out, 42), KMSENV_E_ARG);
    CHECK_RC(kmsenv_hkdf(KMSENV_HASH_SHA256, ikm, sizeof ikm, NULL, 0, NULL, 0, out, 255 * 32 + 1), KMSENV_E_ARG);
    CHECK_RC(kmsenv_hkdf(KMSENV_HASH_SHA256, ikm, sizeof ikm, NULL, 0, NULL, 0, out, 42), KMSENV_OK);
}

/* Workers claim frames one at a time: whichever thread meets a bad frame, the
 * lowest bad one is named, and nothing is released. Repeated, as the claim
 * order differs from run to run. */
static void test_lowest_failure_across_threads(void)
{
    /* Each set lists its lowest frame first: the one the error must name. */
    static const size_t bad_sets[][3] = {{17, 400, 0}, {650, 0, 0}, {0, 699, 0}, {399, 401, 400}};
    static const size_t bad_counts[] = {2, 1, 2, 3};
    size_t len = 700 * FS, need = kmsenv_frames_sealed_size(FS, len, 1), outlen, ptlen, nf, fi, b, r, i;
    uint8_t key[32], iv[12], msgid[32];
    uint8_t *pt = malloc(len), *w = malloc(need), *back = malloc(len);
    int fin;

    RAND_bytes(key, sizeof key);
    RAND_bytes(iv, sizeof iv);
    RAND_bytes(msgid, sizeof msgid);
    RAND_bytes(pt, (int)len);
    CHECK_RC(kmsenv_frames_seal(KMSENV_CIPHER_AES, key, 32, iv, msgid, 1, FS, 1, pt, len, w, need, &outlen, 4),
             KMSENV_OK);
    for (b = 0; b < sizeof bad_counts / sizeof bad_counts[0]; b++) {
        for (r = 0; r < 20; r++) {
            /* Frame k (regular, k < 700) holds its ciphertext at k*(FS+20)+4. */
            for (i = 0; i < bad_counts[b]; i++)
                w[bad_sets[b][i] * (FS + 20) + 4 + (r % FS)] ^= 0x01;
            memset(back, 0xAA, len);
            fi = 12345;
            CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 32, iv, msgid, 1, FS, w, need, back, len, &ptlen,
                                        &nf, &fin, &fi, 4),
                     KMSENV_E_AUTH);
            CHECK(fi == bad_sets[b][0] && ptlen == 0 && all_zero(back, len));
            for (i = 0; i < bad_counts[b]; i++)
                w[bad_sets[b][i] * (FS + 20) + 4 + (r % FS)] ^= 0x01;
        }
    }
    CHECK_RC(kmsenv_frames_open(KMSENV_CIPHER_AES, key, 32, iv, msgid, 1, FS, w, need, back, len, &ptlen, &nf,
                                &fin, &fi, 4),
             KMSENV_OK);
    CHECK(ptlen == len && nf == 701 && fin == 1 && memcmp(back, pt, len) == 0);
    free(pt);
    free(w);
    free(back);
}

int main(void)
{
    test_roundtrip(KMSENV_CIPHER_AES, 16);
    test_roundtrip(KMSENV_CIPHER_AES, 32);
    if (kmsenv_features() & KMSENV_FEATURE_SM4) {
        test_roundtrip(KMSENV_CIPHER_SM4, 16);
        test_gcm_stream(KMSENV_CIPHER_SM4, 16);
    }
    test_open_format();
    test_lowest_failure_across_threads();
    test_gcm_stream(KMSENV_CIPHER_AES, 16);
    test_gcm_stream(KMSENV_CIPHER_AES, 32);
    test_hkdf();
    printf("test_frames: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
