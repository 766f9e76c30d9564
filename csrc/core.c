/* core.c: versions, run-time feature detection, status text and the small
 * wrappers around OpenSSL's cleanse / memcmp / CSPRNG. */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1 /* madvise's MADV_HUGEPAGE under -std=c11 */
#endif
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/rand.h>

#include "internal.h"

#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Windows first: MSVC has no <cpuid.h>, while MSVC, clang-cl and mingw-w64
 * all declare __cpuid in <intrin.h>, so the mingw cross-compile
 * (scripts/cross-compile-windows.sh) checks the code MSVC builds. */
#if defined(_WIN32) && (defined(_M_X64) || defined(_M_IX86) || defined(__x86_64__) || defined(__i386__))
#include <intrin.h>
#define KMSENV_CPUID_INTRIN 1
#elif (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define KMSENV_CPUID_GNU 1
#endif

#ifndef KMSENV_VERSION
#define KMSENV_VERSION "unknown"
#endif

const char *kmsenv_version(void)
{
    return KMSENV_VERSION;
}

const char *kmsenv_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

const char *kmsenv_openssl_build_version(void)
{
    return OPENSSL_VERSION_TEXT;
}

static int cpu_has_aesni(void)
{
#if defined(KMSENV_CPUID_GNU)
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c >> 25) & 1;
#elif defined(KMSENV_CPUID_INTRIN)
    int r[4];
    __cpuid(r, 1);
    return ((unsigned int)r[2] >> 25) & 1;
#else
    return 0;
#endif
}

/* SM4 is built from SM4-ECB and SM4-CTR (and the legacy modes need SM4-CBC);
 * a provider set without them (FIPS, a trimmed build) disables SM4. */
static int provider_has(const char *name)
{
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, name, NULL);
    int found = c != NULL;
    EVP_CIPHER_free(c);
    return found;
}

/* Written once under CRYPTO_THREAD_run_once, read-only afterwards. */
static CRYPTO_ONCE features_once = CRYPTO_ONCE_STATIC_INIT;
static uint32_t features_value;

static void detect_features(void)
{
    uint32_t f = 0;
    if (provider_has("SM4-ECB") && provider_has("SM4-CTR") && provider_has("SM4-CBC"))
        f |= KMSENV_FEATURE_SM4;
    if (cpu_has_aesni())
        f |= KMSENV_FEATURE_AESNI;
    /* SIMD kernels (cpu.c), fixed here once for the process. */
    f |= kmsenv__cpu_simd_features() &
         ((f & KMSENV_FEATURE_SM4) ? ~0u
                                   : ~(uint32_t)(KMSENV_FEATURE_SM4_AVX2 | KMSENV_FEATURE_SM4_GFNI |
                                                 KMSENV_FEATURE_SM4_GFNI256));
    ERR_clear_error(); /* failed fetches queue errors */
    /* Self-tests and calibration of the candidates (kernels.c), once. */
    kmsenv__kernels_select(f);
    features_value = f;
}

uint32_t kmsenv_features(void)
{
    if (!CRYPTO_THREAD_run_once(&features_once, detect_features)) {
        ERR_clear_error();
        return 0;
    }
    return features_value;
}

const char *kmsenv_strerror(int status)
{
    switch (status) {
    case KMSENV_OK:
        return "success";
    case KMSENV_E_ARG:
        return "invalid argument";
    case KMSENV_E_AUTH:
        return "authentication failed";
    case KMSENV_E_CRYPTO:
        return "cryptographic library failure";
    case KMSENV_E_NOMEM:
        return "out of memory";
    case KMSENV_E_UNSUPPORTED:
        return "unsupported by this build";
    case KMSENV_E_PADDING:
        return "invalid padding";
    case KMSENV_E_FORMAT:
        return "malformed message";
    case KMSENV_E_HEADER_AUTH:
        return "header authentication failed";
    default:
        return "unknown status";
    }
}

/* OpenSSL 3.0's OPENSSL_cleanse stores 8 bytes per iteration (about 100 ns
 * per KiB here), and a one-message key wipes over 1.5 KiB of schedules and H
 * powers. With GCC and Clang, memset (vectorised by libc) followed by an
 * empty asm that takes the pointer and clobbers memory is just as final: the
 * compiler must assume the asm reads the zeroed bytes, so it cannot drop the
 * stores (BoringSSL's OPENSSL_cleanse and glibc's explicit_bzero do the same).
 * Other compilers keep OPENSSL_cleanse. */
void kmsenv_wipe(void *p, size_t n)
{
    if (p == NULL || n == 0)
        return;
#if defined(__GNUC__) || defined(__clang__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    OPENSSL_cleanse(p, n);
#endif
}

/* A large output the core is about to write in full is usually fresh memory
 * (glibc maps blocks this size on their own), where every 4 KiB page costs a
 * fault: on a VM, faulting 64 MiB took longer than sealing it. Asking for
 * transparent huge pages on the 2 MiB-aligned part of the buffer makes that
 * a fault per 2 MiB, where the system allows them ("madvise" mode, the
 * default of many distributions). Only whole huge pages inside [p, p+n) are
 * advised, so no one else's memory changes policy; it is a hint, and a
 * refusal changes nothing. KMSENV_HUGEPAGES=0 turns it off. */
void kmsenv__hugepage_hint(void *p, size_t n)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start, end;
    const char *off;
    if (p == NULL || n < KMSENV_HUGEPAGE_MIN)
        return;
    off = getenv("KMSENV_HUGEPAGES");
    if (off != NULL && strcmp(off, "0") == 0)
        return;
    start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    end = ((uintptr_t)p + n) & ~(huge - 1);
    if (end > start)
        (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

void kmsenv__clear_free(void *p, size_t n)
{
    if (p == NULL)
        return;
    kmsenv_wipe(p, n);
    OPENSSL_free(p);
}

int kmsenv_memeq(const void *a, const void *b, size_t n)
{
    if (n == 0)
        return 0;
    if (a == NULL || b == NULL)
        return KMSENV_E_ARG; /* non-zero: never "equal" */
    return CRYPTO_memcmp(a, b, n) == 0 ? 0 : 1;
}

int kmsenv_random(uint8_t *out, size_t n)
{
    if (KMSENV_BAD_BUF(out, n))
        return KMSENV_E_ARG;
    while (n != 0) {
        size_t step = n < KMSENV_EVP_CHUNK ? n : KMSENV_EVP_CHUNK;
        if (RAND_bytes(out, (int)step) != 1) {
            ERR_clear_error();
            return KMSENV_E_CRYPTO;
        }
        out += step;
        n -= step;
    }
    return KMSENV_OK;
}
