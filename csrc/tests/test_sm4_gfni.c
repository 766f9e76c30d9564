/*
 * test_sm4_gfni.c: the GFNI SM4 kernels (sm4_gfni.c) against the standard and
 * OpenSSL. Each width (gfni512: AVX-512 + GFNI; gfni256: AVX2 + GFNI) runs
 * only when kmsenv__cpu_simd_features() reports it, else prints SKIP.
 *
 *   - the GFNI constants, emulated in portable C, against the GB/T 32907
 *     S-box table for all 256 inputs (and the table itself against OpenSSL);
 *   - the kernels' own S-boxes on all 256 inputs: through the key schedule
 *     (chosen keys make rk[0] = L'(S(b b b b)) for every byte b) and through
 *     the data path (256 chosen blocks whose first round sees every byte in
 *     every position, against a table-based reference with the same rk);
 *   - GB/T 32907 appendix A (1 and 10^6 encryptions), RFC 8998 A.1 SM4-GCM;
 *   - ECB against EVP SM4-ECB for random keys and 1..300 blocks, the reversed
 *     schedule decrypting, in place;
 *   - ctr32 against EVP SM4-CTR (counters that do not wrap) and against ECB
 *     of the explicit counter blocks across the 32-bit wrap; ivec untouched;
 *     in place; buffers ending at an unmapped page, so a load or store past
 *     the end (the masked tails) faults;
 *   - SM4-GCM through CRYPTO_gcm128 with these kernels against the EVP-backed
 *     functions of sm4.c, seal and open;
 *   - gfni512-vpclmul, the whole-GCM kernel (zmm GHASH, ghash512.h): RFC 8998
 *     A.1; against gcm128 over EVP SM4 for every length 0..1600 and others
 *     to 1 MiB + odd, AAD 0..300, in place both ways, flipped tag /
 *     ciphertext / AAD bits refused; guard pages after input, output and
 *     AAD; over-long lengths refused; the power table zeroed by cleanup;
 *     through the key API (out wiped on a tag mismatch). With a 12-byte IV
 *     the GCM counter starts at 2 and cannot wrap; the wrap of the ctr32
 *     it uses is tested above.
 * Built and run by run_simd.sh (ASan + UBSan, with every csrc .c file).
 */
#if !defined(_WIN32) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS under -std=c11 */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/modes.h>
#include <openssl/rand.h>

#if defined(__unix__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "internal.h"
#include "check.h"
#include "gcm_vectors.h"

static void rnd(void *p, size_t n)
{
    if (n != 0 && RAND_bytes(p, (int)n) != 1)
        abort();
}

#if defined(__GNUC__)
__attribute__((unused)) /* only the SIMD tests draw sizes */
#endif
static size_t rnd_below(size_t n)
{
    uint32_t v;
    rnd(&v, sizeof(v));
    return n ? v % n : 0;
}

#if defined(__GNUC__)
__attribute__((unused))
#endif
static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (p == NULL)
        abort();
    return p;
}

static uint32_t ld32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void st32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint32_t rol(uint32_t x, unsigned n)
{
    return (x << (n & 31)) | (x >> ((32 - n) & 31));
}

/* ---- the standard, independently of the kernels ------------------------ */

/* GB/T 32907-2016 section 6.2.1 (the S-box table). */
static const uint8_t SBOX[256] = {
    0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
    0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
    0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
    0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
    0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
    0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
    0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
    0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
    0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
    0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
    0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
    0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
    0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
    0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
    0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
    0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48};

static uint32_t tau(uint32_t x)
{
    return ((uint32_t)SBOX[x >> 24] << 24) | ((uint32_t)SBOX[(x >> 16) & 0xff] << 16) |
           ((uint32_t)SBOX[(x >> 8) & 0xff] << 8) | SBOX[x & 0xff];
}

static uint32_t lkey(uint32_t b) /* L' of the key schedule */
{
    return b ^ rol(b, 13) ^ rol(b, 23);
}

/* Table-based SM4 with an arbitrary 32-word schedule (test reference only). */
static void ref_sm4(const uint32_t rk[32], const uint8_t in[16], uint8_t out[16])
{
    uint32_t x[36];
    int i;
    for (i = 0; i < 4; i++)
        x[i] = ld32(in + 4 * i);
    for (i = 0; i < 32; i++) {
        uint32_t t = tau(x[i + 1] ^ x[i + 2] ^ x[i + 3] ^ rk[i]);
        x[i + 4] = x[i] ^ t ^ rol(t, 2) ^ rol(t, 10) ^ rol(t, 18) ^ rol(t, 24);
    }
    for (i = 0; i < 4; i++)
        st32(out + 4 * i, x[35 - i]);
}

/* GB/T 32907 section 7.3, from the table: the reference key schedule. */
static void ref_setkey(uint32_t rk[32], const uint8_t key[16])
{
    static const uint32_t fk[4] = {0xa3b1bac6u, 0x56aa3350u, 0x677d9197u, 0xb27022dcu};
    uint32_t k[36];
    int i, j;
    for (i = 0; i < 4; i++)
        k[i] = ld32(key + 4 * i) ^ fk[i];
    for (i = 0; i < 32; i++) {
        uint32_t ck = 0;
        for (j = 0; j < 4; j++)
            ck = (ck << 8) | (uint32_t)(((4 * i + j) * 7) & 0xff);
        k[i + 4] = k[i] ^ lkey(tau(k[i + 1] ^ k[i + 2] ^ k[i + 3] ^ ck));
        rk[i] = k[i + 4];
    }
}

static void evp_one(const EVP_CIPHER *c, int enc, const uint8_t *key, const uint8_t *iv,
                    const uint8_t *in, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int l1 = 0, l2 = 0;
    if (x == NULL || EVP_CipherInit_ex(x, c, NULL, key, iv, enc) != 1 ||
        EVP_CIPHER_CTX_set_padding(x, 0) != 1 || EVP_CipherUpdate(x, out, &l1, in, (int)len) != 1 ||
        EVP_CipherFinal_ex(x, out + l1, &l2) != 1 || (size_t)(l1 + l2) != len)
        abort();
    EVP_CIPHER_CTX_free(x);
}

/* The reference itself (table, key schedule) against OpenSSL, so the checks
 * below that lean on it lean on something verified. */
static void reference_vs_openssl(void)
{
    int t, ok = 1;
    for (t = 0; t < 200; t++) {
        uint8_t key[16], in[16], want[16], got[16];
        uint32_t rk[32];
        rnd(key, 16);
        rnd(in, 16);
        ref_setkey(rk, key);
        ref_sm4(rk, in, got);
        evp_one(EVP_sm4_ecb(), 1, key, NULL, in, 16, want);
        ok &= memcmp(got, want, 16) == 0;
    }
    CHECK(ok);
}

/* ---- the GFNI constants, emulated ---------------------------------------
 * Intel's GF2P8AFFINEQB: output bit i = parity(A.byte[7-i] & x) ^ b.bit i;
 * GF2P8AFFINEINVQB applies it to the inverse in GF(2^8)/0x11B (0 -> 0). The
 * constants are sm4_gfni.c's (see its header for their derivation). */
#define A1_MAT 0x4c287db91a22505dULL
#define A2_MAT 0xf3ab34a974a6b589ULL
#define A1INV_MAT 0xb3a4f5863284728bULL
static const uint64_t N_MAT[4] = {0x040db891e9a481b7ULL, 0x2c020425162040adULL, 0,
                                  0x280fbcb4ff84c11aULL};
static const uint8_t N_IMM[4] = {0x72, 0x63, 0, 0x11};

static uint8_t gf_mul(uint8_t a, uint8_t b)
{
    uint8_t r = 0;
    while (b) {
        if (b & 1)
            r ^= a;
        a = (uint8_t)((a << 1) ^ ((a & 0x80) ? 0x1b : 0));
        b >>= 1;
    }
    return r;
}

static uint8_t gf_inv(uint8_t x)
{
    unsigned y;
    for (y = 1; y < 256 && x != 0; y++)
        if (gf_mul(x, (uint8_t)y) == 1)
            return (uint8_t)y;
    return 0;
}

static uint8_t affine(uint8_t x, uint64_t a, uint8_t b)
{
    uint8_t r = 0;
    int i;
    for (i = 0; i < 8; i++) {
        uint8_t row = (uint8_t)(a >> (8 * (7 - i))), v = row & x, p = 0;
        while (v) {
            p ^= v & 1;
            v >>= 1;
        }
        r |= (uint8_t)(p << i);
    }
    return r ^ b;
}

static void constants_emulated(void)
{
    int x, d, ok_sbox = 1, ok_n = 1, ok_inv = 1;
    for (x = 0; x < 256; x++) {
        uint8_t inv = gf_inv(affine((uint8_t)x, A1_MAT, 0x3e));
        ok_sbox &= affine(inv, A2_MAT, 0xd3) == SBOX[x];
        ok_inv &= affine(affine((uint8_t)x, A1_MAT, 0), A1INV_MAT, 0) == x;
    }
    /* Nd * inv(y) ^ bd = A1 * Md * (A2 * inv(y) ^ 0xd3) for every y, with
     * M0 = 1 ^ SHL2, M1 = SHR6 ^ SHL2, M3 = 1 ^ SHR6 (the split of L). */
    for (d = 0; d < 4; d++) {
        if (d == 2)
            continue;
        for (x = 0; x < 256; x++) {
            uint8_t inv = gf_inv((uint8_t)x), t = affine(inv, A2_MAT, 0xd3), m;
            uint8_t shl2 = (uint8_t)(t << 2), shr6 = (uint8_t)(t >> 6);
            m = d == 0 ? (uint8_t)(t ^ shl2) : d == 1 ? (uint8_t)(shr6 ^ shl2) : (uint8_t)(t ^ shr6);
            ok_n &= affine(inv, N_MAT[d], N_IMM[d]) == affine(m, A1_MAT, 0);
        }
    }
    CHECK(ok_sbox);
    CHECK(ok_inv);
    CHECK(ok_n);
    CHECK((N_MAT[0] ^ N_MAT[1]) == N_MAT[3] && (N_IMM[0] ^ N_IMM[1]) == N_IMM[3]);
    /* and L itself splits that way: for every byte position and value */
    {
        int ok = 1, p;
        for (p = 0; p < 4; p++)
            for (x = 0; x < 256; x++) {
                uint32_t t = (uint32_t)x << (8 * p);
                uint32_t l = t ^ rol(t, 2) ^ rol(t, 10) ^ rol(t, 18) ^ rol(t, 24);
                uint32_t m0 = (uint32_t)(uint8_t)(x ^ (x << 2));
                uint32_t m1 = (uint32_t)(uint8_t)((x >> 6) ^ (x << 2));
                uint32_t m3 = (uint32_t)(uint8_t)(x ^ (x >> 6));
                uint32_t s = rol(m0 << (8 * p), 0) ^ rol(m1 << (8 * p), 8) ^ rol(m1 << (8 * p), 16) ^
                             rol(m3 << (8 * p), 24);
                ok &= s == l;
            }
        CHECK(ok);
    }
}

/* ---- the kernels ------------------------------------------------------- */

#if defined(KMSENV_HAVE_X86_SIMD)

typedef struct {
    const char *name;
    uint32_t need;
    void (*ecb)(const uint32_t rk[32], const uint8_t *in, uint8_t *out, size_t blocks);
    block128_f block;
    ctr128_f ctr32;
} variant;

static const variant VARIANTS[] = {
    {"gfni512", KMSENV_FEATURE_SM4_GFNI, kmsenv__sm4_gfni512_ecb, kmsenv__sm4_gfni512_block,
     kmsenv__sm4_gfni512_ctr32},
    {"gfni256", KMSENV_FEATURE_SM4_GFNI256, kmsenv__sm4_gfni256_ecb, kmsenv__sm4_gfni256_block,
     kmsenv__sm4_gfni256_ctr32},
};

/* The kernel's S-box on all 256 inputs, through the key schedule: with
 * MK0 = FK0, MK1 = w ^ FK1 ^ CK0, MK2 = FK2, MK3 = FK3 the first round key
 * is L'(S(w)); w = bbbb puts b in every position. L' is invertible, so a
 * wrong S-box entry changes rk[0]. */
static void sbox_via_setkey(void)
{
    static const uint32_t fk[4] = {0xa3b1bac6u, 0x56aa3350u, 0x677d9197u, 0xb27022dcu};
    int b, ok = 1;
    for (b = 0; b < 256; b++) {
        uint32_t w = (uint32_t)b * 0x01010101u, rk[32];
        uint8_t key[16];
        st32(key, fk[0]);
        st32(key + 4, w ^ fk[1] ^ 0x00070e15u); /* CK0 */
        st32(key + 8, fk[2]);
        st32(key + 12, fk[3]);
        kmsenv__sm4_gfni_setkey(rk, key);
        ok &= rk[0] == lkey(tau(w));
    }
    CHECK(ok);
}

/* ... and through the data path: a random schedule, and 256 blocks with
 * x2 = x3 = 0, x1 = bbbb ^ rk[0], so round 1 sees every byte value in every
 * position; against the table reference with the same schedule. */
static void sbox_via_rounds(const variant *v)
{
    uint8_t in[256 * 16], out[256 * 16], want[16];
    uint32_t rk[32];
    kmsenv_sm4 s;
    int b, ok = 1, ok1 = 1;
    rnd(rk, sizeof(rk));
    rnd(in, sizeof(in));
    for (b = 0; b < 256; b++) {
        st32(in + 16 * b + 4, (uint32_t)b * 0x01010101u ^ rk[0]);
        memset(in + 16 * b + 8, 0, 8);
    }
    v->ecb(rk, in, out, 256);
    memset(&s, 0, sizeof(s));
    memcpy(s.rk, rk, sizeof(rk));
    for (b = 0; b < 256; b++) {
        uint8_t one[16];
        ref_sm4(rk, in + 16 * b, want);
        ok &= memcmp(out + 16 * b, want, 16) == 0;
        v->block(in + 16 * b, one, &s);
        ok1 &= memcmp(one, want, 16) == 0;
    }
    CHECK(ok);
    CHECK(ok1);
}

static void gbt32907(const variant *v)
{
    uint8_t key[16], want[16], want1m[16], x[16];
    uint32_t rk[32], drk[32];
    kmsenv_sm4 s;
    int i;
    unhex("0123456789abcdeffedcba9876543210", key);
    unhex("681edf34d206965e86b3e94f536e4246", want);
    unhex("595298c7c6fd271f0402f804c33d3f66", want1m);
    kmsenv__sm4_gfni_setkey(rk, key);
    v->ecb(rk, key, x, 1);
    CHECK(memcmp(x, want, 16) == 0);
    for (i = 0; i < 32; i++)
        drk[i] = rk[31 - i];
    v->ecb(drk, x, x, 1);
    CHECK(memcmp(x, key, 16) == 0);
    memset(&s, 0, sizeof(s));
    memcpy(s.rk, rk, sizeof(rk));
    memcpy(x, key, 16);
    for (i = 0; i < 1000000; i++)
        v->block(x, x, &s); /* in place */
    CHECK(memcmp(x, want1m, 16) == 0);
}

/* The key schedule against the standard via OpenSSL: random keys, 1..300
 * blocks (every tail shape of both widths), decrypt with the reversed
 * schedule in place, and unaligned buffers. */
static void ecb_random(const variant *v)
{
    int t, ok = 1;
    for (t = 0; t < 400; t++) {
        size_t blocks = t < 300 ? (size_t)t + 1 : 1 + rnd_below(300), off = (size_t)t % 16;
        uint8_t key[16], *buf = xmalloc(blocks * 16 + 16), *in = buf + off;
        uint8_t *out = xmalloc(blocks * 16), *want = xmalloc(blocks * 16);
        uint32_t rk[32], drk[32], rrk[32];
        int i;
        rnd(key, 16);
        rnd(in, blocks * 16);
        kmsenv__sm4_gfni_setkey(rk, key);
        ref_setkey(rrk, key);
        ok &= memcmp(rk, rrk, sizeof(rk)) == 0;
        evp_one(EVP_sm4_ecb(), 1, key, NULL, in, blocks * 16, want);
        v->ecb(rk, in, out, blocks);
        ok &= memcmp(out, want, blocks * 16) == 0;
        for (i = 0; i < 32; i++)
            drk[i] = rk[31 - i];
        v->ecb(drk, out, out, blocks);
        ok &= memcmp(out, in, blocks * 16) == 0;
        free(buf), free(out), free(want);
        if (!ok) {
            fprintf(stderr, "  %s ecb mismatch at %zu blocks\n", v->name, blocks);
            break;
        }
    }
    CHECK(ok);
}

/* want = in ^ ECB(ivec[0..12) || be32(c0 + j mod 2^32)): the GCM counter. */
static void ctr_reference(const uint8_t key[16], const uint8_t ivec[16], const uint8_t *in,
                          size_t blocks, uint8_t *want)
{
    uint8_t *ctrs = xmalloc(blocks * 16);
    uint32_t c0 = ld32(ivec + 12);
    size_t j;
    for (j = 0; j < blocks; j++) {
        memcpy(ctrs + 16 * j, ivec, 12);
        st32(ctrs + 16 * j + 12, c0 + (uint32_t)j);
    }
    evp_one(EVP_sm4_ecb(), 1, key, NULL, ctrs, blocks * 16, want);
    for (j = 0; j < blocks * 16; j++)
        want[j] ^= in[j];
    free(ctrs);
}

static void ctr32_random(const variant *v)
{
    /* starts crossing the wrap inside a 96-block group, a 64-block group and
     * a tail, plus the wrap exactly at a group border */
    static const uint32_t wraps[] = {0xfffffff0u, 0xffffffffu, 0xffffffa0u, 0xffffffc0u,
                                     0xffffff00u, 0xfffffffeu, 0xffffff9fu, 0};
    int t, ok = 1, ok_iv = 1;
    for (t = 0; t < 500; t++) {
        int wrap = t < (int)(sizeof(wraps) / sizeof(wraps[0])) * 8;
        size_t blocks = t < 300 ? (size_t)t % 300 + 1 : 1 + rnd_below(300);
        uint8_t key[16], ivec[16], ivcopy[16];
        uint8_t *in = xmalloc(blocks * 16), *out = xmalloc(blocks * 16 + 1), *want = xmalloc(blocks * 16);
        kmsenv_sm4 s;
        rnd(key, 16);
        rnd(ivec, 16);
        rnd(in, blocks * 16);
        if (wrap) {
            st32(ivec + 12, wraps[t % (sizeof(wraps) / sizeof(wraps[0]))]);
            blocks = blocks < 120 ? blocks + 100 : blocks; /* reach past the wrap */
            free(in), free(out), free(want);
            in = xmalloc(blocks * 16), out = xmalloc(blocks * 16 + 1), want = xmalloc(blocks * 16);
            rnd(in, blocks * 16);
            ctr_reference(key, ivec, in, blocks, want);
        } else {
            /* no wrap inside the call: EVP's 128-bit CTR is the same stream */
            st32(ivec + 12, (uint32_t)rnd_below(0xffffff00u));
            evp_one(EVP_sm4_ctr(), 1, key, ivec, in, blocks * 16, want);
        }
        memset(&s, 0, sizeof(s));
        kmsenv__sm4_gfni_setkey(s.rk, key);
        memcpy(ivcopy, ivec, 16);
        out[blocks * 16] = 0xee;
        v->ctr32(in, out, blocks, &s, ivec);
        ok &= memcmp(out, want, blocks * 16) == 0 && out[blocks * 16] == 0xee;
        ok_iv &= memcmp(ivcopy, ivec, 16) == 0;
        v->ctr32(in, in, blocks, &s, ivec); /* in place */
        ok &= memcmp(in, want, blocks * 16) == 0;
        if (!ok) {
            fprintf(stderr, "  %s ctr32 mismatch: %zu blocks from %08x\n", v->name, blocks,
                    (unsigned)ld32(ivcopy + 12));
            free(in), free(out), free(want);
            break;
        }
        free(in), free(out), free(want);
    }
    CHECK(ok);
    CHECK(ok_iv);
    {
        kmsenv_sm4 s;
        uint8_t ivec[16] = {0}, b = 0x5a;
        memset(&s, 0, sizeof(s));
        v->ctr32(&b, &b, 0, &s, ivec); /* zero blocks: nothing touched */
        CHECK(b == 0x5a);
    }
}

#if defined(__unix__)
/* Input and output end exactly where an unmapped page begins: a load or a
 * store past the last block (the masked tails) would fault. */
static void guard_pages(const variant *v)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t span = 8 * (size_t)pg, n;
    uint8_t *m = mmap(NULL, 2 * span + 2 * (size_t)pg, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *ia, *oa, key[16], ivec[16];
    kmsenv_sm4 s;
    int ok = 1;
    if (m == MAP_FAILED) {
        printf("SKIP %s guard pages: mmap failed\n", v->name);
        return;
    }
    ia = m, oa = m + span + (size_t)pg;
    if (mprotect(ia + span, (size_t)pg, PROT_NONE) != 0 || mprotect(oa + span, (size_t)pg, PROT_NONE) != 0)
        abort();
    rnd(key, 16);
    rnd(ivec, 16);
    memset(&s, 0, sizeof(s));
    kmsenv__sm4_gfni_setkey(s.rk, key);
    for (n = 1; n <= 200; n++) {
        uint8_t *in = ia + span - 16 * n, *out = oa + span - 16 * n;
        uint8_t *want = xmalloc(16 * n);
        rnd(in, 16 * n);
        out[-1] = 0xa5;
        evp_one(EVP_sm4_ecb(), 1, key, NULL, in, 16 * n, want);
        v->ecb(s.rk, in, out, n);
        ok &= memcmp(out, want, 16 * n) == 0;
        ctr_reference(key, ivec, in, n, want);
        v->ctr32(in, out, n, &s, ivec);
        ok &= memcmp(out, want, 16 * n) == 0 && out[-1] == 0xa5;
        free(want);
    }
    v->block(ia + span - 16, oa + span - 16, &s);
    CHECK(ok);
    munmap(m, 2 * span + 2 * (size_t)pg);
}
#endif

/* RFC 8998 appendix A.1 (SM4-GCM) through gcm128 with this kernel. */
static void rfc8998(const variant *v)
{
    uint8_t key[16], iv[12], aad[20], pt[64], ct[64], tag[16], out[64], got[16];
    kmsenv_sm4 s;
    GCM128_CONTEXT *g;
    rfc8998_a1(key, iv, aad, pt, ct, tag);
    memset(&s, 0, sizeof(s));
    kmsenv__sm4_gfni_setkey(s.rk, key);
    g = CRYPTO_gcm128_new(&s, v->block);
    if (g == NULL)
        abort();
    CRYPTO_gcm128_setiv(g, iv, 12);
    CHECK(CRYPTO_gcm128_aad(g, aad, 20) == 0);
    CHECK(CRYPTO_gcm128_encrypt_ctr32(g, pt, out, 64, v->ctr32) == 0);
    CRYPTO_gcm128_tag(g, got, 16);
    CHECK(memcmp(out, ct, 64) == 0);
    CHECK(memcmp(got, tag, 16) == 0);
    CRYPTO_gcm128_release(g);
}

/* SM4-GCM over gcm128: this kernel against sm4.c's EVP-backed functions,
 * sealing and opening, for lengths around every block/group boundary. */
static void gcm_vs_evp(const variant *v)
{
    static const size_t big[] = {1535, 1536, 1537, 3072, 3073, 65536 + 5, (1u << 20) + 7};
    int t, ok = 1;
    for (t = 0; t < 700 + (int)(sizeof(big) / sizeof(big[0])); t++) {
        size_t len = t < 700 ? (t < 600 ? (size_t)t : rnd_below(20000)) : big[t - 700];
        size_t aadlen = rnd_below(90);
        uint8_t key[16], iv[12], tag[16], rtag[16];
        uint8_t *aad = xmalloc(aadlen), *pt = xmalloc(len), *ct = xmalloc(len), *rct = xmalloc(len);
        kmsenv_sm4 ref, s;
        GCM128_CONTEXT *gr, *gk;
        rnd(key, 16);
        rnd(iv, 12);
        rnd(aad, aadlen);
        rnd(pt, len);
        memset(&ref, 0, sizeof(ref));
        memset(&s, 0, sizeof(s));
        if (kmsenv__sm4_init(&ref, key) != KMSENV_OK)
            abort();
        ref.block = kmsenv__sm4_block_evp;
        ref.ctr32 = kmsenv__sm4_ctr32_evp;
        kmsenv__sm4_gfni_setkey(s.rk, key);
        gr = CRYPTO_gcm128_new(&ref, ref.block);
        gk = CRYPTO_gcm128_new(&s, v->block);
        if (gr == NULL || gk == NULL)
            abort();
        CRYPTO_gcm128_setiv(gr, iv, 12);
        CRYPTO_gcm128_setiv(gk, iv, 12);
        ok &= (aadlen == 0 || (CRYPTO_gcm128_aad(gr, aad, aadlen) == 0 &&
                               CRYPTO_gcm128_aad(gk, aad, aadlen) == 0));
        ok &= (len == 0 || (CRYPTO_gcm128_encrypt_ctr32(gr, pt, rct, len, ref.ctr32) == 0 &&
                            CRYPTO_gcm128_encrypt_ctr32(gk, pt, ct, len, v->ctr32) == 0));
        CRYPTO_gcm128_tag(gr, rtag, 16);
        CRYPTO_gcm128_tag(gk, tag, 16);
        ok &= !ref.failed && memcmp(ct, rct, len) == 0 && memcmp(tag, rtag, 16) == 0;
        /* open in place with the kernel; a flipped tag bit is refused */
        CRYPTO_gcm128_setiv(gk, iv, 12);
        ok &= aadlen == 0 || CRYPTO_gcm128_aad(gk, aad, aadlen) == 0;
        ok &= len == 0 || CRYPTO_gcm128_decrypt_ctr32(gk, ct, ct, len, v->ctr32) == 0;
        ok &= CRYPTO_gcm128_finish(gk, tag, 16) == 0 && memcmp(ct, pt, len) == 0;
        CRYPTO_gcm128_setiv(gk, iv, 12);
        ok &= aadlen == 0 || CRYPTO_gcm128_aad(gk, aad, aadlen) == 0;
        ok &= len == 0 || CRYPTO_gcm128_decrypt_ctr32(gk, rct, ct, len, v->ctr32) == 0;
        tag[t % 16] ^= 0x01;
        ok &= CRYPTO_gcm128_finish(gk, tag, 16) != 0;
        if (!ok)
            fprintf(stderr, "  %s gcm mismatch: len %zu aad %zu\n", v->name, len, aadlen);
        CRYPTO_gcm128_release(gr);
        CRYPTO_gcm128_release(gk);
        kmsenv__sm4_cleanup(&ref);
        free(aad), free(pt), free(ct), free(rct);
        if (!ok)
            break;
    }
    CHECK(ok);
    CHECK(ERR_peek_error() == 0);
}

static void run_variant(const variant *v, uint32_t f)
{
    if ((f & v->need) != v->need) {
        printf("SKIP %s (CPU lacks it or KMSENV_DISABLE_SIMD is set)\n", v->name);
        return;
    }
    printf("testing %s\n", v->name);
    sbox_via_rounds(v);
    gbt32907(v);
    ecb_random(v);
    ctr32_random(v);
#if defined(__unix__)
    guard_pages(v);
#endif
    rfc8998(v);
    gcm_vs_evp(v);
}
/* ---- gfni512-vpclmul: the whole-GCM kernel (zmm GHASH) ----------------- */

/* SM4-GCM the way the core does it with SIMD off: OpenSSL's gcm128 over EVP
 * SM4 (sm4.c's EVP-backed block/ctr32). Independent of ghash512.h. */
static void gcm_ref(const uint8_t key[16], const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
    kmsenv_sm4 ref;
    GCM128_CONTEXT *g;
    memset(&ref, 0, sizeof(ref));
    if (kmsenv__sm4_init(&ref, key) != KMSENV_OK)
        abort();
    ref.block = kmsenv__sm4_block_evp;
    ref.ctr32 = kmsenv__sm4_ctr32_evp;
    if ((g = CRYPTO_gcm128_new(&ref, ref.block)) == NULL)
        abort();
    CRYPTO_gcm128_setiv(g, iv, 12);
    if ((aadlen != 0 && CRYPTO_gcm128_aad(g, aad, aadlen) != 0) ||
        (len != 0 && CRYPTO_gcm128_encrypt_ctr32(g, in, out, len, ref.ctr32) != 0) || ref.failed)
        abort();
    CRYPTO_gcm128_tag(g, tag, 16);
    CRYPTO_gcm128_release(g);
    kmsenv__sm4_cleanup(&ref);
}

static void gcm512_key(kmsenv_sm4 *s, const uint8_t key[16])
{
    memset(s, 0, sizeof(*s));
    kmsenv__sm4_gfni_setkey(s->rk, key);
    kmsenv__sm4_gfni512_gcm_init(s);
}

/* One message: seal out of place and in place against gcm_ref, open out of
 * place and in place, and a flipped bit of the tag, the ciphertext or the
 * AAD refused. 0 on any difference. */
static int gcm512_one(size_t len, size_t aadlen)
{
    uint8_t key[16], iv[12], tag[16], rtag[16], t2[16];
    uint8_t *aad = xmalloc(aadlen), *pt = xmalloc(len), *ct = xmalloc(len + 1), *rct = xmalloc(len);
    uint8_t *buf = xmalloc(len);
    kmsenv_sm4 s;
    int ok = 1;
    rnd(key, 16);
    rnd(iv, 12);
    rnd(aad, aadlen);
    rnd(pt, len);
    gcm_ref(key, iv, aad, aadlen, pt, len, rct, rtag);
    gcm512_key(&s, key);
    ct[len] = 0xc3; /* the byte after the output stays */
    ok &= kmsenv__sm4_gfni512_gcm_seal(&s, iv, aad, aadlen, pt, len, ct, tag) == KMSENV_OK;
    ok &= memcmp(ct, rct, len) == 0 && memcmp(tag, rtag, 16) == 0 && ct[len] == 0xc3;
    if (len != 0)
        memcpy(buf, pt, len);
    ok &= kmsenv__sm4_gfni512_gcm_seal(&s, iv, aad, aadlen, buf, len, buf, t2) == KMSENV_OK;
    ok &= memcmp(buf, rct, len) == 0 && memcmp(t2, rtag, 16) == 0;
    ok &= kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, aadlen, rct, len, rtag, ct) == KMSENV_OK;
    ok &= memcmp(ct, pt, len) == 0;
    ok &= kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, aadlen, buf, len, rtag, buf) == KMSENV_OK;
    ok &= memcmp(buf, pt, len) == 0;
    memcpy(t2, rtag, 16);
    t2[rnd_below(16)] ^= (uint8_t)(1u << rnd_below(8));
    ok &= kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, aadlen, rct, len, t2, ct) == KMSENV_E_AUTH;
    if (len != 0) {
        rct[rnd_below(len)] ^= (uint8_t)(1u << rnd_below(8));
        ok &= kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, aadlen, rct, len, rtag, ct) == KMSENV_E_AUTH;
    }
    if (aadlen != 0) {
        aad[rnd_below(aadlen)] ^= 0x80;
        ok &= kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, aadlen, buf, len, rtag, ct) == KMSENV_E_AUTH;
    }
    if (!ok)
        fprintf(stderr, "  gfni512-vpclmul gcm mismatch: len %zu aad %zu\n", len, aadlen);
    kmsenv__sm4_cleanup(&s);
    free(aad), free(pt), free(ct), free(rct), free(buf);
    return ok;
}

/* Lengths around every step (16 blocks), piece (96 blocks) and group
 * border, up to 1 MiB + odd; AAD lengths 0..300. */
static void gcm512_vs_gcm128(void)
{
    static const size_t big[] = {1535, 1536, 1537, 1536 + 255, 1536 + 256, 1536 + 257, 3071, 3072,
                                 3073, 4608 + 15, 6144 + 1024, 65536 + 5, (size_t)1 << 20,
                                 ((size_t)1 << 20) + 7, 3 * ((size_t)1 << 19) + 1551};
    static const size_t aads[] = {0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 300};
    size_t i;
    int ok = 1;
    for (i = 0; i <= 1600 && ok; i++) /* every length to past the first piece */
        ok &= gcm512_one(i, i % 5 == 0 ? 0 : rnd_below(301));
    for (i = 0; i < sizeof(aads) / sizeof(aads[0]) && ok; i++)
        ok &= gcm512_one(rnd_below(4000), aads[i]) && gcm512_one(0, aads[i]);
    for (i = 0; i < 300 && ok; i++)
        ok &= gcm512_one(rnd_below(40000), rnd_below(301));
    for (i = 0; i < sizeof(big) / sizeof(big[0]) && ok; i++)
        ok &= gcm512_one(big[i], rnd_below(301));
    CHECK(ok);
    CHECK(ERR_peek_error() == 0);
}

/* RFC 8998 appendix A.1 through the whole-GCM kernel. */
static void gcm512_rfc8998(void)
{
    uint8_t key[16], iv[12], aad[20], pt[64], ct[64], tag[16], out[64], got[16];
    kmsenv_sm4 s;
    rfc8998_a1(key, iv, aad, pt, ct, tag);
    gcm512_key(&s, key);
    CHECK(kmsenv__sm4_gfni512_gcm_seal(&s, iv, aad, 20, pt, 64, out, got) == KMSENV_OK);
    CHECK(memcmp(out, ct, 64) == 0 && memcmp(got, tag, 16) == 0);
    CHECK(kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, 20, ct, 64, tag, out) == KMSENV_OK);
    CHECK(memcmp(out, pt, 64) == 0);
    /* the table is key material: cleanup zeroes it */
    kmsenv__sm4_cleanup(&s);
    {
        static const uint8_t zero[sizeof(s.hpow)];
        CHECK(memcmp(s.hpow, zero, sizeof(zero)) == 0);
    }
}

/* Lengths the callers check are refused here too, before any access. */
static void gcm512_limits(void)
{
    kmsenv_sm4 s;
    uint8_t key[16] = {1}, iv[12] = {0}, tag[16], b = 0;
    gcm512_key(&s, key);
    if (sizeof(size_t) >= 8) {
        size_t too_long = (size_t)(KMSENV_GCM_MAX_IN + 1);
        CHECK(kmsenv__sm4_gfni512_gcm_seal(&s, iv, NULL, 0, &b, too_long, &b, tag) == KMSENV_E_ARG);
        CHECK(kmsenv__sm4_gfni512_gcm_open(&s, iv, NULL, 0, &b, too_long, tag, &b) == KMSENV_E_ARG);
    }
    kmsenv__sm4_cleanup(&s);
}

/* Through the key API: with gfni512-vpclmul chosen (the default here, or
 * forced) a key seals with the new kernel, and its bytes are gcm128's. */
static void gcm512_key_api(void)
{
    const kmsenv__sm4_kernel *kk = kmsenv__sm4_kernel_chosen();
    uint8_t key[16], iv[12], aad[40], tag[16], rtag[16];
    uint8_t *pt = xmalloc(70000), *ct = xmalloc(70000), *rct = xmalloc(70000);
    kmsenv_key *k;
    size_t n;
    int ok = 1;
    if (kk == NULL || kk->gcm_seal == NULL) {
        printf("SKIP key API with gfni512-vpclmul: chosen SM4 kernel is %s\n", kmsenv_kernel_name(KMSENV_KERNEL_SM4));
        free(pt), free(ct), free(rct);
        return;
    }
    rnd(key, 16);
    CHECK(kmsenv_key_new(KMSENV_CIPHER_SM4, key, 16, &k) == KMSENV_OK);
    CHECK(k->sm4.gcm_seal == kmsenv__sm4_gfni512_gcm_seal);
    for (n = 0; n < 70000 && ok; n = n * 3 + 1 + rnd_below(50)) {
        size_t aadlen = rnd_below(41);
        rnd(iv, 12), rnd(aad, aadlen), rnd(pt, n);
        gcm_ref(key, iv, aad, aadlen, pt, n, rct, rtag);
        ok &= kmsenv_gcm_seal(k, iv, aad, aadlen, pt, n, ct, tag) == KMSENV_OK;
        ok &= memcmp(ct, rct, n) == 0 && memcmp(tag, rtag, 16) == 0;
        ok &= kmsenv_gcm_open(k, iv, aad, aadlen, ct, n, tag, ct) == KMSENV_OK && memcmp(ct, pt, n) == 0;
        /* a bad tag: KMSENV_E_AUTH and out wiped (kmsenv_gcm_open) */
        tag[0] ^= 1;
        ok &= kmsenv_gcm_open(k, iv, aad, aadlen, rct, n, tag, ct) == KMSENV_E_AUTH;
        for (size_t j = 0; j < n; j++)
            ok &= ct[j] == 0;
    }
    CHECK(ok);
    kmsenv_key_free(k);
    free(pt), free(ct), free(rct);
}

#if defined(__unix__)
/* Data and AAD end where an unmapped page begins (and the output too): the
 * masked loads and stores of the tails and of GHASH must stay inside. */
static void gcm512_guard_pages(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t span = 2 * (size_t)pg, n;
    uint8_t *m = mmap(NULL, 3 * (span + (size_t)pg), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *ia, *oa, *aa, key[16], iv[12], tag[16], rtag[16], want[2048];
    kmsenv_sm4 s;
    int ok = 1;
    if (m == MAP_FAILED) {
        printf("SKIP gfni512-vpclmul guard pages: mmap failed\n");
        return;
    }
    ia = m, oa = m + span + (size_t)pg, aa = m + 2 * (span + (size_t)pg);
    if (mprotect(ia + span, (size_t)pg, PROT_NONE) != 0 || mprotect(oa + span, (size_t)pg, PROT_NONE) != 0 ||
        mprotect(aa + span, (size_t)pg, PROT_NONE) != 0)
        abort();
    rnd(key, 16);
    rnd(iv, 12);
    gcm512_key(&s, key);
    for (n = 0; n <= 1700 && ok; n += (n < 300 ? 1 : 37)) {
        size_t aadlen = n % 300;
        uint8_t *in = ia + span - n, *out = oa + span - n, *aad = aa + span - aadlen;
        rnd(in, n);
        rnd(aad, aadlen);
        gcm_ref(key, iv, aad, aadlen, in, n, want, rtag);
        ok &= kmsenv__sm4_gfni512_gcm_seal(&s, iv, aad, aadlen, in, n, out, tag) == KMSENV_OK;
        ok &= memcmp(out, want, n) == 0 && memcmp(tag, rtag, 16) == 0;
        ok &= kmsenv__sm4_gfni512_gcm_open(&s, iv, aad, aadlen, out, n, tag, out) == KMSENV_OK;
        ok &= memcmp(out, in, n) == 0;
    }
    CHECK(ok);
    kmsenv__sm4_cleanup(&s);
    munmap(m, 3 * (span + (size_t)pg));
}
#endif

static void run_gcm512(uint32_t f)
{
    uint32_t need = KMSENV_FEATURE_SM4_GFNI | KMSENV_FEATURE_AES_VAES512;
    if ((f & need) != need) {
        printf("SKIP gfni512-vpclmul (CPU lacks AVX-512 + GFNI + VPCLMULQDQ, or KMSENV_DISABLE_SIMD is set)\n");
        return;
    }
    printf("testing gfni512-vpclmul (SM4-GCM, zmm GHASH)\n");
    gcm512_rfc8998();
    gcm512_limits();
    gcm512_vs_gcm128();
#if defined(__unix__)
    gcm512_guard_pages();
#endif
    gcm512_key_api();
}
#endif /* KMSENV_HAVE_X86_SIMD */

int main(void)
{
    uint32_t f = kmsenv__cpu_simd_features();
    printf("cpu features 0x%x\n", (unsigned)f);
    reference_vs_openssl();
    constants_emulated();
#if defined(KMSENV_HAVE_X86_SIMD)
    if (f & (KMSENV_FEATURE_SM4_GFNI | KMSENV_FEATURE_SM4_GFNI256)) /* setkey needs AVX + GFNI */
        sbox_via_setkey();
    {
        size_t i;
        for (i = 0; i < sizeof(VARIANTS) / sizeof(VARIANTS[0]); i++)
            run_variant(&VARIANTS[i], f);
    }
    run_gcm512(f);
#else
    printf("SKIP GFNI kernels (not built: no x86 SIMD support in this compiler)\n");
#endif
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
