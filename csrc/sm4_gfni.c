/*
 * sm4_gfni.c: SM4 with GFNI (issue 17), constant time, in two widths:
 *   gfni512: AVX-512F/BW/VL/DQ + GFNI on zmm (Intel Ice Lake server and
 *            later, AMD Zen 4 and later);
 *   gfni256: AVX2 + VEX-encoded GFNI on ymm, for CPUs with GFNI but no
 *            AVX-512 (Intel Alder Lake and later client cores, Gracemont and
 *            Crestmont E-cores). Its functions are compiled for "avx2,gfni"
 *            only, so nothing in them is EVEX.
 * block (E_K(J0), tails) and short inputs use the same xmm/ymm code in both.
 *
 * Why: OpenSSL's SM4 is table-based C (65-120 MB/s on the machines measured,
 * and its tables leak through the cache); the AES-NI method (sm4_simd.c)
 * spends 8 shuffles and an AESENCLAST per S-box. GFNI does the S-box in two
 * instructions, and after the rearrangement below in one.
 *
 * The S-box. SM4's S-box is affine o inversion o affine over GF(2^8) with the
 * field polynomial 0x1F5. Moved into GFNI's field (AES's, 0x11B) through the
 * isomorphism x -> 0x23 (a root of 0x1F5 there), it becomes
 *     S(x) = A2 * inv(A1 * x ^ 0x3e) ^ 0xd3
 * i.e. VGF2P8AFFINEQB(x, A1, 0x3e) then VGF2P8AFFINEINVQB(., A2, 0xd3) with
 *     A1 = 0x4c287db91a22505d, A2 = 0xf3ab34a974a6b589
 * in Intel's layout (byte 7-i of the qword is the row of output bit i). They
 * are the constants of IACR ePrint 2022/1154 sec. 3 (and Botan's sm4_gfni)
 * for that root, recorded in /work/shared/perf/anchors.md sec. 3b.
 *
 * The round, rearranged. A round is x0 ^= L(S(x1 ^ x2 ^ x3 ^ rk)) with
 * L(t) = t ^ t<<<2 ^ t<<<10 ^ t<<<18 ^ t<<<24. Two observations:
 *  1. Keep the state in "A1 form", X = A1 * x (A1 applied to every byte).
 *     A1 is linear and bytewise, so X1^X2^X3 ^ (A1*rk ^ 0x3e) is exactly the
 *     first affine step's output: the first GFNI of every round disappears
 *     (into the round keys, converted once per call, and into the entry and
 *     exit of the state: one GFNI per register each way).
 *  2. L splits into bytewise linear maps and byte rotations. With SHL2/SHR6
 *     the bytewise shifts, t<<<2 = SHL2 t ^ (SHR6 t)<<<8, and so
 *         L(t) = M0 t ^ (M1 t)<<<8 ^ (M1 t)<<<16 ^ (M3 t)<<<24
 *     with M0 = 1 ^ SHL2, M1 = SHR6 ^ SHL2, M3 = 1 ^ SHR6 = M0 ^ M1. Each
 *     A1*Md*A2 is one VGF2P8AFFINEINVQB matrix Nd (A1*Md*0xd3 its
 *     immediate), applied to y = X1^X2^X3^RK directly; the state stays in
 *     A1 form for all 32 rounds and leaves through A1^-1:
 *        N0 = 0x040db891e9a481b7 imm 0x72    N1 = 0x2c020425162040ad imm 0x63
 *        N3 = 0x280fbcb4ff84c11a imm 0x11    A1^-1 = 0xb3a4f5863284728b
 *     (N3 = N0 ^ N1). The derivation was checked by brute force on all 256
 *     inputs; test_sm4_gfni.c repeats that check by emulating the two GFNI
 *     instructions, and checks the kernels themselves on all 256 S-box
 *     inputs, against the GB/T 32907 table, OpenSSL and RFC 8998.
 *     Byte order: words stay as they are in memory (big-endian inside each
 *     dword), so no byte swap on load or store; the rotations are byte
 *     shuffles written for that order (t<<<8 moves memory byte p+1 to p).
 *
 * Layouts, chosen by measurement (cycles per 64-block round on the Intel
 * Xeon this was built on, whose zmm GFNI issues on one port with 3 cycles
 * of latency plus 2 of bypass into the integer units):
 *   - word-sliced: after a 4x4 dword transpose in each 128-bit lane,
 *     register k holds word k of 16 (zmm) or 8 (ymm) blocks; a round is a
 *     three-way XOR, 3 GFNI, 3 shuffles and the XOR back: 4 zmm groups 21.9;
 *   - half-sliced (hrounds, zmm bulk CTR): see there; 16.8;
 *   - byte-sliced, one register per byte position (rotations free): one
 *     chain through 8 GFNIs a round, 22.0, not used.
 * zmm ctr32 runs 96-block half-sliced iterations, then word-sliced groups;
 * up to 16 blocks (and E_K(J0)) go to the ymm/xmm code with the round
 * ordered for latency (xround), since a few blocks are nothing but the
 * chain of 32 rounds. Partial groups use masked loads and stores
 * (fault-suppressing): nothing is read or written past the caller's buffers.
 *
 * Constant time: every data- or key-dependent operation is a register
 * instruction (GFNI, shuffles with constant indices, XOR, add); there are no
 * secret-indexed loads and no secret-dependent branches. The key schedule
 * uses the same GFNI S-box, one word at a time. Branches and masks depend
 * only on lengths. Round keys converted to A1 form and round states kept on
 * the stack are overwritten before return.
 *
 * Only functions carrying Z_TARGET / Y_TARGET use these extensions; the
 * module is built for baseline x86-64 (and mingw-w64), and kernels.c picks a
 * kernel at run time from cpu.c's bits after a self-test.
 */
#include <openssl/crypto.h>

#include "internal.h"

#if defined(KMSENV_HAVE_X86_SIMD)

#include <immintrin.h>

#define Z_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,gfni")))
#define Z_INLINE static inline __attribute__((always_inline)) Z_TARGET
#define Y_TARGET __attribute__((target("avx2,gfni")))
#define Y_INLINE static inline __attribute__((always_inline)) Y_TARGET

/* GFNI matrices (see the header comment). */
#define A1_MAT 0x4c287db91a22505dLL
#define A1_IMM 0x3e
#define A2_MAT ((long long)0xf3ab34a974a6b589ULL)
#define A2_IMM 0xd3
#define A1INV_MAT ((long long)0xb3a4f5863284728bULL)
#define N0_MAT 0x040db891e9a481b7LL
#define N0_IMM 0x72
#define N1_MAT 0x2c020425162040adLL
#define N1_IMM 0x63
#define N3_MAT 0x280fbcb4ff84c11aLL
#define N3_IMM 0x11

/* Byte shuffles inside each dword, for big-endian words in memory order:
 * t<<<8 takes memory byte (p+1) mod 4 to byte p. Repeated per 16-byte lane. */
#define LANE4(a, b, c, d) a, b, c, d, a + 4, b + 4, c + 4, d + 4, a + 8, b + 8, c + 8, d + 8, \
                          a + 12, b + 12, c + 12, d + 12
#define LANES4(a, b, c, d) LANE4(a, b, c, d), LANE4(a, b, c, d), LANE4(a, b, c, d), LANE4(a, b, c, d)
static const int8_t ROL8_BE[64] = {LANES4(1, 2, 3, 0)};
static const int8_t ROL16_BE[64] = {LANES4(2, 3, 0, 1)};
static const int8_t ROL24_BE[64] = {LANES4(3, 0, 1, 2)};
static const int8_t BSWAP32[64] = {LANES4(3, 2, 1, 0)};

static const uint32_t FK[4] = {0xa3b1bac6u, 0x56aa3350u, 0x677d9197u, 0xb27022dcu};

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t rol32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* A dword exactly as its 4 bytes lie in memory (for broadcasting them). */
static uint32_t mem32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Overwrites a stack array the compiler would otherwise consider dead. */
static void wipe(void *p, size_t n)
{
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/* ---- key schedule and the single block (xmm, VEX) --------------------- */

/* S applied to each byte of a word (plain form: both affine steps). */
Y_INLINE uint32_t sbox32(uint32_t x)
{
    __m128i v = _mm_cvtsi32_si128((int)x);
    v = _mm_gf2p8affine_epi64_epi8(v, _mm_set1_epi64x(A1_MAT), A1_IMM);
    v = _mm_gf2p8affineinv_epi64_epi8(v, _mm_set1_epi64x(A2_MAT), A2_IMM);
    return (uint32_t)_mm_cvtsi128_si32(v);
}

/* rk[i] = K[i] ^ L'(S(K[i+1] ^ K[i+2] ^ K[i+3] ^ CK[i])), L'(b) = b ^ b<<<13
 * ^ b<<<23 (GB/T 32907 sec. 7.3), one word at a time through the GFNI S-box:
 * no table, no branch on the key. */
Y_TARGET void kmsenv__sm4_gfni_setkey(uint32_t rk[32], const uint8_t key[16])
{
    uint32_t k[4];
    int i;
    for (i = 0; i < 4; i++)
        k[i] = be32(key + 4 * i) ^ FK[i];
    for (i = 0; i < 32; i++) {
        uint32_t ck = 0, b;
        int j;
        for (j = 0; j < 4; j++) /* CK[i] byte j = (4i + j) * 7 mod 256 */
            ck = (ck << 8) | (uint32_t)(((4 * i + j) * 7) & 0xff);
        b = sbox32(k[(i + 1) & 3] ^ k[(i + 2) & 3] ^ k[(i + 3) & 3] ^ ck);
        k[i & 3] ^= b ^ rol32(b, 13) ^ rol32(b, 23);
        rk[i] = k[i & 3];
    }
    wipe(k, sizeof(k));
}

#define LDX(t) _mm_loadu_si128((const __m128i *)(const void *)(t))

/* An optimisation barrier: GCC reassociates XOR chains freely, which would
 * undo the order in xround (it measurably put X[i] back on the chain). */
Y_INLINE __m128i xkeep(__m128i v)
{
    __asm__("" : "+x"(v));
    return v;
}

/*
 * One round arranged for latency (a single block is nothing but its chain of
 * 32 rounds). Given y = X[i+1] ^ X[i+2] ^ X[i+3] ^ RK[i] and
 * v = X[i+2] ^ X[i+3] ^ RK[i+1], it returns the next round's y directly,
 *     y' = X[i] ^ v ^ L,  L = P0 ^ P1<<<8 ^ P1<<<16 ^ P3<<<24,
 * three operations after the GFNI results instead of five (through X[i+4]
 * and then the next XOR of three), and sets X[i+4] = X[i] ^ L = y' ^ v
 * beside the chain. v only needs X[i+3], which the previous round produced
 * off the chain as well. Measured: one block 154 ns against 201 before.
 */
Y_INLINE __m128i xround(__m128i *xi, __m128i y, __m128i v)
{
    __m128i p3 = _mm_gf2p8affineinv_epi64_epi8(y, _mm_set1_epi64x(N3_MAT), N3_IMM);
    __m128i p1 = _mm_gf2p8affineinv_epi64_epi8(y, _mm_set1_epi64x(N1_MAT), N1_IMM);
    __m128i p0 = _mm_gf2p8affineinv_epi64_epi8(y, _mm_set1_epi64x(N0_MAT), N0_IMM);
    __m128i w = xkeep(_mm_xor_si128(v, *xi));
    __m128i d = xkeep(_mm_xor_si128(_mm_shuffle_epi8(p1, LDX(ROL8_BE)),
                                    _mm_shuffle_epi8(p1, LDX(ROL16_BE))));
    __m128i e = xkeep(_mm_xor_si128(_mm_xor_si128(w, p0), _mm_shuffle_epi8(p3, LDX(ROL24_BE))));
    __m128i ny = xkeep(_mm_xor_si128(d, e));
    *xi = _mm_xor_si128(ny, v);
    return ny;
}

/* One block: both kernels share this xmm code (width does not help a
 * single block). One word per register, in every lane. The 32 round keys
 * go to A1 form in four ymm operations first, so the chain's ports are not
 * shared with 32 separate conversions. in == out is allowed. */
Y_TARGET static void one_block(const uint32_t rk[32], const uint8_t in[16], uint8_t out[16])
{
    uint32_t rkx[33];
    __m128i v = _mm_gf2p8affine_epi64_epi8(LDX(in), _mm_set1_epi64x(A1_MAT), 0);
    __m128i x[4], y;
    int i, j;
    for (i = 0; i < 4; i++) {
        __m256i k = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(rk + 8 * i)),
                                        _mm256_loadu_si256((const __m256i *)(const void *)BSWAP32));
        k = _mm256_gf2p8affine_epi64_epi8(k, _mm256_set1_epi64x(A1_MAT), A1_IMM);
        _mm256_storeu_si256((__m256i *)(void *)(rkx + 8 * i), k);
    }
    rkx[32] = 0; /* the round after the last: its y is not used */
    x[0] = _mm_shuffle_epi32(v, 0x00), x[1] = _mm_shuffle_epi32(v, 0x55);
    x[2] = _mm_shuffle_epi32(v, 0xaa), x[3] = _mm_shuffle_epi32(v, 0xff);
    y = _mm_xor_si128(_mm_xor_si128(x[1], x[2]), _mm_xor_si128(x[3], _mm_set1_epi32((int)rkx[0])));
    for (i = 0; i < 32; i += 4)
#pragma GCC unroll 4
        for (j = 0; j < 4; j++)
            y = xround(&x[j], y, _mm_xor_si128(_mm_xor_si128(x[(j + 2) & 3], x[(j + 3) & 3]),
                                               _mm_set1_epi32((int)rkx[i + j + 1])));
    /* output words (X35, X34, X33, X32) = (x3, x2, x1, x0) */
    v = _mm_unpacklo_epi64(_mm_unpacklo_epi32(x[3], x[2]), _mm_unpacklo_epi32(x[1], x[0]));
    v = _mm_gf2p8affine_epi64_epi8(v, _mm_set1_epi64x(A1INV_MAT), 0);
    _mm_storeu_si128((__m128i *)(void *)out, v);
    wipe(rkx, sizeof(rkx));
}

/* ---- gfni512: zmm ------------------------------------------------------ */

#define Z_G 4 /* groups of 16 blocks interleaved in the bulk loops */
#define LDZ(t) _mm512_loadu_si512((const void *)(t))

/* x0 ^ L(S(y)) in A1 form, word-sliced: 3 GFNI, 3 shuffles, 2 XOR3. */
Z_INLINE __m512i zround(__m512i x0, __m512i y, __m512i n0, __m512i n1, __m512i n3, __m512i r8,
                        __m512i r16, __m512i r24)
{
    __m512i p0 = _mm512_gf2p8affineinv_epi64_epi8(y, n0, N0_IMM);
    __m512i p1 = _mm512_gf2p8affineinv_epi64_epi8(y, n1, N1_IMM);
    __m512i p3 = _mm512_gf2p8affineinv_epi64_epi8(y, n3, N3_IMM);
    __m512i a = _mm512_ternarylogic_epi32(x0, p0, _mm512_shuffle_epi8(p1, r8), 0x96);
    return _mm512_ternarylogic_epi32(a, _mm512_shuffle_epi8(p1, r16), _mm512_shuffle_epi8(p3, r24),
                                     0x96);
}

/* 32 rounds on `groups` groups, interleaved round by round. The three-way
 * XOR of a round shares x2^x3 (resp. x0^x1) with the next one: u feeds
 * rounds i and i+1, then rounds i+2 and i+3. */
Z_INLINE void zrounds(__m512i x[][4], int groups, const uint32_t rkx[32])
{
    const __m512i n0 = _mm512_set1_epi64(N0_MAT), n1 = _mm512_set1_epi64(N1_MAT);
    const __m512i n3 = _mm512_set1_epi64(N3_MAT);
    const __m512i r8 = LDZ(ROL8_BE), r16 = LDZ(ROL16_BE), r24 = LDZ(ROL24_BE);
    int i, g;
    for (i = 0; i < 32; i += 4) {
        const __m512i k0 = _mm512_set1_epi32((int)rkx[i]), k1 = _mm512_set1_epi32((int)rkx[i + 1]);
        const __m512i k2 = _mm512_set1_epi32((int)rkx[i + 2]), k3 = _mm512_set1_epi32((int)rkx[i + 3]);
        __m512i u[Z_G];
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            u[g] = _mm512_xor_si512(x[g][2], x[g][3]);
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            x[g][0] = zround(x[g][0], _mm512_ternarylogic_epi32(x[g][1], u[g], k0, 0x96), n0, n1, n3,
                             r8, r16, r24);
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            x[g][1] = zround(x[g][1], _mm512_ternarylogic_epi32(u[g], x[g][0], k1, 0x96), n0, n1, n3,
                             r8, r16, r24);
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            u[g] = _mm512_xor_si512(x[g][0], x[g][1]);
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            x[g][2] = zround(x[g][2], _mm512_ternarylogic_epi32(x[g][3], u[g], k2, 0x96), n0, n1, n3,
                             r8, r16, r24);
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            x[g][3] = zround(x[g][3], _mm512_ternarylogic_epi32(u[g], x[g][2], k3, 0x96), n0, n1, n3,
                             r8, r16, r24);
    }
}

/* The 32 round keys in A1 form (A1 * rk ^ 0x3e on their memory bytes). */
Z_INLINE void zround_keys(uint32_t rkx[32], const uint32_t rk[32])
{
    int h;
    for (h = 0; h < 2; h++) {
        __m512i v = _mm512_shuffle_epi8(LDZ(rk + 16 * h), LDZ(BSWAP32));
        v = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(A1_MAT), A1_IMM);
        _mm512_storeu_si512((void *)(rkx + 16 * h), v);
    }
}

/* 4x4 dword transpose inside each 128-bit lane; its own inverse. */
Z_INLINE void ztranspose(__m512i v[4])
{
    __m512i t0 = _mm512_unpacklo_epi32(v[0], v[1]), t1 = _mm512_unpackhi_epi32(v[0], v[1]);
    __m512i t2 = _mm512_unpacklo_epi32(v[2], v[3]), t3 = _mm512_unpackhi_epi32(v[2], v[3]);
    v[0] = _mm512_unpacklo_epi64(t0, t2);
    v[1] = _mm512_unpackhi_epi64(t0, t2);
    v[2] = _mm512_unpacklo_epi64(t1, t3);
    v[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Dword mask of register j (blocks 4j..4j+3) of a group holding n blocks. */
static __mmask16 zmask(size_t n, int j)
{
    size_t have = n > (size_t)(4 * j) ? n - (size_t)(4 * j) : 0;
    return have >= 4 ? (__mmask16)0xffff : (__mmask16)((1u << (4 * have)) - 1);
}

/* Loads a group of n (1..16) blocks: registers past the data are not read. */
Z_INLINE void zload(__m512i v[4], const uint8_t *p, size_t n)
{
    int j;
    for (j = 0; j < 4; j++) {
        if (n >= 16)
            v[j] = LDZ(p + 64 * j);
        else if (n > (size_t)(4 * j))
            v[j] = _mm512_maskz_loadu_epi32(zmask(n, j), p + 64 * j);
        else
            v[j] = _mm512_setzero_si512();
    }
}

Z_INLINE void zstore(uint8_t *p, const __m512i v[4], size_t n)
{
    int j;
    for (j = 0; j < 4; j++) {
        if (n >= 16)
            _mm512_storeu_si512((void *)(p + 64 * j), v[j]);
        else if (n > (size_t)(4 * j))
            _mm512_mask_storeu_epi32(p + 64 * j, zmask(n, j), v[j]);
    }
}

/* Memory order -> sliced A1 form. */
Z_INLINE void zslice(__m512i x[4])
{
    int j;
    ztranspose(x);
    for (j = 0; j < 4; j++)
        x[j] = _mm512_gf2p8affine_epi64_epi8(x[j], _mm512_set1_epi64(A1_MAT), 0);
}

/* Sliced A1 form after 32 rounds -> output blocks (X35, X34, X33, X32). */
Z_INLINE void zunslice(const __m512i x[4], __m512i o[4])
{
    int j;
    for (j = 0; j < 4; j++)
        o[j] = _mm512_gf2p8affine_epi64_epi8(x[3 - j], _mm512_set1_epi64(A1INV_MAT), 0);
    ztranspose(o);
}

/* Counter blocks w0 w1 w2 || be32(c + block index), wrapping mod 2^32, sliced
 * and in A1 form; w[] are the first three words already in A1 form. */
Z_INLINE void zcounters(__m512i x[4], const __m512i w[3], uint32_t c)
{
    const __m512i offs = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i v = _mm512_add_epi32(_mm512_set1_epi32((int)c), offs);
    x[0] = w[0], x[1] = w[1], x[2] = w[2];
    v = _mm512_shuffle_epi8(v, LDZ(BSWAP32));
    x[3] = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(A1_MAT), 0);
}

/* ECB over `groups` groups (blocks in (16 * (groups-1), 16 * groups]). */
Z_INLINE void zecb_groups(const uint32_t rkx[32], const uint8_t *in, uint8_t *out, size_t blocks,
                          int groups)
{
    __m512i x[Z_G][4], o[4];
    int g;
    for (g = 0; g < groups; g++) {
        size_t n = blocks - 16 * (size_t)g;
        zload(x[g], in + 256 * g, n);
        zslice(x[g]);
    }
    zrounds(x, groups, rkx);
    for (g = 0; g < groups; g++) {
        zunslice(x[g], o);
        zstore(out + 256 * g, o, blocks - 16 * (size_t)g);
    }
}

Y_TARGET static void yecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks);
Y_TARGET static void yctr(const uint32_t rk[32], const unsigned char *in, unsigned char *out,
                          size_t blocks, const unsigned char ivec[16]);

/* blocks whole blocks in memory order through the schedule rk (the reversed
 * schedule decrypts). in == out is allowed. */
Z_TARGET void kmsenv__sm4_gfni512_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out,
                                      size_t blocks)
{
    uint32_t rkx[32];
    if (blocks <= 16) {
        yecb(rk, in, out, blocks);
        return;
    }
    zround_keys(rkx, rk);
    for (; blocks >= 16 * Z_G; blocks -= 16 * Z_G, in += 256 * Z_G, out += 256 * Z_G)
        zecb_groups(rkx, in, out, 16 * Z_G, Z_G);
    if (blocks > 48)
        zecb_groups(rkx, in, out, blocks, 4);
    else if (blocks > 32)
        zecb_groups(rkx, in, out, blocks, 3);
    else if (blocks > 16)
        zecb_groups(rkx, in, out, blocks, 2);
    else if (blocks > 0)
        yecb(rk, in, out, blocks);
    wipe(rkx, sizeof(rkx));
}

Z_INLINE void zctr_groups(const uint32_t rkx[32], const __m512i w[3], uint32_t c,
                          const uint8_t *in, uint8_t *out, size_t blocks, int groups)
{
    __m512i x[Z_G][4], o[4], d[4];
    int g, j;
    for (g = 0; g < groups; g++)
        zcounters(x[g], w, c + 16 * (uint32_t)g);
    zrounds(x, groups, rkx);
    for (g = 0; g < groups; g++) {
        size_t n = blocks - 16 * (size_t)g;
        zunslice(x[g], o);
        zload(d, in + 256 * g, n);
        for (j = 0; j < 4; j++)
            o[j] = _mm512_xor_si512(o[j], d[j]);
        zstore(out + 256 * g, o, n);
    }
}

#if defined(__x86_64__) /* the loop below needs zmm16-31, which 32-bit code lacks */
/*
 * Bulk CTR on zmm, "half-sliced": a word of 32 blocks in two registers, E
 * holding its bytes 0 and 2 (memory order) and O its bytes 1 and 3, one
 * block per 16-bit element. Byte rotations by 8 and 24 then become register
 * renames plus a byte swap inside each element, rotation by 16 a byte swap,
 * and (with N3 = N0 ^ N1, as M3 = M0 ^ M1) a round on 32 blocks is
 *     y = X[a+1] ^ X[a+2] ^ X[a+3] ^ RK                 (per E and O)
 *     P0 = N0 * inv(y) ^ 0x72, P1 = N1 * inv(y) ^ 0x63  (4 GFNI)
 *     E ^= P0e ^ P1o ^ swap(P0o ^ P1e ^ P1o)
 *     O ^= P0o ^ P0e ^ P1e ^ swap(P1e ^ P1o)
 * (bytes p of L's terms P0_p, P0_{p+3}, P1_{p+1}, P1_{p+2}, P1_{p+3}, read
 * off for p = 0, 2 and p = 1, 3): 16 instructions for 32 blocks, against 19
 * word-sliced. Measured on this Intel core (zmm GFNI on one port, 3 cycles
 * plus 2 of bypass into integer instructions), in cycles a round per 64
 * blocks: word-sliced 4 groups 21.9; byte-sliced (16 registers, rotations
 * free but one chain through 8 GFNIs a round) 22.0; half-sliced 3 groups
 * 18.4 as intrinsics and 16.8 as the assembly below. GCC's allocator spills
 * the intrinsic version (3 groups need 24 state registers plus temporaries
 * of 32), hence the hand-allocated loop; it is the only assembly here.
 */
#define H_G 3 /* groups of 32 blocks interleaved: 96 blocks per iteration */

/* Within each 16-byte lane: bytes (0,2) of the 4 dwords, then bytes (1,3). */
#define SPLIT_LANE(a, b, c, d) a, c, a + 4, c + 4, a + 8, c + 8, a + 12, c + 12, \
                              b, d, b + 4, d + 4, b + 8, d + 8, b + 12, d + 12
#define SPLIT4(a, b, c, d) SPLIT_LANE(a, b, c, d), SPLIT_LANE(a, b, c, d), SPLIT_LANE(a, b, c, d), \
                           SPLIT_LANE(a, b, c, d)
/* From little-endian counter values: memory byte q of a dword is byte 3-q. */
static const int8_t SPLIT_LE[64] = {SPLIT4(3, 2, 1, 0)};
/* Swaps the two bytes of every 16-bit element. */
static const int8_t SWAP16[64] = {LANES4(1, 0, 3, 2)};
/* Round key bytes (0,2) resp. (1,3), repeated over the dword. */
static const int8_t REP02[64] = {LANES4(0, 2, 0, 2)};
static const int8_t REP13[64] = {LANES4(1, 3, 1, 3)};
static const int64_t N0_Q = N0_MAT, N1_Q = N1_MAT;

/* One half-sliced round on one group, in AT&T order (sources, then the
 * destination; vpternlogd $0x96 XORs its three operands into the last).
 * Arguments: register numbers of the group's E/O words a (updated), b, c, d,
 * and the byte offsets of the round key's E and O dwords from %[rk].
 * zmm24-27 are temporaries T0-T3, zmm28 the byte swap, zmm29/30 N0/N1,
 * zmm31 the round key broadcast (a load-port operation):
 *   T0 = Eb ^ RKe ^ Ec ^ Ed = ye          T1 = yo likewise
 *   T2 = P1e, T3 = P1o, T0 = P0e, T1 = P0o
 *   Ea ^= P0e ^ P1o                        Oa ^= P0o ^ P0e
 *   T1 = swap(P0o ^ P1e ^ P1o)             T3 = swap(P1e ^ P1o)
 *   Ea ^= T1                               Oa ^= P1e ^ T3 */
#define HR(ea, oa, eb, ob, ec, oc, ed, od, ke, ko)                                \
    "vpbroadcastd " ke "(%[rk]), %%zmm31\n\t"                                    \
    "vpxord %%zmm31, %%zmm" eb ", %%zmm24\n\t"                                   \
    "vpbroadcastd " ko "(%[rk]), %%zmm31\n\t"                                    \
    "vpxord %%zmm31, %%zmm" ob ", %%zmm25\n\t"                                   \
    "vpternlogd $0x96, %%zmm" ed ", %%zmm" ec ", %%zmm24\n\t"                     \
    "vpternlogd $0x96, %%zmm" od ", %%zmm" oc ", %%zmm25\n\t"                     \
    "vgf2p8affineinvqb $0x63, %%zmm30, %%zmm24, %%zmm26\n\t"                      \
    "vgf2p8affineinvqb $0x63, %%zmm30, %%zmm25, %%zmm27\n\t"                      \
    "vgf2p8affineinvqb $0x72, %%zmm29, %%zmm24, %%zmm24\n\t"                      \
    "vgf2p8affineinvqb $0x72, %%zmm29, %%zmm25, %%zmm25\n\t"                      \
    "vpternlogd $0x96, %%zmm27, %%zmm24, %%zmm" ea "\n\t"                         \
    "vpternlogd $0x96, %%zmm24, %%zmm25, %%zmm" oa "\n\t"                         \
    "vpternlogd $0x96, %%zmm27, %%zmm26, %%zmm25\n\t"                             \
    "vpxord %%zmm26, %%zmm27, %%zmm27\n\t"                                        \
    "vpshufb %%zmm28, %%zmm25, %%zmm25\n\t"                                       \
    "vpshufb %%zmm28, %%zmm27, %%zmm27\n\t"                                       \
    "vpxord %%zmm25, %%zmm" ea ", %%zmm" ea "\n\t"                                \
    "vpternlogd $0x96, %%zmm27, %%zmm26, %%zmm" oa "\n\t"
#define HLD(n) "vmovdqu64 " #n "*64(%[st]), %%zmm" #n "\n\t"
#define HST(n) "vmovdqu64 %%zmm" #n ", " #n "*64(%[st])\n\t"

/* 32 rounds on 3 groups: st[8g + k] = E of word k of group g, st[8g + 4 + k]
 * = its O; rkh[i] / rkh[32 + i] = round key i's E / O dword. Four rounds
 * (words 0-3 updated in turn) per loop iteration. */
Z_TARGET static void hrounds(__m512i st[24], const uint32_t rkh[64])
{
    const void *rk = rkh;
    int n = 8;
    __asm__ __volatile__(
        HLD(0) HLD(1) HLD(2) HLD(3) HLD(4) HLD(5) HLD(6) HLD(7) HLD(8) HLD(9) HLD(10) HLD(11)
        HLD(12) HLD(13) HLD(14) HLD(15) HLD(16) HLD(17) HLD(18) HLD(19) HLD(20) HLD(21) HLD(22)
        HLD(23)
        "vmovdqu64 %[sw], %%zmm28\n\t"
        "vpbroadcastq %[n0], %%zmm29\n\t"
        "vpbroadcastq %[n1], %%zmm30\n\t"
        "1:\n\t"
        HR("0", "4", "1", "5", "2", "6", "3", "7", "0", "128")
        HR("8", "12", "9", "13", "10", "14", "11", "15", "0", "128")
        HR("16", "20", "17", "21", "18", "22", "19", "23", "0", "128")
        HR("1", "5", "2", "6", "3", "7", "0", "4", "4", "132")
        HR("9", "13", "10", "14", "11", "15", "8", "12", "4", "132")
        HR("17", "21", "18", "22", "19", "23", "16", "20", "4", "132")
        HR("2", "6", "3", "7", "0", "4", "1", "5", "8", "136")
        HR("10", "14", "11", "15", "8", "12", "9", "13", "8", "136")
        HR("18", "22", "19", "23", "16", "20", "17", "21", "8", "136")
        HR("3", "7", "0", "4", "1", "5", "2", "6", "12", "140")
        HR("11", "15", "8", "12", "9", "13", "10", "14", "12", "140")
        HR("19", "23", "16", "20", "17", "21", "18", "22", "12", "140")
        "add $16, %[rk]\n\t"
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        HST(0) HST(1) HST(2) HST(3) HST(4) HST(5) HST(6) HST(7) HST(8) HST(9) HST(10) HST(11)
        HST(12) HST(13) HST(14) HST(15) HST(16) HST(17) HST(18) HST(19) HST(20) HST(21) HST(22)
        HST(23)
        : [rk] "+r"(rk), [n] "+r"(n)
        : [st] "r"(st), [sw] "m"(*(const int8_t(*)[64])SWAP16), [n0] "m"(N0_Q), [n1] "m"(N1_Q)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
          "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28",
          "xmm29", "xmm30", "xmm31");
}

/* rkh[i] / rkh[32 + i]: bytes (0,2) / (1,3) of A1-form round key i, twice. */
Z_INLINE void hround_keys(uint32_t rkh[64], const uint32_t rkx[32])
{
    int h;
    for (h = 0; h < 2; h++) {
        __m512i v = LDZ(rkx + 16 * h);
        _mm512_storeu_si512((void *)(rkh + 16 * h), _mm512_shuffle_epi8(v, LDZ(REP02)));
        _mm512_storeu_si512((void *)(rkh + 32 + 16 * h), _mm512_shuffle_epi8(v, LDZ(REP13)));
    }
}

/* IV words 0-2 in A1 form, split into E (bytes 0, 2) and O (bytes 1, 3)
 * for hctr96. The IV is not secret. */
Z_INLINE void hctr_iv(const unsigned char ivec[16], __m512i ew[3], __m512i ow[3])
{
    uint8_t wb[16];
    int j;
    _mm_storeu_si128((__m128i *)(void *)wb,
                     _mm_gf2p8affine_epi64_epi8(LDX(ivec), _mm_set1_epi64x(A1_MAT), 0));
    for (j = 0; j < 3; j++) {
        ew[j] = _mm512_set1_epi16((short)(wb[4 * j] | (wb[4 * j + 2] << 8)));
        ow[j] = _mm512_set1_epi16((short)(wb[4 * j + 1] | (wb[4 * j + 3] << 8)));
    }
}

/* 96 counter blocks from c: encrypt, xor into in, store at out. Group g is
 * two word-sliced 16-block halves A (blocks 32g..) and B (32g+16..), laid
 * out as in zcounters; E/O take A's elements in the low and B's in the high
 * 8 bytes of each lane. ew/ow are the IV words 0-2 in E/O form. */
Z_INLINE void hctr96(const uint32_t rkh[64], const __m512i ew[3], const __m512i ow[3], uint32_t c,
                     const uint8_t *in, uint8_t *out)
{
    const __m512i offs = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i a1 = _mm512_set1_epi64(A1_MAT), a1inv = _mm512_set1_epi64(A1INV_MAT);
    __m512i st[8 * H_G]; /* st[8g + k]: E of word k of group g; st[8g + 4 + k]: its O */
    int g, k;
    for (g = 0; g < H_G; g++) {
        uint32_t cg = c + 32 * (uint32_t)g;
        __m512i ca = _mm512_add_epi32(_mm512_set1_epi32((int)cg), offs);
        __m512i cb = _mm512_add_epi32(_mm512_set1_epi32((int)(cg + 16)), offs);
        ca = _mm512_shuffle_epi8(ca, LDZ(SPLIT_LE));
        cb = _mm512_shuffle_epi8(cb, LDZ(SPLIT_LE));
        for (k = 0; k < 3; k++)
            st[8 * g + k] = ew[k], st[8 * g + 4 + k] = ow[k];
        st[8 * g + 3] = _mm512_gf2p8affine_epi64_epi8(_mm512_unpacklo_epi64(ca, cb), a1, 0);
        st[8 * g + 7] = _mm512_gf2p8affine_epi64_epi8(_mm512_unpackhi_epi64(ca, cb), a1, 0);
    }
    hrounds(st, rkh);
    for (g = 0; g < H_G; g++) {
        __m512i va[4], vb[4];
        for (k = 0; k < 4; k++) { /* output word k is X[3 - k] */
            __m512i ek = _mm512_gf2p8affine_epi64_epi8(st[8 * g + 3 - k], a1inv, 0);
            __m512i ok = _mm512_gf2p8affine_epi64_epi8(st[8 * g + 7 - k], a1inv, 0);
            va[k] = _mm512_unpacklo_epi8(ek, ok);
            vb[k] = _mm512_unpackhi_epi8(ek, ok);
        }
        ztranspose(va);
        ztranspose(vb);
        for (k = 0; k < 4; k++) {
            const uint8_t *ip = in + 512 * g + 64 * k;
            uint8_t *op = out + 512 * g + 64 * k;
            _mm512_storeu_si512((void *)op, _mm512_xor_si512(va[k], LDZ(ip)));
            _mm512_storeu_si512((void *)(op + 256), _mm512_xor_si512(vb[k], LDZ(ip + 256)));
        }
    }
    wipe(st, sizeof(st));
}

#endif /* __x86_64__ */

/* block128_f over kmsenv_sm4 (gcm128's E_K(0), E_K(J0) and partial tails). */
void kmsenv__sm4_gfni512_block(const unsigned char in[16], unsigned char out[16], const void *key)
{
    one_block(((const kmsenv_sm4 *)key)->rk, in, out);
}

/* CTR without the half-sliced loop: up to 16 blocks on ymm, else
 * word-sliced groups. Its own (noinline) function so that its frame stays
 * small for the GCM kernel's rest, whose stack is scrubbed afterwards. */
__attribute__((noinline)) Z_TARGET static void zctr(const uint32_t rk[32], const unsigned char *in,
                                                    unsigned char *out, size_t blocks,
                                                    const unsigned char ivec[16])
{
    uint32_t rkx[32];
    uint32_t c = be32(ivec + 12);
    __m512i w[3];
    int j;
    if (blocks <= 16) {
        yctr(rk, in, out, blocks, ivec);
        return;
    }
    zround_keys(rkx, rk);
    for (j = 0; j < 3; j++)
        w[j] = _mm512_gf2p8affine_epi64_epi8(_mm512_set1_epi32((int)mem32(ivec + 4 * j)),
                                             _mm512_set1_epi64(A1_MAT), 0);
    for (; blocks >= 16 * Z_G; blocks -= 16 * Z_G, in += 256 * Z_G, out += 256 * Z_G, c += 16 * Z_G)
        zctr_groups(rkx, w, c, in, out, 16 * Z_G, Z_G);
    if (blocks > 48)
        zctr_groups(rkx, w, c, in, out, blocks, 4);
    else if (blocks > 32)
        zctr_groups(rkx, w, c, in, out, blocks, 3);
    else if (blocks > 16)
        zctr_groups(rkx, w, c, in, out, blocks, 2);
    else if (blocks > 0) { /* latency-bound: ymm, as for short inputs */
        uint8_t ctr[16];
        memcpy(ctr, ivec, 12);
        ctr[12] = (uint8_t)(c >> 24), ctr[13] = (uint8_t)(c >> 16);
        ctr[14] = (uint8_t)(c >> 8), ctr[15] = (uint8_t)c;
        yctr(rk, in, out, blocks, ctr);
    }
    wipe(rkx, sizeof(rkx));
}

/* ctr128_f for gcm128: ivec is read only, the low 32 bits wrap mod 2^32.
 * From 96 blocks on, the half-sliced loop; the rest through zctr. */
Z_TARGET void kmsenv__sm4_gfni512_ctr32(const unsigned char *in, unsigned char *out, size_t blocks,
                                        const void *key, const unsigned char ivec[16])
{
    const uint32_t *rk = ((const kmsenv_sm4 *)key)->rk;
#if defined(__x86_64__)
    if (blocks >= 32 * H_G) {
        uint32_t rkx[32], rkh[64];
        uint32_t c = be32(ivec + 12);
        uint8_t ctr[16];
        __m512i ew[3], ow[3];
        zround_keys(rkx, rk);
        hctr_iv(ivec, ew, ow);
        hround_keys(rkh, rkx);
        for (; blocks >= 32 * H_G; blocks -= 32 * H_G, in += 512 * H_G, out += 512 * H_G, c += 32 * H_G)
            hctr96(rkh, ew, ow, c, in, out);
        wipe(rkh, sizeof(rkh));
        wipe(rkx, sizeof(rkx));
        if (blocks != 0) {
            memcpy(ctr, ivec, 12);
            ctr[12] = (uint8_t)(c >> 24), ctr[13] = (uint8_t)(c >> 16);
            ctr[14] = (uint8_t)(c >> 8), ctr[15] = (uint8_t)c;
            zctr(rk, in, out, blocks, ctr);
        }
        return;
    }
#endif
    zctr(rk, in, out, blocks, ivec);
}

/* ---- gfni256: ymm, VEX only -------------------------------------------- */

/* Groups of 8 blocks interleaved: 3 (24 blocks) spill a little, but 2 leave
 * the round's latency uncovered (measured 1.09 against 1.35 GB/s). */
#define Y_G 3
#define LDY(t) _mm256_loadu_si256((const __m256i *)(const void *)(t))

/* The ymm round's constants. AVX2 has 16 registers, which the groups' state
 * and temporaries fill, so the matrices and shuffles are read as memory
 * operands; yconst() hides the tables' addresses from the optimiser at
 * every round so it does not hoist them into registers (and spill state). */
#define Q4(x) (int64_t)(x), (int64_t)(x), (int64_t)(x), (int64_t)(x)
static const int64_t YMAT[3 * 4] = {Q4(N0_MAT), Q4(N1_MAT), Q4(N3_MAT)};

static const void *yconst(const void *t)
{
    __asm__ __volatile__("" : "+r"(t));
    return t;
}

Y_INLINE __m256i yround(__m256i x0, __m256i y)
{
    const int64_t *m = (const int64_t *)yconst(YMAT);
    const int8_t *r8 = (const int8_t *)yconst(ROL8_BE), *r16 = (const int8_t *)yconst(ROL16_BE);
    const int8_t *r24 = (const int8_t *)yconst(ROL24_BE);
    __m256i p0 = _mm256_gf2p8affineinv_epi64_epi8(y, LDY(m), N0_IMM);
    __m256i p1 = _mm256_gf2p8affineinv_epi64_epi8(y, LDY(m + 4), N1_IMM);
    __m256i p3 = _mm256_gf2p8affineinv_epi64_epi8(y, LDY(m + 8), N3_IMM);
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(x0, p0), _mm256_shuffle_epi8(p1, LDY(r8)));
    __m256i b = _mm256_xor_si256(_mm256_shuffle_epi8(p1, LDY(r16)), _mm256_shuffle_epi8(p3, LDY(r24)));
    return _mm256_xor_si256(a, b);
}

/* Round key i broadcast, loaded where it is used (see yconst). */
Y_INLINE __m256i yrk(const uint32_t *rkx, int i)
{
    return _mm256_set1_epi32(((const int *)yconst(rkx))[i]);
}

Y_INLINE __m256i ykeep(__m256i v)
{
    __asm__("" : "+x"(v));
    return v;
}

/* The latency-ordered round of xround (see there) on ymm: for one or two
 * groups the round's chain, not the ports, sets the pace. */
Y_INLINE __m256i yround_ll(__m256i *xi, __m256i y, __m256i v)
{
    const int64_t *m = (const int64_t *)yconst(YMAT);
    const int8_t *r8 = (const int8_t *)yconst(ROL8_BE), *r16 = (const int8_t *)yconst(ROL16_BE);
    const int8_t *r24 = (const int8_t *)yconst(ROL24_BE);
    __m256i p1 = _mm256_gf2p8affineinv_epi64_epi8(y, LDY(m + 4), N1_IMM);
    __m256i p3 = _mm256_gf2p8affineinv_epi64_epi8(y, LDY(m + 8), N3_IMM);
    __m256i p0 = _mm256_gf2p8affineinv_epi64_epi8(y, LDY(m), N0_IMM);
    __m256i w = ykeep(_mm256_xor_si256(v, *xi));
    __m256i d = ykeep(_mm256_xor_si256(_mm256_shuffle_epi8(p1, LDY(r8)),
                                       _mm256_shuffle_epi8(p1, LDY(r16))));
    __m256i e = ykeep(_mm256_xor_si256(_mm256_xor_si256(w, p0), _mm256_shuffle_epi8(p3, LDY(r24))));
    __m256i ny = ykeep(_mm256_xor_si256(d, e));
    *xi = _mm256_xor_si256(ny, v);
    return ny;
}

/* 32 rounds on one or two groups, latency-ordered; rkx[32] must be 0. */
Y_INLINE void yrounds_ll(__m256i x[][4], int groups, const uint32_t rkx[33])
{
    __m256i y[2];
    int i, j, g;
    for (g = 0; g < groups; g++)
        y[g] = _mm256_xor_si256(_mm256_xor_si256(x[g][1], x[g][2]), _mm256_xor_si256(x[g][3], yrk(rkx, 0)));
    for (i = 0; i < 32; i += 4)
#pragma GCC unroll 4
        for (j = 0; j < 4; j++)
#pragma GCC unroll 2
            for (g = 0; g < groups; g++)
                y[g] = yround_ll(&x[g][j], y[g],
                                 _mm256_xor_si256(_mm256_xor_si256(x[g][(j + 2) & 3], x[g][(j + 3) & 3]),
                                                  yrk(rkx, i + j + 1)));
}

Y_INLINE void yrounds(__m256i x[][4], int groups, const uint32_t rkx[32])
{
    int i, g;
    for (i = 0; i < 32; i += 4) {
        __m256i u[Y_G];
#pragma GCC unroll 4
        for (g = 0; g < groups; g++) {
            u[g] = _mm256_xor_si256(x[g][2], x[g][3]);
            x[g][0] = yround(x[g][0], _mm256_xor_si256(_mm256_xor_si256(x[g][1], yrk(rkx, i)), u[g]));
        }
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            x[g][1] = yround(x[g][1], _mm256_xor_si256(_mm256_xor_si256(u[g], yrk(rkx, i + 1)), x[g][0]));
#pragma GCC unroll 4
        for (g = 0; g < groups; g++) {
            u[g] = _mm256_xor_si256(x[g][0], x[g][1]);
            x[g][2] = yround(x[g][2], _mm256_xor_si256(_mm256_xor_si256(x[g][3], yrk(rkx, i + 2)), u[g]));
        }
#pragma GCC unroll 4
        for (g = 0; g < groups; g++)
            x[g][3] = yround(x[g][3], _mm256_xor_si256(_mm256_xor_si256(u[g], yrk(rkx, i + 3)), x[g][2]));
    }
}

/* The 32 round keys in A1 form (A1 * rk ^ 0x3e on their memory bytes), and
 * rkx[32] = 0 for the latency-ordered rounds' look-ahead. */
Y_INLINE void yround_keys(uint32_t rkx[33], const uint32_t rk[32])
{
    int h;
    for (h = 0; h < 4; h++) {
        __m256i v = _mm256_shuffle_epi8(LDY(rk + 8 * h), LDY(BSWAP32));
        v = _mm256_gf2p8affine_epi64_epi8(v, _mm256_set1_epi64x(A1_MAT), A1_IMM);
        _mm256_storeu_si256((__m256i *)(void *)(rkx + 8 * h), v);
    }
    rkx[32] = 0;
}

Y_INLINE void ytranspose(__m256i v[4])
{
    __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    v[0] = _mm256_unpacklo_epi64(t0, t2);
    v[1] = _mm256_unpackhi_epi64(t0, t2);
    v[2] = _mm256_unpacklo_epi64(t1, t3);
    v[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* Dword mask of register j (blocks 2j, 2j+1) of a group holding n blocks. */
Y_INLINE __m256i ymask(size_t n, int j)
{
    size_t have = n > (size_t)(2 * j) ? n - (size_t)(2 * j) : 0;
    long long hi = have >= 2 ? -1 : 0; /* lane 1 holds block 2j+1 */
    return _mm256_set_epi64x(hi, hi, -1, -1);
}

Y_INLINE void yload(__m256i v[4], const uint8_t *p, size_t n)
{
    int j;
    for (j = 0; j < 4; j++) {
        if (n >= 8)
            v[j] = LDY(p + 32 * j);
        else if (n > (size_t)(2 * j))
            v[j] = _mm256_maskload_epi32((const int *)(const void *)(p + 32 * j), ymask(n, j));
        else
            v[j] = _mm256_setzero_si256();
    }
}

Y_INLINE void ystore(uint8_t *p, const __m256i v[4], size_t n)
{
    int j;
    for (j = 0; j < 4; j++) {
        if (n >= 8)
            _mm256_storeu_si256((__m256i *)(void *)(p + 32 * j), v[j]);
        else if (n > (size_t)(2 * j))
            _mm256_maskstore_epi32((int *)(void *)(p + 32 * j), ymask(n, j), v[j]);
    }
}

Y_INLINE void yslice(__m256i x[4])
{
    int j;
    ytranspose(x);
    for (j = 0; j < 4; j++)
        x[j] = _mm256_gf2p8affine_epi64_epi8(x[j], _mm256_set1_epi64x(A1_MAT), 0);
}

Y_INLINE void yunslice(const __m256i x[4], __m256i o[4])
{
    int j;
    for (j = 0; j < 4; j++)
        o[j] = _mm256_gf2p8affine_epi64_epi8(x[3 - j], _mm256_set1_epi64x(A1INV_MAT), 0);
    ytranspose(o);
}

Y_INLINE void ycounters(__m256i x[4], const __m256i w[3], uint32_t c)
{
    const __m256i offs = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256i v = _mm256_add_epi32(_mm256_set1_epi32((int)c), offs);
    x[0] = w[0], x[1] = w[1], x[2] = w[2];
    v = _mm256_shuffle_epi8(v, LDY(BSWAP32));
    x[3] = _mm256_gf2p8affine_epi64_epi8(v, _mm256_set1_epi64x(A1_MAT), 0);
}

Y_INLINE void yecb_groups(const uint32_t rkx[33], const uint8_t *in, uint8_t *out, size_t blocks,
                          int groups)
{
    __m256i x[Y_G][4], o[4];
    int g;
    for (g = 0; g < groups; g++) {
        yload(x[g], in + 128 * g, blocks - 8 * (size_t)g);
        yslice(x[g]);
    }
    if (groups <= 2)
        yrounds_ll(x, groups, rkx);
    else
        yrounds(x, groups, rkx);
    for (g = 0; g < groups; g++) {
        yunslice(x[g], o);
        ystore(out + 128 * g, o, blocks - 8 * (size_t)g);
    }
}

/* ECB on ymm; also the zmm kernel's path for up to 16 blocks, which are
 * latency-bound and gain nothing from zmm (whose GFNI has one port). */
Y_TARGET static void yecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks)
{
    uint32_t rkx[33];
    yround_keys(rkx, rk);
    for (; blocks >= 8 * Y_G; blocks -= 8 * Y_G, in += 128 * Y_G, out += 128 * Y_G)
        yecb_groups(rkx, in, out, 8 * Y_G, Y_G);
    if (blocks > 16)
        yecb_groups(rkx, in, out, blocks, 3);
    else if (blocks > 8)
        yecb_groups(rkx, in, out, blocks, 2);
    else if (blocks > 0)
        yecb_groups(rkx, in, out, blocks, 1);
    wipe(rkx, sizeof(rkx));
}

Y_INLINE void yctr_groups(const uint32_t rkx[33], const __m256i w[3], uint32_t c,
                          const uint8_t *in, uint8_t *out, size_t blocks, int groups)
{
    __m256i x[Y_G][4], o[4], d[4];
    int g, j;
    for (g = 0; g < groups; g++)
        ycounters(x[g], w, c + 8 * (uint32_t)g);
    if (groups <= 2)
        yrounds_ll(x, groups, rkx);
    else
        yrounds(x, groups, rkx);
    for (g = 0; g < groups; g++) {
        size_t n = blocks - 8 * (size_t)g;
        yunslice(x[g], o);
        yload(d, in + 128 * g, n);
        for (j = 0; j < 4; j++)
            o[j] = _mm256_xor_si256(o[j], d[j]);
        ystore(out + 128 * g, o, n);
    }
}

Y_TARGET void kmsenv__sm4_gfni256_ecb(const uint32_t rk[32], const uint8_t *in, uint8_t *out,
                                      size_t blocks)
{
    yecb(rk, in, out, blocks);
}

void kmsenv__sm4_gfni256_block(const unsigned char in[16], unsigned char out[16], const void *key)
{
    one_block(((const kmsenv_sm4 *)key)->rk, in, out);
}

/* CTR on ymm (see yecb for its use by the zmm kernel). */
Y_TARGET static void yctr(const uint32_t rk[32], const unsigned char *in, unsigned char *out,
                          size_t blocks, const unsigned char ivec[16])
{
    uint32_t rkx[33];
    uint32_t c = be32(ivec + 12);
    __m256i w[3];
    int j;
    if (blocks == 0)
        return;
    yround_keys(rkx, rk);
    for (j = 0; j < 3; j++)
        w[j] = _mm256_gf2p8affine_epi64_epi8(_mm256_set1_epi32((int)mem32(ivec + 4 * j)),
                                             _mm256_set1_epi64x(A1_MAT), 0);
    for (; blocks >= 8 * Y_G; blocks -= 8 * Y_G, in += 128 * Y_G, out += 128 * Y_G, c += 8 * Y_G)
        yctr_groups(rkx, w, c, in, out, 8 * Y_G, Y_G);
    if (blocks > 16)
        yctr_groups(rkx, w, c, in, out, blocks, 3);
    else if (blocks > 8)
        yctr_groups(rkx, w, c, in, out, blocks, 2);
    else if (blocks > 0)
        yctr_groups(rkx, w, c, in, out, blocks, 1);
    wipe(rkx, sizeof(rkx));
}

Y_TARGET void kmsenv__sm4_gfni256_ctr32(const unsigned char *in, unsigned char *out, size_t blocks,
                                        const void *key, const unsigned char ivec[16])
{
    yctr(((const kmsenv_sm4 *)key)->rk, in, out, blocks, ivec);
}

/* ---- gfni512-vpclmul: SM4-GCM with the zmm GHASH ---------------------- */

/*
 * Why: through gcm128, SM4-GCM runs ctr32 over the whole message and then
 * OpenSSL 3.0's xmm GHASH (gcm_ghash_avx, 6-8 GB/s) over it again, a serial
 * second pass that held gfni512's GCM near 2.1 GB/s while its CTR makes
 * 2.6-3.4 (issue 17). Here the message goes through in 96-block (1.5 KiB)
 * pieces: hctr96 (the GFNI-bound loop above) encrypts a piece and the zmm
 * GHASH of ghash512.h (VPCLMULQDQ, the code the AES-GCM zmm kernel uses)
 * hashes it while it is in L1. GFNI and VPCLMULQDQ issue on different
 * ports, and a piece's GHASH (six 16-block steps, about 200 instructions
 * against about 1700 for its rounds) is short enough to run out of order
 * beside the next piece's rounds. Sealing hashes a piece after encrypting
 * it, opening before decrypting it, so in == out works. The rest after the
 * pieces (under 96 blocks) goes through zctr (gfni512's ctr32 without the
 * half-sliced loop), a ragged last block through a 16-byte stack copy, and
 * is hashed in one ghash_bytes call (masked loads: nothing outside the
 * caller's buffers is read). Messages under one piece: gcm_short.
 *
 * GHASH is standard GCM in POLYVAL form: AAD and the rest hashed with
 * H'^16..H'^1 per 16-block step (ghash_bytes, shift 0), the pieces on the
 * 4-lane state of aes_gcm_vaes512.c (ghash_piece); then the lengths block
 * XORed in and one more multiply by H', and the tag = bswap of that ^
 * E_K(J0). With pieces, E_K(J0) is one_block's latency chain, independent
 * of the rest, so it overlaps the AAD and the first piece.
 *
 * Measured (Sapphire-Rapids-class Xeon, 2.2 GHz, a C harness calling both
 * paths on one key in one process, interleaved rounds, medians, a loaded
 * machine): against gfni512 over gcm128, 1 MiB and 16 KiB 1.15-1.3x (1 MiB
 * seal 2.7-3.0 GB/s), 64 B 1.4-1.5x, 1 KiB 1.0-1.1x. GCM runs at 0.8-0.87x
 * of gfni512's bare CTR at 16 KiB (the GHASH's VPCLMULQDQ and shuffles
 * share port 5 with the rounds' shuffles), near 1x at 1 MiB. Tag-only
 * messages (no data) cost ~25 ns more (the scrub); a key costs ~250 ns
 * more (E_K(0) and the 17 powers).
 *
 * Constant time as the rest of this file and ghash512.h: lengths and
 * addresses decide every branch and mask. Secrets in memory: the power
 * table (per key, in the kmsenv_sm4, cleansed with the key), E_K(J0) and the
 * last partial block on the stack (overwritten here), and whatever the
 * compiler spills: the public entry points run ghash512_scrub() after each
 * kernel, which zeroes G512_SCRUB_BYTES of stack where the kernel's frames
 * lay, and the vector registers. The frames were kept small for that (the
 * pieces' loop and zctr are noinline, each with its own frame): with GCC 12
 * -O3 (-fstack-usage) the deepest chain, kernel -> gcm_ctr_rest -> zctr ->
 * yctr, is 4.1 KiB with return addresses; the pieces' chain 3.5 KiB;
 * kernel -> gcm_short -> zkeystream 4.4 KiB.
 * open() compares tags with CRYPTO_memcmp; kmsenv_gcm_open wipes out on a
 * mismatch.
 */
#define ZG_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,gfni,avx2,pclmul,vpclmulqdq")))
#define G512_INLINE static inline __attribute__((always_inline)) ZG_TARGET
#define G512_TARGET ZG_TARGET
#define G512_SCRUB_BYTES 5120
#include "ghash512.h"

KMSENV_STATIC_ASSERT(HPOW_ROWS == KMSENV_SM4_HPOW_ROWS, "kmsenv_sm4.hpow must fit ghash512.h's table");

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* The blocks from counter c on (fewer than 96 unless the build has no
 * half-sliced loop): whole blocks through zctr, a ragged end through a
 * zero-padded stack block. ctrb holds the IV in bytes 0-11. */
ZG_TARGET static void gcm_ctr_rest(const kmsenv_sm4 *s, uint8_t ctrb[16], uint32_t c,
                                   const uint8_t *in, uint8_t *out, size_t n)
{
    size_t whole = n / 16, rest = n % 16;
    put_be32(ctrb + 12, c);
    if (whole != 0)
        zctr(s->rk, in, out, whole, ctrb);
    if (rest != 0) {
        uint8_t last[16] = {0};
        memcpy(last, in + 16 * whole, rest);
        put_be32(ctrb + 12, c + (uint32_t)whole); /* mod 2^32, as GCM's inc32 */
        zctr(s->rk, last, last, 1, ctrb);
        memcpy(out + 16 * whole, last, rest);
        wipe(last, sizeof(last));
    }
}

#if defined(__x86_64__)
/* The 96-block pieces (n: a multiple of 1536): CTR from counter c and GHASH
 * of the ciphertext (the input when decrypting, hashed first). noinline:
 * hctr96's state array makes its frame the big one, and it stays out of
 * the short messages' path. */
/*
 * GHASH of one piece (1536 bytes, six 16-block steps) on the 4-lane state v
 * of aes_gcm_vaes512.c's steps: lane i stands for its sum times H'^i, so a
 * step multiplies all lanes of block vector j by the same power H'^(16-4j)
 * (hb) and reduces lane by lane, with no lane sum (three fewer shuffles and
 * a shorter chain per step). The message's last step (last != 0) takes the
 * true powers instead and sums the lanes: then lane 0 holds the accumulator
 * and the other lanes are zero.
 */
G512_INLINE __m512i ghash_piece(const uint8_t (*hpow)[16], const __m512i hb[4], const uint8_t *p,
                                __m512i v, const int last)
{
    const __m512i bs = bswap_mask();
    __m512i x[4], lo, mid, hi;
    int k, j;
    for (k = 0; k < 6; k++, p += 256) {
        for (j = 0; j < 4; j++)
            x[j] = _mm512_shuffle_epi8(load512(p + 64 * j), bs);
        x[0] = _mm512_xor_si512(x[0], v);
        if (last && k == 5)
            return zext512(ghash_blocks(hpow, _mm_setzero_si128(), x, 4, 16, 0));
        lo = mid = hi = _mm512_setzero_si512();
        for (j = 0; j < 4; j++)
            mul_acc(x[j], hb[j], &lo, &mid, &hi);
        v = reduce_lanes(lo, mid, hi);
    }
    return v;
}

G512_INLINE __m128i gcm_pieces(const kmsenv_sm4 *s, __m128i acc, const uint8_t ctrb[16], uint32_t c,
                               const uint8_t *in, uint8_t *out, size_t n, const int decrypt)
{
    uint32_t rkx[32], rkh[64];
    __m512i ew[3], ow[3], hb[4], v = zext512(acc);
    int j;
    zround_keys(rkx, s->rk);
    hround_keys(rkh, rkx);
    hctr_iv(ctrb, ew, ow);
    for (j = 0; j < 4; j++)
        hb[j] = _mm512_broadcast_i32x4(LDX(s->hpow[HIDX(16 - 4 * j)]));
    for (; n != 0; n -= 512 * H_G, in += 512 * H_G, out += 512 * H_G, c += 32 * H_G) {
        if (decrypt)
            v = n == 512 * H_G ? ghash_piece(s->hpow, hb, in, v, 1) : ghash_piece(s->hpow, hb, in, v, 0);
        hctr96(rkh, ew, ow, c, in, out);
        if (!decrypt)
            v = n == 512 * H_G ? ghash_piece(s->hpow, hb, out, v, 1) : ghash_piece(s->hpow, hb, out, v, 0);
    }
    wipe(rkx, sizeof(rkx));
    wipe(rkh, sizeof(rkh));
    return _mm512_castsi512_si128(v);
}

/* One instance per direction, so the direction tests fold away. */
__attribute__((noinline)) ZG_TARGET static __m128i gcm_pieces_seal(const kmsenv_sm4 *s, __m128i acc,
                                                                  const uint8_t ctrb[16], uint32_t c,
                                                                  const uint8_t *in, uint8_t *out,
                                                                  size_t n)
{
    return gcm_pieces(s, acc, ctrb, c, in, out, n, 0);
}

__attribute__((noinline)) ZG_TARGET static __m128i gcm_pieces_open(const kmsenv_sm4 *s, __m128i acc,
                                                                  const uint8_t ctrb[16], uint32_t c,
                                                                  const uint8_t *in, uint8_t *out,
                                                                  size_t n)
{
    return gcm_pieces(s, acc, ctrb, c, in, out, n, 1);
}
#endif

/*
 * Messages under one piece (SHORT_MAX bytes at most): J0 and the data's
 * counters are consecutive (1, 2, ...), so E_K(J0) and the keystream come
 * from one CTR pass over zero blocks from counter 1, instead of one_block's
 * latency chain (about 200 ns) followed by the data's: measured against
 * that, 256 B 1.6x, 512 B 1.2x, 1500 B 1.4x, 1 KiB within 5%. The keystream goes to a stack
 * buffer (overwritten here) and is XORed in with masked loads and stores
 * (nothing outside in + n or out + n is touched; in == out works). More
 * than 4 groups are split into two balanced calls, so that no lone group
 * (a bare latency chain) is left at the end. noinline: its frame holds the
 * keystream buffer, beside the other paths' frames rather than on top.
 */
#if defined(__x86_64__)
#define SHORT_BLOCKS (32 * H_G + 1) /* J0 and up to one piece less a byte */
#define SHORT_MAX (16 * (SHORT_BLOCKS - 1) - 1)
static const uint8_t ZERO_BLOCKS[16 * SHORT_BLOCKS];

/* Keystream blocks [c, c + blocks) into ks, in `groups` (1..4) groups.
 * noinline: the four instances' state stays out of gcm_short's frame. */
__attribute__((noinline)) Z_TARGET static void zkeystream(const uint32_t rkx[32], const __m512i w[3], uint32_t c, uint8_t *ks,
                         size_t blocks, size_t groups)
{
    if (groups >= 4)
        zctr_groups(rkx, w, c, ZERO_BLOCKS, ks, blocks, 4);
    else if (groups == 3)
        zctr_groups(rkx, w, c, ZERO_BLOCKS, ks, blocks, 3);
    else if (groups == 2)
        zctr_groups(rkx, w, c, ZERO_BLOCKS, ks, blocks, 2);
    else
        zctr_groups(rkx, w, c, ZERO_BLOCKS, ks, blocks, 1);
}

__attribute__((noinline)) ZG_TARGET static void gcm_short(const kmsenv_sm4 *s, const uint8_t j0[16],
                                                         const uint8_t *in, size_t n, uint8_t *out,
                                                         uint8_t ej0[16])
{
    uint8_t ks[16 * SHORT_BLOCKS];
    size_t t = 1 + (n + 15) / 16, j;
    if (t <= 16) {
        yctr(s->rk, ZERO_BLOCKS, ks, t, j0);
    } else {
        uint32_t rkx[32];
        size_t g = (t + 15) / 16, ga = g <= 4 ? g : (g + 1) / 2;
        __m512i w[3];
        zround_keys(rkx, s->rk);
        for (j = 0; j < 3; j++)
            w[j] = _mm512_gf2p8affine_epi64_epi8(_mm512_set1_epi32((int)mem32(j0 + 4 * j)),
                                                 _mm512_set1_epi64(A1_MAT), 0);
        zkeystream(rkx, w, 1, ks, g <= 4 ? t : 16 * ga, ga);
        if (g > 4)
            zkeystream(rkx, w, 1 + 16 * (uint32_t)ga, ks + 256 * ga, t - 16 * ga, g - ga);
        wipe(rkx, sizeof(rkx));
    }
    for (j = 0; 64 * j < n; j++) {
        __mmask64 k = first_bytes(n - 64 * j);
        __m512i d = _mm512_maskz_loadu_epi8(k, in + 64 * j);
        __m512i e = _mm512_maskz_loadu_epi8(k, ks + 16 + 64 * j);
        _mm512_mask_storeu_epi8(out + 64 * j, k, _mm512_xor_si512(d, e));
    }
    memcpy(ej0, ks, 16);
    wipe(ks, 16 * t);
}
#endif

G512_INLINE void gcm_crypt(const kmsenv_sm4 *s, const uint8_t iv[12], const uint8_t *aad,
                           size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                           uint8_t tag[16], const int decrypt)
{
    const uint64_t aad_bits = (uint64_t)aadlen * 8, in_bits = (uint64_t)inlen * 8;
    uint8_t ctrb[16], ej0[16];
    __m128i acc = _mm_setzero_si128();
    uint32_t c = 2; /* the data starts at counter 2 */

    memcpy(ctrb, iv, 12);
    put_be32(ctrb + 12, 1);
#if defined(__x86_64__)
    if (inlen != 0 && inlen <= SHORT_MAX) { /* no data: one_block's chain is shorter */
        if (aadlen != 0)
            acc = ghash_bytes(s->hpow, acc, aad, aadlen);
        if (decrypt)
            acc = ghash_bytes(s->hpow, acc, in, inlen);
        gcm_short(s, ctrb, in, inlen, out, ej0);
        if (!decrypt)
            acc = ghash_bytes(s->hpow, acc, out, inlen);
        inlen = 0;
    } else
#endif
    {
        one_block(s->rk, ctrb, ej0); /* E_K(J0) */
        if (aadlen != 0)
            acc = ghash_bytes(s->hpow, acc, aad, aadlen);
    }
#if defined(__x86_64__)
    if (inlen >= 512 * H_G) {
        size_t n = inlen - inlen % (512 * H_G);
        acc = decrypt ? gcm_pieces_open(s, acc, ctrb, c, in, out, n)
                      : gcm_pieces_seal(s, acc, ctrb, c, in, out, n);
        c += (uint32_t)(n / 16); /* mod 2^32 */
        in += n, out += n, inlen -= n;
    }
#endif
    if (inlen != 0) {
        if (decrypt)
            acc = ghash_bytes(s->hpow, acc, in, inlen);
        gcm_ctr_rest(s, ctrb, c, in, out, inlen);
        if (!decrypt)
            acc = ghash_bytes(s->hpow, acc, out, inlen);
    }
    /* the lengths block (byte reversed), then the last multiply by H' */
    acc = _mm_xor_si128(acc, _mm_set_epi64x((long long)aad_bits, (long long)in_bits));
    acc = dot(acc, LDX(s->hpow[HIDX(1)]));
    _mm_storeu_si128((__m128i *)(void *)tag, _mm_xor_si128(bswap128(acc), LDX(ej0)));
    wipe(ej0, sizeof(ej0));
}

/* noinline: their frames lie where the ghash512_scrub() after them runs. */
__attribute__((noinline)) ZG_TARGET static void gcm_seal_kernel(
    const kmsenv_sm4 *s, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
    const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16])
{
    gcm_crypt(s, iv, aad, aadlen, in, inlen, out, tag, 0);
}

__attribute__((noinline)) ZG_TARGET static void gcm_open_kernel(
    const kmsenv_sm4 *s, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
    const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[16])
{
    gcm_crypt(s, iv, aad, aadlen, in, inlen, out, tag, 1);
}

/* H = E_K(0^128) and its power table; rows past H'^1 zeroed. */
__attribute__((noinline)) ZG_TARGET static void gcm_init_kernel(kmsenv_sm4 *s)
{
    uint8_t h[16] = {0};
    one_block(s->rk, h, h);
    ghash_powers(s->hpow, LDX(h));
    memset(s->hpow[HIDX(1) + 1], 0, sizeof(s->hpow) - sizeof(s->hpow[0]) * (HIDX(1) + 1));
    wipe(h, sizeof(h));
}

void kmsenv__sm4_gfni512_gcm_init(kmsenv_sm4 *s)
{
    gcm_init_kernel(s);
    ghash512_scrub();
}

int kmsenv__sm4_gfni512_gcm_seal(const kmsenv_sm4 *s, const uint8_t iv[12], const uint8_t *aad,
                                 size_t aadlen, const uint8_t *in, size_t inlen, uint8_t *out,
                                 uint8_t tag[16])
{
    if ((uint64_t)inlen > KMSENV_GCM_MAX_IN || (uint64_t)aadlen > KMSENV_GCM_MAX_AAD)
        return KMSENV_E_ARG;
    gcm_seal_kernel(s, iv, aad, aadlen, in, inlen, out, tag);
    ghash512_scrub();
    return KMSENV_OK;
}

/* Decrypts into out and verifies; on a mismatch the caller
 * (kmsenv_gcm_open) wipes out, so unverified plaintext never escapes. */
int kmsenv__sm4_gfni512_gcm_open(const kmsenv_sm4 *s, const uint8_t iv[12], const uint8_t *aad,
                                 size_t aadlen, const uint8_t *in, size_t inlen,
                                 const uint8_t tag[16], uint8_t *out)
{
    uint8_t t[16];
    int bad;
    if ((uint64_t)inlen > KMSENV_GCM_MAX_IN || (uint64_t)aadlen > KMSENV_GCM_MAX_AAD)
        return KMSENV_E_ARG;
    gcm_open_kernel(s, iv, aad, aadlen, in, inlen, out, t);
    ghash512_scrub();
    bad = CRYPTO_memcmp(t, tag, 16);
    kmsenv_wipe(t, sizeof(t));
    return bad == 0 ? KMSENV_OK : KMSENV_E_AUTH;
}


#endif /* KMSENV_HAVE_X86_SIMD */
