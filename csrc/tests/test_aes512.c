/*
 * test_aes512.c: the zmm AES-GCM kernel (aes_gcm_vaes512.c) against OpenSSL
 * EVP AES-GCM and the GCM spec vectors, calling the kernel directly. Covers
 * every length class the kernel distinguishes (empty, masked tails of 1..4
 * vectors with and without the lengths block's extra power, whole 16-block
 * steps, the sealing pipeline's first and last step, the output-aligning
 * prologue from 4 KiB, streaming stores from 16 MiB at every output
 * alignment), AAD of all sizes, in-place use, tampering (tag, ciphertext,
 * AAD), and buffers that end (or begin) at an unmapped page so an access
 * outside them faults. Prints SKIP and passes when the CPU (or
 * KMSENV_DISABLE_SIMD) rules the kernel out.
 *
 * Build like run_simd.sh:
 *   gcc -std=c11 -Wall -Wextra -Werror -I csrc '-DKMSENV_VERSION="test"' \
 *       -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 \
 *       csrc/tests/test_aes512.c csrc/\*.c -lcrypto
 */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS under -std=c11 */
#endif
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "internal.h"
#include "check.h"

#if defined(KMSENV_HAVE_X86_SIMD)

static void rnd(void *p, size_t n)
{
    if (n != 0 && RAND_bytes(p, (int)n) != 1)
        abort();
}

static size_t rnd_below(size_t n)
{
    uint32_t v;
    rnd(&v, sizeof(v));
    return n ? v % n : 0;
}

static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (p == NULL)
        abort();
    return p;
}

/* The reference: OpenSSL EVP AES-GCM, one shot. */
static void ref_seal(const uint8_t *key, size_t keylen, const uint8_t iv[12], const uint8_t *aad,
                     size_t aadlen, const uint8_t *pt, size_t len, uint8_t *ct, uint8_t tag[16])
{
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    uint8_t fin[16];
    int l = 0;
    if (x == NULL ||
        EVP_EncryptInit_ex(x, keylen == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm(), NULL, key,
                           iv) != 1 ||
        (aadlen && EVP_EncryptUpdate(x, NULL, &l, aad, (int)aadlen) != 1) ||
        (len && EVP_EncryptUpdate(x, ct, &l, pt, (int)len) != 1) ||
        EVP_EncryptFinal_ex(x, fin, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
        abort();
    EVP_CIPHER_CTX_free(x);
}

/* Pass NULL for empty buffers, as the library's callers may. */
#define OPT(p, n) ((n) ? (p) : NULL)

/*
 * One case: seal equals EVP (output and tag), open round-trips, both work
 * in place, and a flipped bit in the tag, the ciphertext or the AAD makes
 * open fail. Buffers are malloc'ed at their exact sizes (ASan bounds).
 */
static void one_case(kmsenv_aes_vaes512 *c, const uint8_t *key, size_t keylen, size_t len,
                     size_t aadlen)
{
    uint8_t iv[12], tag[16], rtag[16];
    uint8_t *aad = xmalloc(aadlen), *pt = xmalloc(len), *ct = xmalloc(len), *rct = xmalloc(len),
            *back = xmalloc(len);
    int ok = 1;
    size_t bit;
    rnd(iv, 12);
    rnd(aad, aadlen);
    rnd(pt, len);
    ref_seal(key, keylen, iv, aad, aadlen, pt, len, rct, rtag);

    ok &= kmsenv__aes_vaes512_seal(c, iv, OPT(aad, aadlen), aadlen, OPT(pt, len), len,
                                   OPT(ct, len), tag) == KMSENV_OK;
    ok &= memcmp(ct, rct, len) == 0 && memcmp(tag, rtag, 16) == 0;
    memset(back, 0xa5, len);
    ok &= kmsenv__aes_vaes512_open(c, iv, OPT(aad, aadlen), aadlen, OPT(ct, len), len, tag,
                                   OPT(back, len)) == KMSENV_OK;
    ok &= memcmp(back, pt, len) == 0;

    /* in place, both directions */
    memcpy(back, pt, len);
    ok &= kmsenv__aes_vaes512_seal(c, iv, aad, aadlen, back, len, back, tag) == KMSENV_OK;
    ok &= memcmp(back, rct, len) == 0 && memcmp(tag, rtag, 16) == 0;
    ok &= kmsenv__aes_vaes512_open(c, iv, aad, aadlen, back, len, tag, back) == KMSENV_OK;
    ok &= memcmp(back, pt, len) == 0;

    /* tampering: tag, ciphertext, AAD */
    bit = rnd_below(128);
    tag[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    ok &= kmsenv__aes_vaes512_open(c, iv, aad, aadlen, ct, len, tag, back) == KMSENV_E_AUTH;
    tag[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    if (len != 0) {
        bit = rnd_below(len * 8);
        ct[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        ok &= kmsenv__aes_vaes512_open(c, iv, aad, aadlen, ct, len, tag, back) == KMSENV_E_AUTH;
        ct[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    if (aadlen != 0) {
        bit = rnd_below(aadlen * 8);
        aad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        ok &= kmsenv__aes_vaes512_open(c, iv, aad, aadlen, ct, len, tag, back) == KMSENV_E_AUTH;
        aad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    /* and the untampered message still opens */
    ok &= kmsenv__aes_vaes512_open(c, iv, aad, aadlen, ct, len, tag, back) == KMSENV_OK;

    if (!ok)
        fprintf(stderr, "  mismatch: keylen %zu len %zu aad %zu\n", keylen, len, aadlen);
    CHECK(ok);
    CHECK(ERR_peek_error() == 0);
    free(aad), free(pt), free(ct), free(rct), free(back);
}

/* ---- spec vectors ---------------------------------------------------------- */

#include "gcm_vectors.h"

static void spec_vectors(void)
{
    size_t i;
    for (i = 0; i < sizeof(gcm_spec_vectors) / sizeof(gcm_spec_vectors[0]); i++) {
        const struct gcm_spec_vector *v = &gcm_spec_vectors[i];
        uint8_t key[32], iv[12], pt[64], aad[32], ct[64], tag[16], out[64], t[16];
        size_t keylen = unhex(v->key, key), pl = unhex(v->pt, pt);
        size_t al = unhex(v->aad, aad);
        kmsenv_aes_vaes512 *c = kmsenv__aes_vaes512_new(key, keylen);
        unhex(v->iv, iv);
        unhex(v->ct, ct);
        unhex(v->tag, tag);
        CHECK(c != NULL);
        if (c == NULL)
            continue;
        CHECK_RC(kmsenv__aes_vaes512_seal(c, iv, OPT(aad, al), al, OPT(pt, pl), pl, out, t),
                 KMSENV_OK);
        CHECK(memcmp(out, ct, pl) == 0 && memcmp(t, tag, 16) == 0);
        CHECK_RC(kmsenv__aes_vaes512_open(c, iv, OPT(aad, al), al, OPT(ct, pl), pl, tag, out),
                 KMSENV_OK);
        CHECK(memcmp(out, pt, pl) == 0);
        tag[15] ^= 1;
        CHECK_RC(kmsenv__aes_vaes512_open(c, iv, OPT(aad, al), al, OPT(ct, pl), pl, tag, out),
                 KMSENV_E_AUTH);
        kmsenv__aes_vaes512_free(c);
    }
    {
        static const uint8_t k24[24] = {1};
        CHECK(kmsenv__aes_vaes512_new(k24, 24) == NULL); /* AES-192 is not offered */
    }
}

/* ---- random and structured sizes ----------------------------------------- */

static void sizes_for_key(size_t keylen)
{
    static const size_t steps[] = {256, 512, 1024, 2048};
    static const size_t big[] = {65536 + 5, (1u << 20), (1u << 20) + 7};
    uint8_t key[32];
    kmsenv_aes_vaes512 *c;
    size_t i, s, m;
    int d;
    rnd(key, keylen);
    c = kmsenv__aes_vaes512_new(key, keylen);
    CHECK(c != NULL);
    if (c == NULL)
        return;
    /* every length through four 16-block steps: all tails, all vector counts */
    for (i = 0; i <= 1100; i++)
        one_case(c, key, keylen, i, rnd_below(301));
    /* every AAD length through two steps, with short and step-sized data */
    for (i = 0; i <= 600; i++)
        one_case(c, key, keylen, i % 3 == 0 ? 0 : rnd_below(300), i);
    /* around multiples of the step and of larger powers of two */
    for (s = 0; s < sizeof(steps) / sizeof(steps[0]); s++)
        for (m = 1; m <= 3; m++)
            for (d = -17; d <= 17; d++)
                one_case(c, key, keylen, steps[s] * m + (size_t)(ptrdiff_t)d, rnd_below(301));
    /* random */
    for (i = 0; i < 1500; i++)
        one_case(c, key, keylen, rnd_below(5001), rnd_below(301));
    for (i = 0; i < sizeof(big) / sizeof(big[0]); i++)
        one_case(c, key, keylen, big[i], rnd_below(301));
    kmsenv__aes_vaes512_free(c);
}

/*
 * Messages of 16 MiB and more, out of place, take the streaming-store path
 * (aes_gcm_vaes512.c STREAM_MIN) after a 1..3 block prologue that aligns the
 * output to 64 bytes; an output that is not 16-byte aligned, or in == out,
 * keeps ordinary stores. Every output offset mod 64 class is tried.
 */
static void long_messages(void)
{
    static const size_t offs[] = {0, 16, 32, 48, 8, 1};
    static const size_t lens[] = {(16u << 20), (16u << 20) + 7, (17u << 20) + 16 * 5 + 3};
    uint8_t key[32], iv[12], aad[13], tag[16], rtag[16];
    size_t kl, oi, li, maxlen = (17u << 20) + 16 * 5 + 3;
    uint8_t *pt = xmalloc(maxlen), *ref = xmalloc(maxlen), *buf = xmalloc(maxlen + 64);
    rnd(pt, maxlen);
    for (kl = 16; kl <= 32; kl += 16) {
        kmsenv_aes_vaes512 *c;
        rnd(key, kl);
        c = kmsenv__aes_vaes512_new(key, kl);
        CHECK(c != NULL);
        if (c == NULL)
            break;
        for (li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            size_t len = lens[li];
            rnd(iv, 12);
            rnd(aad, sizeof(aad));
            ref_seal(key, kl, iv, aad, sizeof(aad), pt, len, ref, rtag);
            for (oi = 0; oi < sizeof(offs) / sizeof(offs[0]); oi++) {
                /* buf + offs[oi] has that offset from a 64-byte boundary */
                uint8_t *out = buf + ((64 - ((uintptr_t)buf & 63)) & 63) + offs[oi];
                int ok;
                if (out + len > buf + maxlen + 64)
                    out -= 64;
                ok = kmsenv__aes_vaes512_seal(c, iv, aad, sizeof(aad), pt, len, out, tag) ==
                     KMSENV_OK;
                ok = ok && memcmp(out, ref, len) == 0 && memcmp(tag, rtag, 16) == 0;
                /* open out of place into a buffer at the same offset class */
                ok = ok && kmsenv__aes_vaes512_open(c, iv, aad, sizeof(aad), out, len, tag, ref) ==
                               KMSENV_OK &&
                     memcmp(ref, pt, len) == 0;
                /* restore ref for the next offset, then in place */
                ok = ok && kmsenv__aes_vaes512_seal(c, iv, aad, sizeof(aad), pt, len, ref, tag) ==
                               KMSENV_OK;
                ok = ok && kmsenv__aes_vaes512_open(c, iv, aad, sizeof(aad), out, len, tag, out) ==
                               KMSENV_OK &&
                     memcmp(out, pt, len) == 0;
                out[len - 1] ^= 1; /* now plaintext: sealing it must not match */
                ok = ok && kmsenv__aes_vaes512_seal(c, iv, aad, sizeof(aad), out, len, out, tag) ==
                               KMSENV_OK &&
                     memcmp(tag, rtag, 16) != 0;
                if (!ok)
                    fprintf(stderr, "  long mismatch: keylen %zu len %zu out offset %zu\n", kl, len,
                            offs[oi]);
                CHECK(ok);
            }
        }
        kmsenv__aes_vaes512_free(c);
    }
    free(pt), free(ref), free(buf);
}

/* ---- buffers against unmapped pages ---------------------------------------- */

#if defined(__linux__)
/*
 * Readable+writable pages between two PROT_NONE pages. Each buffer (AAD,
 * input, output) is placed flush against the end, then against the start,
 * of its own region: a load or store of one byte outside it faults (the
 * masked tail must not touch masked-off bytes; masked-off lanes do not
 * fault). Lengths: every one up to 700, and a run from 4096 on, where the
 * 1..3 block alignment prologue starts (ALIGN_MIN) and, flush against the
 * end, runs on a buffer that is not 64-byte aligned.
 */
#define FENCED_PAGES 3 /* data pages; lengths up to 8 KiB fit with any page size >= 4 KiB */

typedef struct {
    uint8_t *base; /* guard page, FENCED_PAGES data pages, guard page */
    size_t page;
} fenced;

static int fenced_new(fenced *f)
{
    f->page = (size_t)sysconf(_SC_PAGESIZE);
    f->base = mmap(NULL, (FENCED_PAGES + 2) * f->page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->base == MAP_FAILED)
        return 0;
    return mprotect(f->base, f->page, PROT_NONE) == 0 &&
           mprotect(f->base + (FENCED_PAGES + 1) * f->page, f->page, PROT_NONE) == 0;
}

static uint8_t *fenced_at(const fenced *f, size_t n, int at_end)
{
    return at_end ? f->base + (FENCED_PAGES + 1) * f->page - n : f->base + f->page;
}

/* One length at both placements, seal and open, out of place and in place. */
static int fenced_case(kmsenv_aes_vaes512 *c, const uint8_t *key, size_t keylen, fenced *fa,
                       fenced *fi, fenced *fo, size_t len, uint8_t *ref, uint8_t *keep)
{
    uint8_t iv[12], tag[16], rtag[16];
    int placement, ok = 1;
    for (placement = 0; placement < 2; placement++) {
        size_t aadlen = (len * 7 + (size_t)placement * 131) % 301;
        uint8_t *a = fenced_at(fa, aadlen, placement), *in = fenced_at(fi, len, placement),
                *out = fenced_at(fo, len, !placement);
        rnd(iv, 12);
        rnd(a, aadlen);
        rnd(in, len);
        memcpy(keep, in, len);
        ref_seal(key, keylen, iv, a, aadlen, in, len, ref, rtag);
        ok &= kmsenv__aes_vaes512_seal(c, iv, a, aadlen, in, len, out, tag) == KMSENV_OK;
        ok &= memcmp(out, ref, len) == 0 && memcmp(tag, rtag, 16) == 0;
        ok &= kmsenv__aes_vaes512_open(c, iv, a, aadlen, out, len, tag, in) == KMSENV_OK;
        ok &= memcmp(in, keep, len) == 0;
        /* in place at the edge */
        ok &= kmsenv__aes_vaes512_seal(c, iv, a, aadlen, in, len, in, tag) == KMSENV_OK;
        ok &= memcmp(in, ref, len) == 0;
        ok &= kmsenv__aes_vaes512_open(c, iv, a, aadlen, in, len, tag, in) == KMSENV_OK;
        ok &= memcmp(in, keep, len) == 0;
    }
    if (!ok)
        fprintf(stderr, "  fenced mismatch: keylen %zu len %zu\n", keylen, len);
    return ok;
}

static void guard_pages(void)
{
    fenced fa, fi, fo;
    uint8_t key[32];
    uint8_t *ref = xmalloc(8192), *keep = xmalloc(8192);
    size_t len, keylen;
    int ok = 1;
    if (!fenced_new(&fa) || !fenced_new(&fi) || !fenced_new(&fo) || fa.page < 4096) {
        printf("SKIP guard pages (mmap/mprotect failed)\n");
        free(ref), free(keep);
        return;
    }
    for (keylen = 16; keylen <= 32; keylen += 16) {
        kmsenv_aes_vaes512 *c;
        rnd(key, keylen);
        c = kmsenv__aes_vaes512_new(key, keylen);
        CHECK(c != NULL);
        if (c == NULL)
            break;
        for (len = 0; len <= 700; len++)
            ok &= fenced_case(c, key, keylen, &fa, &fi, &fo, len, ref, keep);
        for (len = 4096 - 16; len <= 4096 + 80; len += 3)
            ok &= fenced_case(c, key, keylen, &fa, &fi, &fo, len, ref, keep);
        ok &= fenced_case(c, key, keylen, &fa, &fi, &fo, 8192, ref, keep);
        kmsenv__aes_vaes512_free(c);
    }
    CHECK(ok);
    munmap(fa.base, (FENCED_PAGES + 2) * fa.page), munmap(fi.base, (FENCED_PAGES + 2) * fi.page),
        munmap(fo.base, (FENCED_PAGES + 2) * fo.page);
    free(ref), free(keep);
}
#endif

/* Several keys alive at once do not share state; the same key made twice
 * gives the same output. */
static void independent_keys(void)
{
    uint8_t k1[32], k2[16], iv[12], pt[777], c1[777], c2[777], c3[777], t1[16], t2[16], t3[16];
    kmsenv_aes_vaes512 *a, *b, *a2;
    rnd(k1, 32), rnd(k2, 16), rnd(iv, 12), rnd(pt, sizeof(pt));
    a = kmsenv__aes_vaes512_new(k1, 32);
    b = kmsenv__aes_vaes512_new(k2, 16);
    a2 = kmsenv__aes_vaes512_new(k1, 32);
    CHECK(a != NULL && b != NULL && a2 != NULL);
    if (a == NULL || b == NULL || a2 == NULL)
        return;
    kmsenv__aes_vaes512_seal(a, iv, NULL, 0, pt, sizeof(pt), c1, t1);
    kmsenv__aes_vaes512_seal(b, iv, NULL, 0, pt, sizeof(pt), c2, t2);
    kmsenv__aes_vaes512_seal(a2, iv, NULL, 0, pt, sizeof(pt), c3, t3);
    CHECK(memcmp(c1, c3, sizeof(pt)) == 0 && memcmp(t1, t3, 16) == 0);
    CHECK(memcmp(c1, c2, sizeof(pt)) != 0 && memcmp(t1, t2, 16) != 0);
    kmsenv__aes_vaes512_free(a), kmsenv__aes_vaes512_free(b), kmsenv__aes_vaes512_free(a2);
    kmsenv__aes_vaes512_free(NULL); /* allowed, like free() */
}

#endif /* KMSENV_HAVE_X86_SIMD */

int main(void)
{
#if defined(KMSENV_HAVE_X86_SIMD)
    uint32_t f = kmsenv__cpu_simd_features();
    printf("cpu features 0x%x\n", (unsigned)f);
    if (f & KMSENV_FEATURE_AES_VAES512) {
        spec_vectors();
        independent_keys();
        sizes_for_key(16);
        sizes_for_key(32);
        long_messages();
#if defined(__linux__)
        guard_pages();
#endif
    } else {
        printf("SKIP AES-GCM VAES512 (CPU lacks it or KMSENV_DISABLE_SIMD is set)\n");
    }
#else
    printf("SKIP AES-GCM VAES512 (built without x86 SIMD)\n");
#endif
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
