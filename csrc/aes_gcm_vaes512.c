/*
 * aes_gcm_vaes512.c: AES-GCM with VAES + VPCLMULQDQ on zmm (4 blocks per
 * register, AVX-512F/BW/VL).
 *
 * Why: on AVX-512 CPUs (Ice Lake and later Xeons) the OpenSSL that the
 * `cryptography` wheel bundles (and OpenSSL 3.x built with its AVX-512 GCM)
 * runs AES-GCM on zmm, and the ymm kernel in aes_gcm_vaes.c reaches about
 * half of it there (issue 17). This kernel lays the same construction out
 * for zmm and pipelines it. Measured on a Sapphire-Rapids-class Xeon against
 * the same EVP calls into cryptography's bundled OpenSSL 4.0: 1.0-1.1x at
 * 1 MiB (AES-256 sits at the VAES port limit, as OpenSSL does), 1.1-1.2x at
 * 64 MiB, 2-3x below 1 KiB (60-80 ns per 64-byte message); about 2.2x the
 * ymm kernel at 16 KiB-1 MiB. The harness and figures are in the issue 17
 * report.
 *
 * Method:
 * - 16 blocks (4 zmm) per step. Counter blocks: the 32-bit counter word of
 *   each block is stepped with 32-bit lane adds, so it wraps mod 2^32 as GCM
 *   requires. Normally the adds go straight to the big-endian blocks' last
 *   byte; on the one step in 16 where that byte would carry, the blocks are
 *   rebuilt from the byte-reversed form (the counter is public, so the
 *   branch leaks nothing).
 * - GHASH is computed as POLYVAL (RFC 8452 appendix A), as in aes_gcm_vaes.c:
 *   blocks byte reversed, key H' = mulX(bswap(H)). A step sums the
 *   unreduced products of its 16 blocks with powers of H' (four carry-less
 *   multiplies per block, in three 512-bit accumulators lo, mid, hi, XORed in
 *   ternary-logic trees) and reduces once: lo folds into mid and mid into hi
 *   with one multiply by 0xc2 << 56 each (Gueron's Montgomery folding),
 *   lane by lane. Between steps the state stays a 4-lane vector V whose lane
 *   i stands for V_i * H'^-i: then every step multiplies its block vectors by
 *   H'^16, H'^12, H'^8, H'^4 (the same power in all lanes) and the lane sum is
 *   needed only once, at the end. H'^1..H'^17 are precomputed per key (and
 *   wiped on free).
 * - The last group of blocks is multiplied by one extra power of H', and the
 *   lengths block's product L * H' is computed up front, off the critical
 *   path: the tag needs one XOR at the end instead of one more dependent
 *   multiplication and reduction.
 * - Pipelining: sealing hashes the previous step's ciphertext while the AES
 *   rounds of the current step run; opening hashes the current step's input.
 *   The GHASH work is written in seven parts between the AES rounds, so the
 *   two instruction streams (VAESENC and VPCLMULQDQ issue on different
 *   ports) interleave even before out-of-order execution helps. The last
 *   round key is XORed into the input first, so VAESENCLAST yields the
 *   output.
 * - The tail (< 16 blocks) and the AAD use masked loads and stores
 *   (AVX-512BW byte masks): no byte outside the caller's buffers is read or
 *   written (masked-off bytes never fault) and masked-off bytes load as the
 *   zero padding GHASH wants. in == out works: each step loads its input
 *   before it stores, and sealing hashes the ciphertext from registers.
 * - Messages of ALIGN_MIN bytes or more first run 1..3 blocks through the
 *   tail path so that the output is 64-byte aligned (no store splits a cache
 *   line). From STREAM_MIN bytes on, out of place, the output is written with
 *   streaming stores: it cannot stay in the core's caches anyway, and
 *   skipping the read-for-ownership of each output line cuts the memory
 *   traffic of a memory-bound message by about a third.
 * - The round keys are stored per key already broadcast to the four lanes,
 *   so a call neither builds nor has to wipe a stack copy of them.
 *
 * Constant time: VAES and VPCLMULQDQ have data-independent timing; no table
 * is indexed by secret data; every branch, mask and address depends on
 * lengths, buffer addresses or the (public) counter only. open() compares
 * tags with CRYPTO_memcmp, and kmsenv_gcm_open wipes out on failure.
 * Keystream, plaintext and hash state live in registers; whatever the
 * compiler spills to the stack is overwritten after every call and the
 * vector registers are zeroed (ghash512_scrub(), ghash512.h); the computed tag in open() is
 * cleansed.
 *
 * Only functions carrying V512_TARGET use the extensions; the caller enables
 * this path only after checking CPUID and XCR0 (cpu.c:
 * KMSENV_FEATURE_AES_VAES512).
 */
#include <openssl/crypto.h>

#include "internal.h"

#if defined(KMSENV_HAVE_X86_SIMD)

#include <immintrin.h>

#define V512_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,aes,pclmul,vaes,vpclmulqdq")))
#define V512_INLINE static inline __attribute__((always_inline)) V512_TARGET

/* The POLYVAL pieces (helpers, ghash_blocks/ghash_bytes, the power table,
 * the scrub) are shared with the SM4-GCM kernel, compiled with this target. */
#define G512_INLINE V512_INLINE
#define G512_TARGET V512_TARGET
/* the kernels' frames: at most 0.75 KiB with GCC 12, red zone included */
#define G512_SCRUB_BYTES 1024
#include "ghash512.h"

/* From this length on, a 1..3 block prologue aligns the output (above). */
#ifndef ALIGN_MIN
#define ALIGN_MIN ((size_t)4096)
#endif
/* From this length on, out of place, the output is streamed (above). Below
 * it, in + out may still fit the last-level cache of a big server part, and
 * measured ordinary stores win (the issue 17 report). */
#ifndef STREAM_MIN
#define STREAM_MIN ((size_t)16 << 20)
#endif

struct kmsenv_aes_vaes512 {
    uint8_t rkz[15][64];        /* round keys (nr + 1 used), each in all 4 lanes */
    uint8_t hpow[HPOW_ROWS][16]; /* see HIDX; the 3 entries after H'^1 stay zero */
    int nr;
};

/* ---- key schedule: aes_ni_keys.h (shared with the other VAES kernel) */
#include "aes_ni_keys.h"

/* ---- AES ----------------------------------------------------------------- */

V512_INLINE __m512i rkey(const kmsenv_aes_vaes512 *c, int r)
{
    return load512(c->rkz[r]);
}

V512_INLINE __m128i aes_block(const kmsenv_aes_vaes512 *c, __m128i x, const int nr)
{
    int r;
    x = _mm_xor_si128(x, _mm_loadu_si128((const __m128i *)(const void *)c->rkz[0]));
#pragma GCC unroll 14
    for (r = 1; r < nr; r++)
        x = _mm_aesenc_si128(x, _mm_loadu_si128((const __m128i *)(const void *)c->rkz[r]));
    return _mm_aesenclast_si128(x, _mm_loadu_si128((const __m128i *)(const void *)c->rkz[nr]));
}

/*
 * Counter blocks. ctr is the 32-bit counter of the next block. rev0 is J0
 * byte reversed in all four lanes: its dword 0 is J0's counter word (1), so
 * adding to dword 0 with a 32-bit lane add steps the counter mod 2^32 as GCM
 * requires, and a byte reversal gives the blocks AES takes.
 */
typedef struct {
    __m512i rev0; /* bswap(J0) in each lane */
    __m512i be;   /* blocks ctr + 0..3, big endian, in the four lanes */
    uint32_t ctr;
} ctr_state;

/* Blocks ctr + 0..3 byte reversed (each lane's dword 0 wraps mod 2^32). */
V512_INLINE __m512i ctr_rev(__m512i rev0, uint32_t ctr)
{
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
    __m512i base = _mm512_maskz_set1_epi32(0x1111, (int)(ctr - 1u)); /* J0 word is 1 */
    return _mm512_add_epi32(rev0, _mm512_add_epi32(base, lanes));
}

/* Counter vector j (blocks ctr + 4j .. 4j + 3) whitened with round key 0,
 * through the byte-reversed form: correct for every ctr. */
V512_INLINE __m512i ctr_whiten_rev(__m512i rev, int j, __m512i bs, __m512i rk0)
{
    __m512i inc = _mm512_broadcast_i32x4(_mm_setr_epi32(4 * j, 0, 0, 0));
    return _mm512_xor_si512(_mm512_shuffle_epi8(_mm512_add_epi32(rev, inc), bs), rk0);
}

/* The same from the big-endian blocks by adding to their last byte: only
 * valid when that byte does not carry within the step ((ctr & 0xff) +
 * 15 <= 0xff); saves the byte reversal on 15 of every 16 steps. */
V512_INLINE __m512i ctr_whiten_be(__m512i be, int j, __m512i rk0)
{
    if (j == 0)
        return _mm512_xor_si512(be, rk0);
    return _mm512_xor_si512(
        _mm512_add_epi32(be, _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, (4 * j) << 24))), rk0);
}

/* Advances the state by n (1..16) blocks: an add to the last byte when no
 * lane's last byte (ctr + 3 at most) carries, else a rebuild. The counter is
 * public: branching on it leaks nothing. */
V512_INLINE void ctr_advance(ctr_state *cs, __m512i bs, uint32_t n)
{
    if ((cs->ctr & 0xff) + 3 + n <= 0xff)
        cs->be = _mm512_add_epi32(cs->be, _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, (int)(n << 24))));
    else
        cs->be = _mm512_shuffle_epi8(ctr_rev(cs->rev0, cs->ctr + n), bs);
    cs->ctr += n;
}

/* AES of nvec (1..4, a constant after inlining) whitened states; round nr
 * uses lastk[j] (the last round key XORed with the data, so the result is
 * already the output). */
V512_INLINE void aes_rounds(const kmsenv_aes_vaes512 *c, __m512i s[4], const __m512i lastk[4],
                            const int nvec, const int nr)
{
    int r, j;
#pragma GCC unroll 14
    for (r = 1; r < nr; r++) {
        const __m512i k = rkey(c, r);
#pragma GCC unroll 4
        for (j = 0; j < nvec; j++)
            s[j] = _mm512_aesenc_epi128(s[j], k);
    }
#pragma GCC unroll 4
    for (j = 0; j < nvec; j++)
        s[j] = _mm512_aesenclast_epi128(s[j], lastk[j]);
}

/* ---- GCM ------------------------------------------------------------------ */

/*
 * Up to 16 blocks (n bytes, 1..256) outside the steps: keystream for nvec
 * vectors, masked loads and stores, and their GHASH (of the input when
 * opening, of the output when sealing) with one reduction, shifted by one
 * power when they end the message.
 */
V512_INLINE __m128i gcm_tail(const kmsenv_aes_vaes512 *c, __m128i acc, const ctr_state *cs,
                             const uint8_t *in, uint8_t *out, size_t n, const int nvec,
                             const int nr, const int decrypt, const int shift)
{
    const __m512i bs = bswap_mask(), rk0 = rkey(c, 0), rkl = rkey(c, nr);
    const __m512i rev = ctr_rev(cs->rev0, cs->ctr);
    __m512i s[4], d[4], lastk[4], x[4];
    int j;
#pragma GCC unroll 4
    for (j = 0; j < nvec; j++) {
        __mmask64 k = first_bytes(n - 64 * (size_t)j);
        d[j] = _mm512_maskz_loadu_epi8(k, in + 64 * j);
        lastk[j] = _mm512_xor_si512(rkl, d[j]);
        s[j] = ctr_whiten_rev(rev, j, bs, rk0);
    }
    aes_rounds(c, s, lastk, nvec, nr);
#pragma GCC unroll 4
    for (j = 0; j < nvec; j++) {
        __mmask64 k = first_bytes(n - 64 * (size_t)j);
        _mm512_mask_storeu_epi8(out + 64 * j, k, s[j]);
        /* sealing hashes the ciphertext with its padding zeroed */
        x[j] = _mm512_shuffle_epi8(decrypt ? d[j] : _mm512_maskz_mov_epi8(k, s[j]), bs);
    }
    return ghash_blocks(c->hpow, acc, x, nvec, (int)((n + 15) / 16), shift);
}

/* The unreduced sums of a step's products (see step16). */
typedef struct {
    __m512i lo, mid, hi;
} ghacc;

/*
 * GHASH of a step in seven parts, to be spread between AES rounds: the
 * products x[j] * h[j] summed in ternary-logic trees (parts 1-4), lo folded
 * into mid and mid into hi (5, 6), the result stored (7). part is a
 * constant after unrolling, so each call is straight-line code.
 */
V512_INLINE void ghash_part(const int part, const __m512i x[4], const __m512i h[4], ghacc *g,
                            __m512i *v, const int hash)
{
#define CL(j, imm) _mm512_clmulepi64_epi128(x[j], h[j], imm)
    switch (part) {
    case 1:
        g->lo = xor3(CL(0, 0x00), CL(1, 0x00), CL(2, 0x00));
        break;
    case 2:
        g->lo = _mm512_xor_si512(g->lo, CL(3, 0x00));
        g->hi = xor3(CL(0, 0x11), CL(1, 0x11), CL(2, 0x11));
        break;
    case 3:
        g->hi = _mm512_xor_si512(g->hi, CL(3, 0x11));
        g->mid = xor3(CL(0, 0x01), CL(0, 0x10), CL(1, 0x01));
        break;
    case 4:
        g->mid = xor3(g->mid, CL(1, 0x10), CL(2, 0x01));
        g->mid = xor3(g->mid, CL(2, 0x10), CL(3, 0x01));
        g->mid = _mm512_xor_si512(g->mid, CL(3, 0x10));
        break;
    case 5: /* fold lo into mid */
        g->mid = xor3(g->mid, _mm512_shuffle_epi32(g->lo, _MM_PERM_BADC),
                      _mm512_clmulepi64_epi128(g->lo, fold_const(), 0x10));
        break;
    case 6: /* fold mid into hi */
        g->hi = xor3(g->hi, _mm512_shuffle_epi32(g->mid, _MM_PERM_BADC),
                     _mm512_clmulepi64_epi128(g->mid, fold_const(), 0x10));
        break;
    default:
        *v = hash == 2 ? zext512(sum_lanes(g->hi)) : g->hi;
        break;
    }
#undef CL
}

/*
 * One 16-block step: AES-CTR of in[0..256) into out, with the GHASH of x
 * (16 byte-reversed blocks, the state *v folded into x[0]) interleaved
 * between the rounds unless hash == 0. Opening hashes this step's own input
 * (x is filled here); sealing hashes the previous step's ciphertext and
 * leaves this step's in x. hash == 1: h are the lane-scaled powers, and *v
 * stays a 4-lane vector; hash == 2 (the last step): h are the true powers,
 * and *v becomes the lane sum, in lane 0. (h in registers: as memory
 * operands of VPCLMULQDQ they cost opening 20%.)
 */
V512_INLINE void step16(const kmsenv_aes_vaes512 *c, ctr_state *cs, const uint8_t *in,
                        uint8_t *out, __m512i x[4], const __m512i h[4], __m512i *v,
                        const int nr, const int decrypt, const int hash, const int stream)
{
    const __m512i bs = bswap_mask(), rk0 = rkey(c, 0), rkl = rkey(c, nr);
    __m512i s[4];
    ghacc g;
    int j, r;
    if ((cs->ctr & 0xff) <= 0xff - 15) {
        for (j = 0; j < 4; j++)
            s[j] = ctr_whiten_be(cs->be, j, rk0);
    } else {
        const __m512i rev = ctr_rev(cs->rev0, cs->ctr);
        for (j = 0; j < 4; j++)
            s[j] = ctr_whiten_rev(rev, j, bs, rk0);
    }
    ctr_advance(cs, bs, 16);
    if (decrypt) {
        for (j = 0; j < 4; j++)
            x[j] = _mm512_shuffle_epi8(load512(in + 64 * j), bs);
        x[0] = _mm512_xor_si512(x[0], *v);
    }
    /* AES rounds with the GHASH parts between them: after rounds 1..7 for
     * AES-128, after every other round for AES-256 (measured: 2-5% faster
     * than bunching them in the first rounds) */
#pragma GCC unroll 14
    for (r = 1; r < nr; r++) {
        const __m512i k = rkey(c, r);
        for (j = 0; j < 4; j++)
            s[j] = _mm512_aesenc_epi128(s[j], k);
        if (hash && nr == 10 && r <= 7)
            ghash_part(r, x, h, &g, v, hash);
        else if (hash && nr == 14 && r % 2 == 1)
            ghash_part((r + 1) / 2, x, h, &g, v, hash);
    }
    /* the input is (re)loaded only here, so no copy of it outlives the
     * rounds (the compiler would otherwise spill it); with in == out each
     * block is read before it is overwritten */
    for (j = 0; j < 4; j++) {
        s[j] = _mm512_aesenclast_epi128(s[j], _mm512_xor_si512(rkl, load512(in + 64 * j)));
        if (stream)
            _mm512_stream_si512((void *)(out + 64 * j), s[j]);
        else
            _mm512_storeu_si512(out + 64 * j, s[j]);
    }
    if (!decrypt) {
        for (j = 0; j < 4; j++)
            x[j] = _mm512_shuffle_epi8(s[j], bs);
        x[0] = _mm512_xor_si512(x[0], *v);
    }
}

V512_INLINE void gcm_crypt(const kmsenv_aes_vaes512 *c, const uint8_t iv[12], const uint8_t *aad,
                           size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                           uint8_t tag[16], const int nr, const int decrypt)
{
    const uint64_t aad_bits = (uint64_t)aadlen * 8, in_bits = (uint64_t)inlen * 8;
    const __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)c->hpow[HIDX(1)]);
    __m128i acc = _mm_setzero_si128(), j0, ej0, lens, lh;
    __m512i x[4];
    ctr_state cs;
    uint8_t blk[16];
    int stream = 0;

    memcpy(blk, iv, 12);
    blk[12] = 0, blk[13] = 0, blk[14] = 0, blk[15] = 1;
    j0 = _mm_loadu_si128((const __m128i *)(const void *)blk);
    /* independent of the data, so they overlap the rest: E(J0) and L * H' */
    ej0 = aes_block(c, j0, nr);
    lens = _mm_set_epi64x((long long)aad_bits, (long long)in_bits); /* byte-reversed lengths block */
    lh = dot(lens, h1);
    cs.rev0 = _mm512_broadcast_i32x4(bswap128(j0));
    cs.ctr = 2; /* the data starts at counter 2 */
    cs.be = _mm512_shuffle_epi8(ctr_rev(cs.rev0, cs.ctr), bswap_mask());

    if (aadlen != 0)
        acc = ghash_bytes(c->hpow, acc, aad, aadlen);

    if (inlen >= ALIGN_MIN && ((uintptr_t)out & 15) == 0) {
        size_t pre = (64 - ((uintptr_t)out & 63)) & 63; /* 0, 16, 32 or 48 */
        if (pre != 0) {
            acc = gcm_tail(c, acc, &cs, in, out, pre, 1, nr, decrypt, 0);
            ctr_advance(&cs, bswap_mask(), (uint32_t)(pre / 16));
            in += pre, out += pre, inlen -= pre;
        }
        stream = inlen >= STREAM_MIN && in != out;
    }

    if (inlen >= 256) {
        /* powers: lane-scaled for the steps; the true ones, shifted when the
         * step ends the message, for the last step */
        const uint8_t *hlp = c->hpow[inlen % 256 == 0 ? HIDX(17) : HIDX(16)];
        __m512i v = zext512(acc), hb[4], hl[4];
        int j;
        for (j = 0; j < 4; j++) {
            hb[j] = _mm512_broadcast_i32x4(
                _mm_loadu_si128((const __m128i *)(const void *)c->hpow[HIDX(16 - 4 * j)]));
            hl[j] = load512(hlp + 64 * j);
        }
        if (decrypt) {
            for (; inlen >= 512; inlen -= 256, in += 256, out += 256)
                step16(c, &cs, in, out, x, hb, &v, nr, 1, 1, stream);
            step16(c, &cs, in, out, x, hl, &v, nr, 1, 2, stream);
            inlen -= 256, in += 256, out += 256;
            acc = _mm512_castsi512_si128(v);
        } else {
            step16(c, &cs, in, out, x, hb, &v, nr, 0, 0, stream);
            for (inlen -= 256, in += 256, out += 256; inlen >= 256;
                 inlen -= 256, in += 256, out += 256)
                step16(c, &cs, in, out, x, hb, &v, nr, 0, 1, stream);
            /* the last step's ciphertext (v is already folded into x[0]) */
            acc = ghash_blocks(c->hpow, _mm_setzero_si128(), x, 4, 16, inlen == 0);
        }
        if (stream) /* order the weakly-ordered streaming stores before returning */
            _mm_sfence();
    }

    if (inlen != 0) {
        switch ((inlen + 63) / 64) {
        case 1:
            acc = gcm_tail(c, acc, &cs, in, out, inlen, 1, nr, decrypt, 1);
            break;
        case 2:
            acc = gcm_tail(c, acc, &cs, in, out, inlen, 2, nr, decrypt, 1);
            break;
        case 3:
            acc = gcm_tail(c, acc, &cs, in, out, inlen, 3, nr, decrypt, 1);
            break;
        default:
            acc = gcm_tail(c, acc, &cs, in, out, inlen, 4, nr, decrypt, 1);
            break;
        }
    }
    /* tag = (S ^ L) * H' with S * H' from the last group (or, without data,
     * from the AAD: multiply it here) */
    if (in_bits == 0)
        acc = dot(acc, h1);
    acc = _mm_xor_si128(acc, lh);
    _mm_storeu_si128((__m128i *)(void *)tag, _mm_xor_si128(bswap128(acc), ej0));
}

/* ---- object ----------------------------------------------------------- */

/* noinline: its frame is where the ghash512_scrub() after it lies (see there). */
__attribute__((noinline)) V512_TARGET static void setup(kmsenv_aes_vaes512 *c,
                                                        const uint8_t *key, size_t keylen)
{
    __m128i rk[15], h;
    uint8_t hbytes[16];
    int i;
    c->nr = keylen == 16 ? 10 : 14;
    expand_key(rk, key, keylen);
    for (i = 0; i <= c->nr; i++)
        _mm512_storeu_si512(c->rkz[i], _mm512_broadcast_i32x4(rk[i]));
    h = bswap128(c->nr == 10 ? aes_block(c, _mm_setzero_si128(), 10)
                             : aes_block(c, _mm_setzero_si128(), 14));
    _mm_storeu_si128((__m128i *)(void *)hbytes, h);
    mulx_polyval(hbytes);
    h = _mm_loadu_si128((const __m128i *)(const void *)hbytes);
    ghash_fill_powers(c->hpow, h);
    kmsenv_wipe(rk, sizeof(rk));
    kmsenv_wipe(hbytes, sizeof(hbytes));
}

kmsenv_aes_vaes512 *kmsenv__aes_vaes512_new(const uint8_t *key, size_t keylen)
{
    kmsenv_aes_vaes512 *c;
    if (key == NULL || (keylen != 16 && keylen != 32))
        return NULL;
    c = OPENSSL_zalloc(sizeof(*c)); /* the padding after H'^1 stays zero */
    if (c != NULL) {
        setup(c, key, keylen);
        ghash512_scrub();
    }
    return c;
}

void kmsenv__aes_vaes512_free(kmsenv_aes_vaes512 *c)
{
    if (c != NULL)
        kmsenv__clear_free(c, sizeof(*c)); /* round keys and H powers */
}

/* One instance per key size and direction: nr and decrypt are constants
 * inside, so the rounds unroll and the direction tests fold away. noinline
 * keeps their frames where ghash512_scrub() will lie (ghash512.h). */
#define KERNEL(name, nr, decrypt)                                                          \
    __attribute__((noinline)) V512_TARGET static void name(                               \
        const kmsenv_aes_vaes512 *c, const uint8_t iv[12], const uint8_t *aad,              \
        size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16])      \
    {                                                                                      \
        gcm_crypt(c, iv, aad, aadlen, in, inlen, out, tag, nr, decrypt);                   \
    }
KERNEL(seal128, 10, 0)
KERNEL(seal256, 14, 0)
KERNEL(open128, 10, 1)
KERNEL(open256, 14, 1)
#undef KERNEL

int kmsenv__aes_vaes512_seal(kmsenv_aes_vaes512 *c, const uint8_t iv[12], const uint8_t *aad,
                             size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                             uint8_t tag[16])
{
    if (c->nr == 10)
        seal128(c, iv, aad, aadlen, in, inlen, out, tag);
    else
        seal256(c, iv, aad, aadlen, in, inlen, out, tag);
    ghash512_scrub();
    return KMSENV_OK;
}

/* Decrypts into out and verifies; on mismatch the caller (kmsenv_gcm_open)
 * wipes out before returning, so unverified plaintext never escapes. */
int kmsenv__aes_vaes512_open(kmsenv_aes_vaes512 *c, const uint8_t iv[12], const uint8_t *aad,
                             size_t aadlen, const uint8_t *in, size_t inlen, const uint8_t tag[16],
                             uint8_t *out)
{
    uint8_t t[16];
    int bad;
    if (c->nr == 10)
        open128(c, iv, aad, aadlen, in, inlen, out, t);
    else
        open256(c, iv, aad, aadlen, in, inlen, out, t);
    ghash512_scrub();
    bad = CRYPTO_memcmp(t, tag, 16);
    kmsenv_wipe(t, sizeof(t));
    return bad == 0 ? KMSENV_OK : KMSENV_E_AUTH;
}

#endif /* KMSENV_HAVE_X86_SIMD */
