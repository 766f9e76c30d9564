/* thread.c: start/join for kmsenv_thread.h, Win32 threads or pthreads. */
#include "kmsenv_thread.h"

#if defined(_WIN32)

#define WIN32_LEAN_AND_MEAN
#include <process.h>
#include <stdint.h>
#include <windows.h>

/* _beginthreadex rather than CreateThread: the workers call into the C
 * runtime (and OpenSSL, which does too), and Microsoft documents
 * _beginthreadex as the way to start such threads. */
static unsigned __stdcall trampoline(void *p)
{
    kmsenv__thread *t = p;
    t->fn(t->arg);
    return 0;
}

int kmsenv__thread_start(kmsenv__thread *t, kmsenv__thread_fn fn, void *arg)
{
    uintptr_t h;
    t->fn = fn;
    t->arg = arg;
    t->handle = NULL;
    h = _beginthreadex(NULL, 0, trampoline, t, 0, NULL);
    if (h == 0)
        return 0;
    t->handle = (void *)h;
    return 1;
}

void kmsenv__thread_join(kmsenv__thread *t)
{
    /* INFINITE only fails on a bad handle, which start never hands out. */
    WaitForSingleObject((HANDLE)t->handle, INFINITE);
    CloseHandle((HANDLE)t->handle);
    t->handle = NULL;
}

long long kmsenv__atomic_next(kmsenv__counter *c)
{
    return InterlockedIncrement64((volatile LONG64 *)c) - 1;
}

long long kmsenv__atomic_get(kmsenv__counter *c)
{
    return InterlockedCompareExchange64((volatile LONG64 *)c, 0, 0);
}

void kmsenv__atomic_set(kmsenv__counter *c)
{
    InterlockedExchange64((volatile LONG64 *)c, 1);
}

#else

#include <stddef.h>

static void *trampoline(void *p)
{
    kmsenv__thread *t = p;
    t->fn(t->arg);
    return NULL;
}

int kmsenv__thread_start(kmsenv__thread *t, kmsenv__thread_fn fn, void *arg)
{
    t->fn = fn;
    t->arg = arg;
    return pthread_create(&t->tid, NULL, trampoline, t) == 0;
}

void kmsenv__thread_join(kmsenv__thread *t)
{
    pthread_join(t->tid, NULL);
}

long long kmsenv__atomic_next(kmsenv__counter *c)
{
    return __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

long long kmsenv__atomic_get(kmsenv__counter *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

void kmsenv__atomic_set(kmsenv__counter *c)
{
    __atomic_store_n(c, 1, __ATOMIC_RELAXED);
}

#endif
