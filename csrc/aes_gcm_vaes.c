/*
 * aes_gcm_vaes.c: AES-GCM with VAES + VPCLMULQDQ on ymm (2 blocks/register).
 *
 * Why: the system OpenSSL 3.0 has only the xmm "stitched" AES-NI GCM. On
 * this project's machine (Zen 3: VAES/VPCLMULQDQ on ymm, no AVX-512) a ymm
 * kernel doing 16 blocks per iteration with one GHASH reduction per 16
 * blocks beats it (figures in bench/bench_kernels.py and the issue 5
 * report). EVP remains the fallback and the reference the tests use.
 *
 * GHASH is computed as POLYVAL (RFC 8452 appendix A): with blocks byte
 * reversed and the key H' = mulX(bswap(H)), GHASH(H, X) =
 * bswap(POLYVAL(H', bswap(X))). POLYVAL's product dot(a, b) = a*b*x^-128 is
 * associative, so the aggregated form sum_i dot(X_i, H'^(n-i+1)) needs one
 * Montgomery-style reduction per 16 blocks (two folding multiplications by
 * 0xc2 << 56, Gueron's method) after summing unreduced 256-bit products.
 * Powers H'^1..H'^16 are precomputed per key (and wiped on free).
 *
 * Constant time: AES-NI/VAES and carry-less multiplication have data-
 * independent timing; no table is indexed by secret data. The tag check in
 * open() uses CRYPTO_memcmp, and kmsenv_gcm_open wipes out on failure.
 *
 * Only functions carrying VAES_TARGET use the extensions; core.c enables
 * this path only after checking CPUID and XCR0 (cpu.c).
 */
#include <openssl/crypto.h>

#include "internal.h"

#if defined(KMSENV_HAVE_X86_SIMD)

#include <immintrin.h>

#define VAES_TARGET __attribute__((target("avx2,aes,pclmul,vaes,vpclmulqdq")))
#define VAES_INLINE static inline __attribute__((always_inline)) VAES_TARGET

struct kmsenv_aes_vaes {
    uint8_t rk[15][16];   /* round keys, nr + 1 used */
    uint8_t hpow[18][16]; /* hpow[j] = H'^(16 - j) for j < 16; [16], [17] zero */
    int nr;
};

/* ---- key schedule: aes_ni_keys.h (shared with the other VAES kernel) */
#include "aes_ni_keys.h"

/* ---- GHASH as POLYVAL ---------------------------------------------------- */

VAES_INLINE __m128i bswap128(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
}

VAES_INLINE __m256i bswap256(__m256i x)
{
    const __m256i m = _mm256_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 15,
                                       14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm256_shuffle_epi8(x, m);
}

/* Reduce the 256-bit hi:lo to dot-product form (two folds by 0xc2 << 56). */
VAES_INLINE __m128i reduce(__m128i lo, __m128i hi)
{
    const __m128i poly = _mm_setr_epi32(1, 0, 0, (int)0xc2000000u);
    __m128i t = _mm_clmulepi64_si128(lo, poly, 0x10);
    lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 78), t);
    t = _mm_clmulepi64_si128(lo, poly, 0x10);
    lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 78), t);
    return _mm_xor_si128(lo, hi);
}

VAES_INLINE __m128i dot(__m128i a, __m128i b)
{
    __m128i lo = _mm_clmulepi64_si128(a, b, 0x00), hi = _mm_clmulepi64_si128(a, b, 0x11);
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
    lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
    hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
    return reduce(lo, hi);
}

/*
 * S = POLYVAL update over m (1..16) blocks held in d[0..8) (memory order,
 * not yet byte reversed; blocks past m must be zero). Block i is multiplied
 * by H'^(m - i), S folded into block 0: one reduction for all of them.
 */
VAES_INLINE __m128i ghash16(const struct kmsenv_aes_vaes *c, __m128i s, const __m256i d[8], int m)
{
    __m256i lo = _mm256_setzero_si256(), hi = lo, mid = lo;
    __m128i l, h, md;
    int i, pairs = (m + 1) / 2;
    for (i = 0; i < pairs; i++) {
        __m256i x = bswap256(d[i]);
        __m256i k = _mm256_loadu_si256((const __m256i *)(const void *)c->hpow[16 - m + 2 * i]);
        if (i == 0)
            x = _mm256_xor_si256(x, _mm256_set_m128i(_mm_setzero_si128(), s));
        lo = _mm256_xor_si256(lo, _mm256_clmulepi64_epi128(x, k, 0x00));
        hi = _mm256_xor_si256(hi, _mm256_clmulepi64_epi128(x, k, 0x11));
        mid = _mm256_xor_si256(mid, _mm256_xor_si256(_mm256_clmulepi64_epi128(x, k, 0x01),
                                                     _mm256_clmulepi64_epi128(x, k, 0x10)));
    }
    /* The reduction is linear: sum the two lanes first, reduce once. */
    l = _mm_xor_si128(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
    h = _mm_xor_si128(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
    md = _mm_xor_si128(_mm256_castsi256_si128(mid), _mm256_extracti128_si256(mid, 1));
    l = _mm_xor_si128(l, _mm_slli_si128(md, 8));
    h = _mm_xor_si128(h, _mm_srli_si128(md, 8));
    return reduce(l, h);
}

/* GHASH over a byte string zero-padded to whole blocks (AAD). */
VAES_INLINE __m128i ghash_bytes(const struct kmsenv_aes_vaes *c, __m128i s, const uint8_t *p,
                                size_t n)
{
    __m256i d[8];
    int j;
    for (; n >= 256; n -= 256, p += 256) {
        for (j = 0; j < 8; j++)
            d[j] = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * j));
        s = ghash16(c, s, d, 16);
    }
    if (n != 0) {
        uint8_t buf[256];
        memset(buf, 0, sizeof(buf));
        memcpy(buf, p, n);
        for (j = 0; j < 8; j++)
            d[j] = _mm256_loadu_si256((const __m256i *)(const void *)(buf + 32 * j));
        s = ghash16(c, s, d, (int)((n + 15) / 16));
    }
    return s;
}

/* ---- AES-CTR ---------------------------------------------------------- */

/* 16 keystream blocks for counters base+0..15 (base in dword 0 of the byte-
 * reversed counter block; _mm256_add_epi32 wraps it mod 2^32 as GCM needs). */
VAES_INLINE void keystream16(const __m256i *rkb, int nr, __m256i rev, __m256i ks[8])
{
    int j, r;
    for (j = 0; j < 8; j++) {
        __m256i ctr = _mm256_add_epi32(rev, _mm256_setr_epi32(2 * j, 0, 0, 0, 2 * j + 1, 0, 0, 0));
        ks[j] = _mm256_xor_si256(bswap256(ctr), rkb[0]);
    }
    for (r = 1; r < nr; r++)
        for (j = 0; j < 8; j++)
            ks[j] = _mm256_aesenc_epi128(ks[j], rkb[r]);
    for (j = 0; j < 8; j++)
        ks[j] = _mm256_aesenclast_epi128(ks[j], rkb[nr]);
}

VAES_INLINE __m128i aes_block(const struct kmsenv_aes_vaes *c, __m128i x)
{
    int r;
    x = _mm_xor_si128(x, _mm_loadu_si128((const __m128i *)(const void *)c->rk[0]));
    for (r = 1; r < c->nr; r++)
        x = _mm_aesenc_si128(x, _mm_loadu_si128((const __m128i *)(const void *)c->rk[r]));
    return _mm_aesenclast_si128(x, _mm_loadu_si128((const __m128i *)(const void *)c->rk[c->nr]));
}

/* One pass: CTR and GHASH of the ciphertext (after the XOR when sealing,
 * before it when opening), 16 blocks per step. in == out is fine: each step
 * loads its input into registers before storing. */
VAES_INLINE void gcm_crypt(const struct kmsenv_aes_vaes *c, const uint8_t iv[12],
                           const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                           uint8_t *out, uint8_t tag[16], int decrypt)
{
    __m256i rkb[15], rev, d[8], ks[8];
    __m128i s = _mm_setzero_si128(), j0, lens;
    uint8_t blk[16];
    int j, nr = c->nr;
    const __m256i step = _mm256_setr_epi32(16, 0, 0, 0, 16, 0, 0, 0);
    const uint64_t aad_bits = (uint64_t)aadlen * 8, in_bits = (uint64_t)inlen * 8;

    for (j = 0; j <= nr; j++)
        rkb[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)c->rk[j]));
    memcpy(blk, iv, 12);
    blk[12] = 0, blk[13] = 0, blk[14] = 0, blk[15] = 1;
    j0 = _mm_loadu_si128((const __m128i *)(const void *)blk);
    /* counter 2 onwards for the data, in byte-reversed form */
    rev = _mm256_add_epi32(_mm256_broadcastsi128_si256(bswap128(j0)), _mm256_setr_epi32(1, 0, 0, 0, 1, 0, 0, 0));

    if (aadlen != 0)
        s = ghash_bytes(c, s, aad, aadlen);

    for (; inlen >= 256; inlen -= 256, in += 256, out += 256) {
        keystream16(rkb, nr, rev, ks);
        rev = _mm256_add_epi32(rev, step);
        for (j = 0; j < 8; j++)
            d[j] = _mm256_loadu_si256((const __m256i *)(const void *)(in + 32 * j));
        if (decrypt)
            s = ghash16(c, s, d, 16);
        for (j = 0; j < 8; j++) {
            d[j] = _mm256_xor_si256(d[j], ks[j]);
            _mm256_storeu_si256((__m256i *)(void *)(out + 32 * j), d[j]);
        }
        if (!decrypt)
            s = ghash16(c, s, d, 16);
    }
    if (inlen != 0) {
        /* Tail through a zero-padded stack buffer: no access past the
         * caller's buffers, and the padding hashes as the zeros GCM wants. */
        uint8_t buf[256];
        memset(buf, 0, sizeof(buf));
        memcpy(buf, in, inlen);
        keystream16(rkb, nr, rev, ks);
        for (j = 0; j < 8; j++)
            d[j] = _mm256_loadu_si256((const __m256i *)(const void *)(buf + 32 * j));
        if (decrypt)
            s = ghash16(c, s, d, (int)((inlen + 15) / 16));
        for (j = 0; j < 8; j++)
            _mm256_storeu_si256((__m256i *)(void *)(buf + 32 * j), _mm256_xor_si256(d[j], ks[j]));
        memcpy(out, buf, inlen);
        if (!decrypt) {
            memset(buf + inlen, 0, sizeof(buf) - inlen);
            for (j = 0; j < 8; j++)
                d[j] = _mm256_loadu_si256((const __m256i *)(const void *)(buf + 32 * j));
            s = ghash16(c, s, d, (int)((inlen + 15) / 16));
        }
    }
    /* lengths block: be64(aad bits) || be64(data bits); byte reversed */
    lens = _mm_set_epi64x((long long)aad_bits, (long long)in_bits);
    {
        __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)c->hpow[15]);
        s = dot(_mm_xor_si128(s, lens), h1);
    }
    s = _mm_xor_si128(bswap128(s), aes_block(c, j0));
    _mm_storeu_si128((__m128i *)(void *)tag, s);
    /* ks, d, rkb, buf and whatever the compiler spilled are overwritten by
     * wipe_stack() after the call (see there). */
}

/*
 * Scrubbing. Explicit cleanses of the locals above did not cover what the
 * compiler spills: a stack scan (fill the stack with a pattern, seal or open,
 * search it) found 16 keystream blocks left after open. So, as in
 * aes_gcm_vaes512.c, the kernels run in noinline functions and the public
 * entry points call wipe_stack() right after them: its frame lies where
 * theirs was, and it zeroes WIPE_BYTES there (the kernels' frames use about
 * 2.2 KiB with GCC 12 -O3) and the ymm registers. It is also far cheaper than
 * OPENSSL_cleanse, a byte loop in OpenSSL 3.0.
 */
#define WIPE_BYTES 4096

__attribute__((noinline)) VAES_TARGET static void wipe_stack(void)
{
    __m256i buf[WIPE_BYTES / 32];
    volatile __m256i *p = buf; /* volatile: the stores stay */
    int i;
    for (i = 0; i < WIPE_BYTES / 32; i++)
        p[i] = _mm256_setzero_si256();
    _mm256_zeroall();
}

__attribute__((noinline)) VAES_TARGET static void seal_kernel(const struct kmsenv_aes_vaes *c,
                                                              const uint8_t iv[12], const uint8_t *aad,
                                                              size_t aadlen, const uint8_t *in,
                                                              size_t inlen, uint8_t *out, uint8_t tag[16])
{
    gcm_crypt(c, iv, aad, aadlen, in, inlen, out, tag, 0);
}

__attribute__((noinline)) VAES_TARGET static void open_kernel(const struct kmsenv_aes_vaes *c,
                                                              const uint8_t iv[12], const uint8_t *aad,
                                                              size_t aadlen, const uint8_t *in,
                                                              size_t inlen, uint8_t *out, uint8_t tag[16])
{
    gcm_crypt(c, iv, aad, aadlen, in, inlen, out, tag, 1);
}

/* ---- object ----------------------------------------------------------- */

__attribute__((noinline)) VAES_TARGET static void setup(struct kmsenv_aes_vaes *c, const uint8_t *key, size_t keylen)
{
    __m128i rk[15], h, pw[17];
    uint8_t hb[16];
    int i, n;
    c->nr = keylen == 16 ? 10 : 14;
    expand_key(rk, key, keylen);
    for (i = 0; i <= c->nr; i++)
        _mm_storeu_si128((__m128i *)(void *)c->rk[i], rk[i]);
    h = bswap128(aes_block(c, _mm_setzero_si128()));
    _mm_storeu_si128((__m128i *)(void *)hb, h);
    mulx_polyval(hb);
    h = _mm_loadu_si128((const __m128i *)(const void *)hb);
    /* H'^(n+j) = H'^n * H'^j for j = 1..n: independent products that
     * overlap in the pipeline (4 dependent steps instead of 15). */
    pw[1] = h;
    for (n = 1; n < 16; n *= 2)
        for (i = 1; i <= n; i++)
            pw[n + i] = dot(pw[n], pw[i]);
    for (i = 1; i <= 16; i++) /* hpow[15] = H'^1 ... hpow[0] = H'^16 */
        _mm_storeu_si128((__m128i *)(void *)c->hpow[16 - i], pw[i]);
    kmsenv_wipe(rk, sizeof(rk));
    kmsenv_wipe(hb, sizeof(hb));
    kmsenv_wipe(pw, sizeof(pw));
    h = _mm_setzero_si128();
    (void)h;
}

kmsenv_aes_vaes *kmsenv__aes_vaes_new(const uint8_t *key, size_t keylen)
{
    kmsenv_aes_vaes *c;
    if (keylen != 16 && keylen != 32)
        return NULL;
    c = OPENSSL_zalloc(sizeof(*c)); /* hpow[16..17] stay zero */
    if (c != NULL) {
        setup(c, key, keylen);
        wipe_stack(); /* the key schedule's frame */
    }
    return c;
}

void kmsenv__aes_vaes_free(kmsenv_aes_vaes *c)
{
    if (c != NULL)
        kmsenv__clear_free(c, sizeof(*c)); /* round keys and H powers */
}

VAES_TARGET int kmsenv__aes_vaes_seal(kmsenv_aes_vaes *c, const uint8_t iv[12], const uint8_t *aad,
                                      size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                                      uint8_t tag[16])
{
    seal_kernel(c, iv, aad, aadlen, in, inlen, out, tag);
    wipe_stack();
    return KMSENV_OK;
}

/* Decrypts into out and verifies; on mismatch the caller (kmsenv_gcm_open)
 * wipes out before returning, so unverified plaintext never escapes. */
VAES_TARGET int kmsenv__aes_vaes_open(kmsenv_aes_vaes *c, const uint8_t iv[12], const uint8_t *aad,
                                      size_t aadlen, const uint8_t *in, size_t inlen,
                                      const uint8_t tag[16], uint8_t *out)
{
    uint8_t t[16];
    int bad;
    open_kernel(c, iv, aad, aadlen, in, inlen, out, t);
    wipe_stack();
    bad = CRYPTO_memcmp(t, tag, 16);
    kmsenv_wipe(t, sizeof(t));
    return bad == 0 ? KMSENV_OK : KMSENV_E_AUTH;
}

#endif /* KMSENV_HAVE_X86_SIMD */
