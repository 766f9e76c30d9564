/*
 * aes_ni_keys.h: the AES-NI key schedule and POLYVAL's multiply-by-x, shared
 * by the two VAES AES-GCM kernels (aes_gcm_vaes.c on ymm, aes_gcm_vaes512.c
 * on zmm). Included only inside their KMSENV_HAVE_X86_SIMD blocks, after
 * <immintrin.h>; every function is static, so each kernel gets its own copy
 * compiled for plain AES-NI (callable from either kernel's wider target).
 *
 * Constant time: AESKEYGENASSIST has data-independent timing; mulx_polyval
 * masks its reduction instead of branching on the key-derived carry.
 */
#ifndef KMSENV_AES_NI_KEYS_H
#define KMSENV_AES_NI_KEYS_H

#define AESNI_KEYS_TARGET __attribute__((target("aes")))

static inline __attribute__((always_inline)) AESNI_KEYS_TARGET __m128i expand_mix(__m128i k,
                                                                                   __m128i t)
{
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    return _mm_xor_si128(k, t);
}

#define K128(i, rcon)                                                                         \
    rk[i] = expand_mix(rk[i - 1], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], rcon), \
                                                    0xff))
#define K256A(i, rcon)                                                                        \
    rk[i] = expand_mix(rk[i - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], rcon), \
                                                    0xff))
#define K256B(i)                                                                              \
    rk[i] = expand_mix(rk[i - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], 0), 0xaa))

/* The round keys of a 16- or 32-byte AES key into rk[0..nr]. */
AESNI_KEYS_TARGET static void expand_key(__m128i rk[15], const uint8_t *key, size_t keylen)
{
    rk[0] = _mm_loadu_si128((const __m128i *)(const void *)key);
    if (keylen == 16) {
        K128(1, 0x01); K128(2, 0x02); K128(3, 0x04); K128(4, 0x08); K128(5, 0x10);
        K128(6, 0x20); K128(7, 0x40); K128(8, 0x80); K128(9, 0x1b); K128(10, 0x36);
    } else {
        rk[1] = _mm_loadu_si128((const __m128i *)(const void *)(key + 16));
        K256A(2, 0x01); K256B(3); K256A(4, 0x02); K256B(5); K256A(6, 0x04); K256B(7);
        K256A(8, 0x08); K256B(9); K256A(10, 0x10); K256B(11); K256A(12, 0x20); K256B(13);
        K256A(14, 0x40);
    }
}

#undef K128
#undef K256A
#undef K256B

/* v * x in POLYVAL's field: little-endian shift by one, reduce by
 * x^128 = x^127 + x^126 + x^121 + 1. */
static void mulx_polyval(uint8_t v[16])
{
    int carry = v[15] >> 7, i;
    for (i = 15; i > 0; i--)
        v[i] = (uint8_t)((v[i] << 1) | (v[i - 1] >> 7));
    v[0] = (uint8_t)(v[0] << 1);
    v[0] ^= (uint8_t)carry;
    v[15] ^= (uint8_t)(0xc2 & (0 - carry));
}

#endif
