/*
 * ghash512.h: GHASH as POLYVAL on zmm (VPCLMULQDQ + AVX-512F/BW/VL), shared
 * by the AES-GCM kernel (aes_gcm_vaes512.c) and the SM4-GCM kernel
 * (sm4_gfni.c, "gfni512-vpclmul"). The method is described at the top of
 * aes_gcm_vaes512.c; in short: blocks byte reversed, key H' = mulX(bswap(H))
 * (RFC 8452 appendix A), 16 blocks per step multiplied by H'^16..H'^1 with
 * four carry-less multiplies each, summed unreduced and reduced once.
 *
 * Included only inside a KMSENV_HAVE_X86_SIMD block, after <immintrin.h>.
 * The includer defines G512_INLINE (static inline always_inline plus its own
 * target attribute, which must contain avx512f,avx512bw,avx512vl,avx2,pclmul,
 * vpclmulqdq) and G512_TARGET (the same target, for the noinline scrub):
 * every function here then compiles exactly as if it were written in the
 * including file, so sharing the text costs the AES kernel nothing.
 * G512_SCRUB_BYTES (default 1024) sets how much stack ghash512_scrub() zeroes:
 * at least the frame of the including file's largest kernel.
 *
 * Constant time: VPCLMULQDQ has data-independent timing; no table is indexed
 * by secret data; masks and branches depend on lengths only.
 */
#ifndef KMSENV_GHASH512_H
#define KMSENV_GHASH512_H

#if !defined(G512_INLINE) || !defined(G512_TARGET)
#error "define G512_INLINE and G512_TARGET before including ghash512.h"
#endif

/* H'^1..H'^HMAX per key: 16 per step plus one for the final group's extra
 * power. hpow[HIDX(k)] = H'^k, highest power first so that the powers of
 * consecutive blocks are consecutive in memory. A table has HPOW_ROWS rows:
 * the 3 after H'^1 stay zero (a 64-byte load at H'^1 reads them). */
#define HMAX 17
#define HIDX(k) (HMAX - (k))
#define HPOW_ROWS (HMAX + 3)

#ifndef G512_SCRUB_BYTES
#define G512_SCRUB_BYTES 1024
#endif

/* ---- small helpers ------------------------------------------------------ */

G512_INLINE __m512i load512(const void *p)
{
    return _mm512_loadu_si512(p);
}

G512_INLINE __m512i xor3(__m512i a, __m512i b, __m512i c)
{
    return _mm512_ternarylogic_epi64(a, b, c, 0x96);
}

/* x in lane 0, zeros above (_mm512_zextsi128_si512 needs GCC 10). */
G512_INLINE __m512i zext512(__m128i x)
{
    return _mm512_inserti32x4(_mm512_setzero_si512(), x, 0);
}

G512_INLINE __m128i bswap128(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
}

G512_INLINE __m512i bswap_mask(void)
{
    return _mm512_broadcast_i32x4(
        _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
}

/* Byte mask for the first n (0..64) bytes of a zmm. */
G512_INLINE __mmask64 first_bytes(size_t n)
{
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

/* ---- GHASH as POLYVAL ---------------------------------------------------- */

/* 0xc2 << 56 in the high qword of each lane: the folding constant. */
G512_INLINE __m512i fold_const(void)
{
    return _mm512_broadcast_i32x4(_mm_setr_epi32(1, 0, 0, (int)0xc2000000u));
}

/* XOR of the four 128-bit lanes. */
G512_INLINE __m128i sum_lanes(__m512i v)
{
    __m256i t = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    return _mm_xor_si128(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* Lane-wise Montgomery reduction of lo + mid*x^64 + hi*x^128 (times x^-128). */
G512_INLINE __m512i reduce_lanes(__m512i lo, __m512i mid, __m512i hi)
{
    const __m512i poly = fold_const();
    mid = xor3(mid, _mm512_shuffle_epi32(lo, _MM_PERM_BADC), _mm512_clmulepi64_epi128(lo, poly, 0x10));
    return xor3(hi, _mm512_shuffle_epi32(mid, _MM_PERM_BADC), _mm512_clmulepi64_epi128(mid, poly, 0x10));
}

/* The same, then the four lanes summed: the POLYVAL accumulator. */
G512_INLINE __m128i reduce_sum(__m512i lo, __m512i mid, __m512i hi)
{
    return sum_lanes(reduce_lanes(lo, mid, hi));
}

/* lo/mid/hi ^= the unreduced products x * h, lane by lane. */
G512_INLINE void mul_acc(__m512i x, __m512i h, __m512i *lo, __m512i *mid, __m512i *hi)
{
    *lo = _mm512_xor_si512(*lo, _mm512_clmulepi64_epi128(x, h, 0x00));
    *hi = _mm512_xor_si512(*hi, _mm512_clmulepi64_epi128(x, h, 0x11));
    *mid = xor3(*mid, _mm512_clmulepi64_epi128(x, h, 0x01), _mm512_clmulepi64_epi128(x, h, 0x10));
}

/* xmm dot(a, b) = a * b * x^-128 (setup and the lengths block). */
G512_INLINE __m128i dot(__m128i a, __m128i b)
{
    const __m128i poly = _mm_setr_epi32(1, 0, 0, (int)0xc2000000u);
    __m128i lo = _mm_clmulepi64_si128(a, b, 0x00), hi = _mm_clmulepi64_si128(a, b, 0x11);
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
    mid = _mm_xor_si128(mid, _mm_xor_si128(_mm_shuffle_epi32(lo, 78),
                                           _mm_clmulepi64_si128(lo, poly, 0x10)));
    return _mm_xor_si128(hi, _mm_xor_si128(_mm_shuffle_epi32(mid, 78),
                                           _mm_clmulepi64_si128(mid, poly, 0x10)));
}

/*
 * POLYVAL update over m (1..16) blocks held in x[0..nvec) (byte reversed;
 * blocks past m zero, nvec = ceil(m / 4)): block i is multiplied by
 * H'^(m - i + shift), acc is folded into block 0; one reduction for all of
 * them. shift = 1 for a message's last group (see aes_gcm_vaes512.c).
 */
G512_INLINE __m128i ghash_blocks(const uint8_t (*hpow)[16], __m128i acc, const __m512i x[4],
                                 int nvec, int m, const int shift)
{
    __m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
    int j;
    for (j = 0; j < nvec; j++) {
        __m512i v = x[j];
        if (j == 0)
            v = _mm512_xor_si512(v, zext512(acc));
        mul_acc(v, load512(hpow[HIDX(m + shift) + 4 * j]), &lo, &mid, &hi);
    }
    return reduce_sum(lo, mid, hi);
}

/* Loads up to 256 bytes (n: 1..256) as byte-reversed zero-padded blocks.
 * Masked loads: nothing past p + n is read (masked-off bytes never fault). */
G512_INLINE int load_blocks(const uint8_t *p, size_t n, __m512i x[4])
{
    const __m512i bs = bswap_mask();
    int j, nvec = (int)((n + 63) / 64);
    for (j = 0; j < nvec; j++)
        x[j] = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(first_bytes(n - 64 * (size_t)j),
                                                            p + 64 * j),
                                   bs);
    return nvec;
}

/* GHASH over a byte string zero-padded to whole blocks (the AAD; with SM4
 * also the data, a chunk at a time: only its last piece may be ragged). */
G512_INLINE __m128i ghash_bytes(const uint8_t (*hpow)[16], __m128i acc, const uint8_t *p,
                                size_t n)
{
    __m512i x[4];
    int nvec;
    for (; n >= 256; n -= 256, p += 256) {
        load_blocks(p, 256, x);
        acc = ghash_blocks(hpow, acc, x, 4, 16, 0);
    }
    if (n != 0) {
        nvec = load_blocks(p, n, x);
        acc = ghash_blocks(hpow, acc, x, nvec, (int)((n + 15) / 16), 0);
    }
    return acc;
}

/*
 * hpow[HIDX(k)] = H'^k for k = 1..HMAX, from H'. By doubling: H'^(n+j) =
 * H'^n * H'^j for j = 1..n, so each round's products are independent and
 * overlap in the pipeline (5 dependent steps instead of 16: a new key is
 * set up once per one-shot message). The field product is associative, so
 * the table is the one repeated multiplication gives.
 */
G512_INLINE void ghash_fill_powers(uint8_t (*hpow)[16], __m128i h)
{
    __m128i pw[HMAX + 1];
    int n, j;
    pw[1] = h;
    for (n = 1; n < HMAX; n *= 2)
        for (j = 1; j <= n && n + j <= HMAX; j++)
            pw[n + j] = dot(pw[n], pw[j]);
    for (j = 1; j <= HMAX; j++)
        _mm_storeu_si128((__m128i *)(void *)hpow[HIDX(j)], pw[j]);
    kmsenv_wipe(pw, sizeof(pw));
}

/*
 * The key's table from H = E_K(0^128) as the cipher returns it: H' =
 * mulX(bswap(H)) in POLYVAL's field (a shift by one with the reduction
 * x^128 = x^127 + x^126 + x^121 + 1 applied under a mask, not a branch, as
 * the carry is key material), then H'^1..H'^HMAX. The rows after H'^1 are
 * left as they are (the caller zero-allocates the table).
 */
G512_INLINE void ghash_powers(uint8_t (*hpow)[16], __m128i h_be)
{
    const __m128i poly = _mm_setr_epi32(1, 0, 0, (int)0xc2000000u);
    __m128i h = bswap128(h_be);
    __m128i carry = _mm_srai_epi32(_mm_shuffle_epi32(h, 0xff), 31); /* all ones if bit 127 */
    h = _mm_or_si128(_mm_slli_epi64(h, 1), _mm_slli_si128(_mm_srli_epi64(h, 63), 8));
    h = _mm_xor_si128(h, _mm_and_si128(carry, poly));
    ghash_fill_powers(hpow, h);
}

/*
 * Scrubbing. The kernels keep their state in registers, but the compiler
 * spills some of it (measured with GCC 12 -O3 for the AES kernel: an H
 * power, and counter blocks XORed with round key 0). So the public entry
 * points call ghash512_scrub() after each kernel (and after the key setup):
 * its frame lies where the kernel's frame was (both are called from the same
 * frame, and the kernels are noinline), and it zeroes G512_SCRUB_BYTES
 * there, over the kernels' frames. It also zeroes the vector registers:
 * VZEROALL for zmm0..15, XORs for zmm16..31. Cost: 5 to 15 ns per call.
 */
__attribute__((noinline)) G512_TARGET static void ghash512_scrub(void)
{
    __m512i buf[G512_SCRUB_BYTES / 64]; /* aligned: 10-15 ns faster than unaligned */
    volatile __m512i *p = buf;           /* volatile: the stores stay, as zmm stores */
    int i;
    for (i = 0; i < G512_SCRUB_BYTES / 64; i++)
        p[i] = _mm512_setzero_si512();
    _mm256_zeroall();
    __asm__ volatile("vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
                     "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
                     "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
                     "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
                     "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
                     "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
                     "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
                     "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31"
                     ::: "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
                       "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

#endif
