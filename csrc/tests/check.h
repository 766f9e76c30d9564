/*
 * check.h: the assertion macros shared by the C test programs. Each program
 * counts into its own `passed`/`failed` and prints "N passed, N failed".
 */
#ifndef KMSENV_TEST_CHECK_H
#define KMSENV_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>

static int passed, failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (cond) {                                                            \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                      \
    } while (0)

/* Every call must also leave OpenSSL's error queue empty. */
#define CHECK_RC(expr, want)                                                   \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        unsigned long e_ = ERR_peek_error();                                   \
        if (rc_ == (want) && e_ == 0) {                                        \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            fprintf(stderr, "FAIL %s:%d: %s = %d (want %d), err queue %lx\n",  \
                    __FILE__, __LINE__, #expr, rc_, (int)(want), e_);          \
            ERR_clear_error();                                                 \
        }                                                                      \
    } while (0)

/* Hex text to bytes (test literals only: a bad digit aborts the run). */
static inline size_t unhex(const char *s, uint8_t *out)
{
    size_t n = 0;
    while (s[0] && s[1]) {
        unsigned int v;
        if (sscanf(s, "%2x", &v) != 1)
            abort();
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

#endif
