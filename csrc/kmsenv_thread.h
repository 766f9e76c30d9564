/*
 * kmsenv_thread.h: the little threading the core needs, on POSIX and Windows.
 *
 * frames.c runs a batch on worker threads and joins them. The workers share
 * two counters (the next job to claim, and a stop flag), touched only through
 * the atomic helpers below; there is no mutex or condition variable here.
 * MSVC, which builds the win_amd64 wheel, has no <pthread.h>, so
 * Windows uses its own threads (thread.c); everything else uses pthreads.
 * mingw-w64 ships a <pthread.h> (winpthreads), but its gcc takes the Windows
 * path too, so the mingw cross-compile (scripts/cross-compile-windows.sh)
 * compiles the same code MSVC does.
 */
#ifndef KMSENV_THREAD_H
#define KMSENV_THREAD_H

#if !defined(_WIN32)
#include <pthread.h>
#endif

typedef void (*kmsenv__thread_fn)(void *arg);

/* One started thread. It must stay at the same address until joined: the new
 * thread reads fn and arg from it (this keeps the layer allocation-free). */
typedef struct kmsenv__thread {
    kmsenv__thread_fn fn;
    void *arg;
#if defined(_WIN32)
    void *handle; /* a HANDLE, kept as void * so <windows.h> stays in thread.c */
#else
    pthread_t tid;
#endif
} kmsenv__thread;

/* Runs fn(arg) on a new thread: 1 when it started, 0 when no thread could be
 * had (the caller then does the work itself). */
int kmsenv__thread_start(kmsenv__thread *t, kmsenv__thread_fn fn, void *arg);
/* Waits for a started thread to finish and releases it. */
void kmsenv__thread_join(kmsenv__thread *t);

/* A counter several threads update at once. 64 bits everywhere: each worker
 * claims once past the last job, so the count may pass the 2^32 - 1 frames a
 * message can hold. Memory order is relaxed: nothing else is ordered by it,
 * and joining the threads publishes their results. */
typedef long long kmsenv__counter;
/* Adds 1 to *c and returns the value before. */
long long kmsenv__atomic_next(kmsenv__counter *c);
/* Reads *c. */
long long kmsenv__atomic_get(kmsenv__counter *c);
/* Sets *c to 1. */
void kmsenv__atomic_set(kmsenv__counter *c);

#endif
