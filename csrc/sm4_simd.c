/*
 * sm4_simd.c: SM4 with AVX2 + VAES (the AES-NI method), constant time.
 *
 * Why this method and not GFNI: the machine kmsenv is built and measured on
 * (AMD EPYC family 25 model 1, Zen 3) has AES-NI, VAES and VPCLMULQDQ on ymm
 * but neither GFNI nor AVX-512 (cpuid leaf 7 and XCR0 = 0x7 say so), so a
 * GFNI kernel could not even be tested here. The AES-NI method runs on every
 * x86-64 with AVX2 + VAES (Zen 3+, Ice Lake+).
 *
 * S-box: SM4's S-box is affine o inversion o affine over GF(2^8) with the
 * field polynomial 0x1F5. Moving into AES's field (0x11B) through the
 * isomorphism x -> beta = 0x23 turns it into
 *     S(x) = Post . SubBytes_AES(Pre . x ^ c1) ^ c2
 * where SubBytes_AES comes from AESENCLAST with a zero round key (it also
 * applies ShiftRows, undone by shuffling the input with InvShiftRows first).
 * Pre/Post (with c1 = 0x3e, c2 = 0x6c folded into the low-nibble tables) are
 * applied as two 16-entry VPSHUFB lookups per byte (low and high nibble).
 * The tables were derived by a script that checked all 256 inputs against
 * the GB/T 32907 S-box (see the report of issue 5); the C tests check the
 * whole cipher against OpenSSL's EVP SM4.
 *
 * Everything indexed by data is a register shuffle or AESENCLAST, never a
 * memory lookup, so there is no cache-timing channel; the key schedule uses
 * the same S-box.
 *
 * Layout: 8 blocks in 4 ymm. After a dword byte swap and a 4x4 dword
 * transpose inside each 128-bit lane, register k holds word k of 8 blocks
 * (dword p of lane L is block 2p + L), so one round is applied to one
 * register for 8 blocks. Two 8-block groups are interleaved to hide
 * latency (measured: see bench/bench_kernels.py).
 *
 * Only functions carrying SM4_TARGET use AVX2/AES/VAES; the module itself is
 * built for baseline x86-64 and core.c enables this path at run time.
 */
#include "internal.h"

#if defined(KMSENV_HAVE_X86_SIMD)

#include <immintrin.h>

#define SM4_TARGET __attribute__((target("avx2,aes,vaes")))
#define SM4_INLINE static inline __attribute__((always_inline)) SM4_TARGET

/* Lookup tables for the two affine maps, per 16-byte lane (VPSHUFB works
 * inside 128-bit lanes, so each table is broadcast to both lanes). */
#define T16(...) {__VA_ARGS__, __VA_ARGS__}
static const uint8_t PRE_LO[32] = T16(0x3e, 0xb2, 0x0e, 0x82, 0xbb, 0x37, 0x8b, 0x07, 0xa1, 0x2d,
                                      0x91, 0x1d, 0x24, 0xa8, 0x14, 0x98);
static const uint8_t PRE_HI[32] = T16(0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4,
                                      0x26, 0xfa, 0xcd, 0x11, 0xe3, 0x3f);
static const uint8_t POST_LO[32] = T16(0x6c, 0xd4, 0xa6, 0x1e, 0x52, 0xea, 0x98, 0x20, 0x0b,
                                       0xb3, 0xc1, 0x79, 0x35, 0x8d, 0xff, 0x47);
static const uint8_t POST_HI[32] = T16(0x00, 0xe0, 0x50, 0xb0, 0x9d, 0x7d, 0xcd, 0x2d, 0xc0,
                                       0x20, 0x90, 0x70, 0x5d, 0xbd, 0x0d, 0xed);
/* AESENCLAST ends with ShiftRows; pre-shuffling by its inverse cancels it. */
static const uint8_t INV_SHIFT_ROWS[32] = T16(0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3);
/* Byte rotations of each dword (little-endian lanes): rol 8/16/24. */
static const uint8_t ROL8[32] = T16(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
static const uint8_t ROL16[32] = T16(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
static const uint8_t ROL24[32] = T16(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12);
/* Big-endian words <-> little-endian lanes. */
static const uint8_t BSWAP32[32] = T16(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);

static const uint32_t FK[4] = {0xa3b1bac6u, 0x56aa3350u, 0x677d9197u, 0xb27022dcu};

#define LD(t) _mm256_loadu_si256((const __m256i *)(const void *)(t))

SM4_INLINE __m256i sbox(__m256i x)
{
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(x, m0f);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m0f);
    __m256i y = _mm256_xor_si256(_mm256_shuffle_epi8(LD(PRE_LO), lo),
                                 _mm256_shuffle_epi8(LD(PRE_HI), hi));
    y = _mm256_shuffle_epi8(y, LD(INV_SHIFT_ROWS));
    y = _mm256_aesenclast_epi128(y, _mm256_setzero_si256());
    lo = _mm256_and_si256(y, m0f);
    hi = _mm256_and_si256(_mm256_srli_epi16(y, 4), m0f);
    return _mm256_xor_si256(_mm256_shuffle_epi8(LD(POST_LO), lo),
                            _mm256_shuffle_epi8(LD(POST_HI), hi));
}

/* x0 ^ L(S(x1 ^ x2 ^ x3 ^ rk)) with L(t) = t ^ t<<<2 ^ t<<<10 ^ t<<<18 ^ t<<<24
 * = t ^ t<<<24 ^ (t ^ t<<<8 ^ t<<<16)<<<2: three byte shuffles and one
 * shift-based rotate instead of four (AVX2 has no VPROLD). */
SM4_INLINE __m256i round1(__m256i x0, __m256i x1, __m256i x2, __m256i x3, uint32_t rk)
{
    __m256i t = _mm256_xor_si256(_mm256_xor_si256(x1, x2),
                                 _mm256_xor_si256(x3, _mm256_set1_epi32((int)rk)));
    __m256i a;
    t = sbox(t);
    a = _mm256_xor_si256(_mm256_xor_si256(t, _mm256_shuffle_epi8(t, LD(ROL8))),
                         _mm256_shuffle_epi8(t, LD(ROL16)));
    a = _mm256_or_si256(_mm256_slli_epi32(a, 2), _mm256_srli_epi32(a, 30));
    return _mm256_xor_si256(_mm256_xor_si256(x0, t),
                            _mm256_xor_si256(_mm256_shuffle_epi8(t, LD(ROL24)), a));
}

/* 32 rounds on one 8-block group (word-sliced x[0..3]). */
SM4_INLINE void rounds8(__m256i x[4], const uint32_t *rk)
{
    int i;
    for (i = 0; i < 32; i += 4) {
        x[0] = round1(x[0], x[1], x[2], x[3], rk[i]);
        x[1] = round1(x[1], x[2], x[3], x[0], rk[i + 1]);
        x[2] = round1(x[2], x[3], x[0], x[1], rk[i + 2]);
        x[3] = round1(x[3], x[0], x[1], x[2], rk[i + 3]);
    }
}

/* Two independent groups interleaved round by round (16 blocks). */
SM4_INLINE void rounds16(__m256i x[4], __m256i y[4], const uint32_t *rk)
{
    int i;
    for (i = 0; i < 32; i += 4) {
        x[0] = round1(x[0], x[1], x[2], x[3], rk[i]);
        y[0] = round1(y[0], y[1], y[2], y[3], rk[i]);
        x[1] = round1(x[1], x[2], x[3], x[0], rk[i + 1]);
        y[1] = round1(y[1], y[2], y[3], y[0], rk[i + 1]);
        x[2] = round1(x[2], x[3], x[0], x[1], rk[i + 2]);
        y[2] = round1(y[2], y[3], y[0], y[1], rk[i + 2]);
        x[3] = round1(x[3], x[0], x[1], x[2], rk[i + 3]);
        y[3] = round1(y[3], y[0], y[1], y[2], rk[i + 3]);
    }
}

/* Four groups (32 blocks): the round's dependency chain (~20 cycles through
 * the shuffles and AESENCLAST) is long enough that two groups stay
 * latency-bound; see the kernel figures in the issue 5 report. */
SM4_INLINE void rounds32(__m256i x[4], __m256i y[4], __m256i z[4], __m256i w[4],
                         const uint32_t *rk)
{
    int i, j;
    for (i = 0; i < 32; i += 4) {
        for (j = 0; j < 4; j++) {
            uint32_t r = rk[i + j];
            x[j] = round1(x[j], x[(j + 1) & 3], x[(j + 2) & 3], x[(j + 3) & 3], r);
            y[j] = round1(y[j], y[(j + 1) & 3], y[(j + 2) & 3], y[(j + 3) & 3], r);
            z[j] = round1(z[j], z[(j + 1) & 3], z[(j + 2) & 3], z[(j + 3) & 3], r);
            w[j] = round1(w[j], w[(j + 1) & 3], w[(j + 2) & 3], w[(j + 3) & 3], r);
        }
    }
}

/* 4x4 dword transpose inside each 128-bit lane; its own inverse. */
SM4_INLINE void transpose(__m256i v[4])
{
    __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    __m256i t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    __m256i t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    v[0] = _mm256_unpacklo_epi64(t0, t2);
    v[1] = _mm256_unpackhi_epi64(t0, t2);
    v[2] = _mm256_unpacklo_epi64(t1, t3);
    v[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* 8 blocks (128 bytes) in memory order -> word-sliced state. Blocks 2j, 2j+1
 * sit in v[j]'s lanes; after the transpose dword p of lane L is block 2p+L. */
SM4_INLINE void load8(__m256i x[4], const uint8_t *in)
{
    const __m256i bs = LD(BSWAP32);
    int j;
    for (j = 0; j < 4; j++)
        x[j] = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(in + 32 * j)), bs);
    transpose(x);
}

/* Output is (X35, X34, X33, X32): reverse the words, transpose back, swap. */
SM4_INLINE void unslice8(const __m256i x[4], __m256i o[4])
{
    const __m256i bs = LD(BSWAP32);
    int j;
    o[0] = x[3], o[1] = x[2], o[2] = x[1], o[3] = x[0];
    transpose(o);
    for (j = 0; j < 4; j++)
        o[j] = _mm256_shuffle_epi8(o[j], bs);
}

SM4_INLINE void store8(uint8_t *out, const __m256i o[4])
{
    int j;
    for (j = 0; j < 4; j++)
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * j), o[j]);
}

SM4_INLINE void store8_xor(uint8_t *out, const uint8_t *in, const __m256i o[4])
{
    int j;
    for (j = 0; j < 4; j++) {
        __m256i d = _mm256_loadu_si256((const __m256i *)(const void *)(in + 32 * j));
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * j), _mm256_xor_si256(d, o[j]));
    }
}

/* Word-sliced counter blocks ivec[0..12) || be32(c + 2p + L), wrapping mod 2^32. */
SM4_INLINE void counters8(__m256i x[4], const uint32_t w[3], uint32_t c)
{
    x[0] = _mm256_set1_epi32((int)w[0]);
    x[1] = _mm256_set1_epi32((int)w[1]);
    x[2] = _mm256_set1_epi32((int)w[2]);
    x[3] = _mm256_add_epi32(_mm256_set1_epi32((int)c), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Constant-time key schedule: rk[i] = K[i] ^ L'(S(K[i+1]^K[i+2]^K[i+3]^CK[i]))
 * with the same AESENCLAST S-box, on one broadcast word. */
SM4_TARGET void kmsenv__sm4_simd_setkey(uint32_t rk[32], const uint8_t key[16])
{
    uint32_t k[4];
    int i;
    for (i = 0; i < 4; i++)
        k[i] = be32(key + 4 * i) ^ FK[i];
    for (i = 0; i < 32; i++) {
        uint32_t ck = 0, t, b;
        int j;
        for (j = 0; j < 4; j++) /* CK[i] byte j = (4i + j) * 7 mod 256 */
            ck = (ck << 8) | (uint32_t)(((4 * i + j) * 7) & 0xff);
        t = k[(i + 1) & 3] ^ k[(i + 2) & 3] ^ k[(i + 3) & 3] ^ ck;
        b = (uint32_t)_mm256_cvtsi256_si32(sbox(_mm256_set1_epi32((int)t)));
        b = b ^ ((b << 13) | (b >> 19)) ^ ((b << 23) | (b >> 9));
        k[i & 3] ^= b;
        rk[i] = k[i & 3];
    }
    kmsenv_wipe(k, sizeof(k));
}

/* blocks whole blocks, in memory order, through the schedule rk (pass the
 * reversed schedule to decrypt). in == out is allowed. */
SM4_TARGET void kmsenv__sm4_simd_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out,
                                     size_t blocks)
{
    __m256i x[4], y[4], o[4];
    for (; blocks >= 16; blocks -= 16, in += 256, out += 256) {
        load8(x, in);
        load8(y, in + 128);
        rounds16(x, y, rk);
        unslice8(x, o);
        store8(out, o);
        unslice8(y, o);
        store8(out + 128, o);
    }
    while (blocks != 0) {
        /* Short groups go through a stack copy so no load or store runs past
         * the caller's buffer. */
        uint8_t buf[128];
        size_t n = blocks < 8 ? blocks : 8;
        memcpy(buf, in, n * 16);
        memset(buf + n * 16, 0, sizeof(buf) - n * 16);
        load8(x, buf);
        rounds8(x, rk);
        unslice8(x, o);
        store8(buf, o);
        memcpy(out, buf, n * 16);
        kmsenv_wipe(buf, sizeof(buf));
        in += n * 16, out += n * 16, blocks -= n;
    }
}

/* block128_f over kmsenv_sm4 (gcm128's E_K(0), E_K(J0) and partial tails). */
void kmsenv__sm4_simd_block(const unsigned char in[16], unsigned char out[16], const void *key)
{
    const kmsenv_sm4 *s = (const kmsenv_sm4 *)key;
    kmsenv__sm4_simd_ecb(s->rk, in, out, 1);
}

/* ctr128_f for gcm128: ivec is read only, the low 32 bits wrap mod 2^32. */
SM4_TARGET void kmsenv__sm4_simd_ctr32(const unsigned char *in, unsigned char *out, size_t blocks,
                                       const void *key, const unsigned char ivec[16])
{
    const kmsenv_sm4 *s = (const kmsenv_sm4 *)key;
    const uint32_t *rk = s->rk;
    uint32_t w[3] = {be32(ivec), be32(ivec + 4), be32(ivec + 8)};
    uint32_t c = be32(ivec + 12);
    __m256i x[4], y[4], o[4];

    for (; blocks >= 32; blocks -= 32, in += 512, out += 512, c += 32) {
        __m256i z[4], v[4];
        counters8(x, w, c);
        counters8(y, w, c + 8);
        counters8(z, w, c + 16);
        counters8(v, w, c + 24);
        rounds32(x, y, z, v, rk);
        unslice8(x, o);
        store8_xor(out, in, o);
        unslice8(y, o);
        store8_xor(out + 128, in + 128, o);
        unslice8(z, o);
        store8_xor(out + 256, in + 256, o);
        unslice8(v, o);
        store8_xor(out + 384, in + 384, o);
    }
    for (; blocks >= 16; blocks -= 16, in += 256, out += 256, c += 16) {
        counters8(x, w, c);
        counters8(y, w, c + 8);
        rounds16(x, y, rk);
        unslice8(x, o);
        store8_xor(out, in, o);
        unslice8(y, o);
        store8_xor(out + 128, in + 128, o);
    }
    while (blocks != 0) {
        uint8_t ks[128];
        size_t n = blocks < 8 ? blocks : 8, i;
        counters8(x, w, c);
        rounds8(x, rk);
        unslice8(x, o);
        store8(ks, o);
        for (i = 0; i < n * 16; i++)
            out[i] = in[i] ^ ks[i];
        kmsenv_wipe(ks, sizeof(ks));
        in += n * 16, out += n * 16, blocks -= n, c += (uint32_t)n;
    }
}

/*
 * Legacy modes over the same kernel (for legacy.c; see the report).
 * CTR here is the full 128-bit big-endian counter of the legacy format:
 * the 32-bit kernel runs up to each 2^32 wrap, then the carry goes into the
 * upper 96 bits. Any tail (< 16 bytes) uses one more keystream block.
 */
void kmsenv__sm4_simd_ctr128(const uint32_t rk[32], const uint8_t iv[16], const uint8_t *in,
                             uint8_t *out, size_t len)
{
    kmsenv_sm4 s;
    uint8_t ctr[16];
    size_t blocks = len / 16, tail = len % 16;
    int i;

    memset(&s, 0, sizeof(s));
    memcpy(s.rk, rk, sizeof(s.rk));
    memcpy(ctr, iv, 16);
    while (blocks != 0 || tail != 0) {
        uint64_t low = be32(ctr + 12), room = (((uint64_t)1) << 32) - low;
        size_t n = (uint64_t)blocks < room ? blocks : (size_t)room;
        if (n != 0) {
            kmsenv__sm4_simd_ctr32(in, out, n, &s, ctr);
            in += n * 16, out += n * 16, blocks -= n;
        } else { /* only the tail is left */
            uint8_t buf[16] = {0};
            memcpy(buf, in, tail);
            kmsenv__sm4_simd_ctr32(buf, buf, 1, &s, ctr);
            memcpy(out, buf, tail);
            kmsenv_wipe(buf, sizeof(buf));
            tail = 0;
            n = 1;
        }
        /* advance the 128-bit counter by n, carrying out of the low word */
        {
            uint64_t v = low + n;
            int carry;
            ctr[12] = (uint8_t)(v >> 24), ctr[13] = (uint8_t)(v >> 16);
            ctr[14] = (uint8_t)(v >> 8), ctr[15] = (uint8_t)v;
            carry = (int)(v >> 32);
            for (i = 11; i >= 0 && carry; i--)
                carry = ++ctr[i] == 0;
        }
    }
    kmsenv_wipe(&s, sizeof(s));
}

/* CBC decrypt is parallel: ECB-decrypt a run, then XOR with the previous
 * ciphertext blocks. Works in place by keeping the last ciphertext block of
 * each run aside. len is a multiple of 16 (checked by the caller). */
void kmsenv__sm4_simd_cbc_decrypt(const uint32_t rk[32], const uint8_t iv[16], const uint8_t *in,
                                  uint8_t *out, size_t len)
{
    uint32_t drk[32];
    uint8_t prev[16], buf[256 + 16];
    size_t i;
    for (i = 0; i < 32; i++)
        drk[i] = rk[31 - i];
    memcpy(prev, iv, 16);
    while (len != 0) {
        size_t n = len < 256 ? len : 256;
        /* buf = prev || ciphertext run: the chaining values survive in place. */
        memcpy(buf, prev, 16);
        memcpy(buf + 16, in, n);
        kmsenv__sm4_simd_ecb(drk, in, out, n / 16);
        for (i = 0; i < n; i++)
            out[i] ^= buf[i];
        memcpy(prev, buf + n, 16);
        in += n, out += n, len -= n;
    }
    kmsenv_wipe(drk, sizeof(drk));
    kmsenv_wipe(buf, sizeof(buf));
}

/* CBC encrypt is inherently serial: one block at a time. */
void kmsenv__sm4_simd_cbc_encrypt(const uint32_t rk[32], const uint8_t iv[16], const uint8_t *in,
                                  uint8_t *out, size_t len)
{
    uint8_t x[16];
    size_t i;
    memcpy(x, iv, 16);
    for (; len != 0; len -= 16, in += 16, out += 16) {
        for (i = 0; i < 16; i++)
            x[i] ^= in[i];
        kmsenv__sm4_simd_ecb(rk, x, x, 1);
        memcpy(out, x, 16);
    }
    kmsenv_wipe(x, sizeof(x));
}

#endif /* KMSENV_HAVE_X86_SIMD */
