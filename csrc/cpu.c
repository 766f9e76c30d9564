/* cpu.c: which SIMD kernels this CPU and OS can run. Called once, from
 * kmsenv_features()'s CRYPTO_THREAD_run_once, so the choice is made one time
 * per process and every key created afterwards uses the same path.
 *
 * A kernel needs both the CPUID bit and the OS saving the register state
 * (XGETBV: XCR0 bits 1-2 for ymm). KMSENV_DISABLE_SIMD=1 (read here, once)
 * forces the OpenSSL EVP paths, so tests can compare both on one machine.
 * These bits say what the CPU can run; kernels.c chooses among them. */
#include <stdlib.h>

#include "internal.h"

#if defined(KMSENV_HAVE_X86_SIMD)
#include <cpuid.h>

static uint64_t xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

uint32_t kmsenv__cpu_simd_features(void)
{
    unsigned int a, b, c1, d, c7, b7;
    uint32_t f = 0;
    const char *off = getenv("KMSENV_DISABLE_SIMD");
    int aesni, avx2, vaes, vpclmul, pclmul, gfni, avx512;

    if (off != NULL && off[0] != '\0' && strcmp(off, "0") != 0)
        return 0;
    if (!__get_cpuid(1, &a, &b, &c1, &d))
        return 0;
    /* OSXSAVE and AVX, then the OS must enable SSE+AVX state in XCR0 */
    if (!((c1 >> 27) & 1) || !((c1 >> 28) & 1) || (xcr0() & 6) != 6)
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b7, c7, d);
    aesni = (c1 >> 25) & 1;
    pclmul = (c1 >> 1) & 1;
    avx2 = (b7 >> 5) & 1;
    vaes = (c7 >> 9) & 1;
    vpclmul = (c7 >> 10) & 1;
    gfni = (c7 >> 8) & 1;
    /* AVX-512 F, DQ, BW, VL, and the OS saving opmask + zmm state (XCR0 5-7) */
    avx512 = ((b7 >> 16) & 1) && ((b7 >> 17) & 1) && ((b7 >> 30) & 1) && ((b7 >> 31) & 1) &&
             (xcr0() & 0xe6) == 0xe6;
    if (aesni && avx2 && vaes)
        f |= KMSENV_FEATURE_SM4_AVX2;
    if (aesni && pclmul && avx2 && vaes && vpclmul)
        f |= KMSENV_FEATURE_AES_VAES;
    if (avx2 && gfni)
        f |= KMSENV_FEATURE_SM4_GFNI256;
    if (avx512 && gfni)
        f |= KMSENV_FEATURE_SM4_GFNI;
    if (avx512 && aesni && pclmul && vaes && vpclmul)
        f |= KMSENV_FEATURE_AES_VAES512;
    return f;
}
#else
uint32_t kmsenv__cpu_simd_features(void)
{
    return 0;
}
#endif
