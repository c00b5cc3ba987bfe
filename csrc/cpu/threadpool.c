/* threadpool.c: see threadpool.h.
 *
 * State: one job at a time (call_lock). A job is published by a new `ticket` (a
 * generation count and the job's thread count in one atomic, so a worker the job does
 * not need skips it without reading `job`, which the next caller may be rewriting);
 * workers spin on it for a while, then sleep on wake_cond (`sleepers` counts them, so
 * the caller signals only when someone sleeps). Each participating worker decrements
 * `pending` when its range is done; the caller spins on it, then yields (the workers
 * it waits for are running). The flags are sequentially consistent atomics: a sleeper
 * registers itself before its last check, and the publisher checks for sleepers after
 * publishing, so no wake-up is lost.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

/* Waiting, in three steps: spin (pause) for SPIN_US, then spin yielding the core (to
 * any other runnable thread: with more threads than cores, spinning alone starves the
 * ones with work) until YIELD_US, then (workers only) sleep. */
#define REALM_POOL_SPIN_US 20
#define REALM_POOL_YIELD_US 300

struct job {
    realm_range_fn fn;
    void *ctx;
    int64_t n;
    int n_threads;
};

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;  /* workers: a new job */

static struct job job;                  /* written under call_lock before publishing */
static atomic_ullong ticket;            /* generation << 16 | the job's n_threads */
static atomic_int pending;              /* workers still running the job */
static atomic_int sleepers;             /* workers asleep on wake_cond */
static int n_workers;                   /* started so far (under call_lock) */
/* the ticket when worker t was started: the jobs it has "seen" (it may start running
 * only after the job its creator publishes next, which it must not miss) */
static unsigned long long start_ticket[REALM_POOL_MAX_THREADS];

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void run_range(const struct job *j, int t) {
    const int64_t i0 = j->n * t / j->n_threads, i1 = j->n * (t + 1) / j->n_threads;
    if (i0 < i1) j->fn(j->ctx, i0, i1, t);
}

static void *worker(void *arg) {
    const int t = (int)(intptr_t)arg; /* this worker is thread t of any job it joins */
    unsigned long long seen = start_ticket[t];
    for (;;) {
        /* wait for the next job: spin, spin yielding, then sleep */
        const int64_t t0 = now_us();
        int yielding = 0;
        for (int k = 0; atomic_load(&ticket) == seen; k++) {
            if (yielding) sched_yield();
            else cpu_relax();
            if ((k & 63) != 63) continue;
            const int64_t waited = now_us() - t0;
            yielding = waited > REALM_POOL_SPIN_US;
            if (waited > REALM_POOL_YIELD_US) {
                pthread_mutex_lock(&wake_lock);
                atomic_fetch_add(&sleepers, 1);
                while (atomic_load(&ticket) == seen) pthread_cond_wait(&wake_cond, &wake_lock);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&wake_lock);
                break;
            }
        }
        seen = atomic_load(&ticket);
        if (t >= (int)(seen & 0xFFFF)) continue; /* not needed for this job */
        run_range(&job, t); /* job stays put until this worker is done (pending) */
        atomic_fetch_sub(&pending, 1);
    }
    return NULL;
}

int realm_pool_threads(int64_t n, int n_threads) {
    int64_t t = n_threads < 1 ? 1 : n_threads;
    if (t > n) t = n < 1 ? 1 : n;
    return (int)(t > REALM_POOL_MAX_THREADS ? REALM_POOL_MAX_THREADS : t);
}

void realm_parallel_for(int64_t n, int n_threads, realm_range_fn fn, void *ctx) {
    const int nt = realm_pool_threads(n, n_threads);
    if (nt <= 1) {
        if (n > 0) fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&call_lock);
    while (n_workers < nt - 1) { /* workers 1 .. nt-1, started once, kept for good */
        pthread_t th;
        pthread_attr_t attr;
        start_ticket[n_workers + 1] = atomic_load(&ticket);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&th, &attr, worker, (void *)(intptr_t)(n_workers + 1));
        pthread_attr_destroy(&attr);
        if (rc) break; /* fewer threads: the caller takes their ranges below */
        n_workers++;
    }
    const int helpers = nt - 1 < n_workers ? nt - 1 : n_workers;
    job = (struct job){fn, ctx, n, helpers + 1};
    atomic_store(&pending, helpers);
    const unsigned long long gen = (atomic_load(&ticket) >> 16) + 1;
    atomic_store(&ticket, gen << 16 | (unsigned long long)(helpers + 1)); /* publish */
    if (atomic_load(&sleepers)) {
        pthread_mutex_lock(&wake_lock);
        pthread_cond_broadcast(&wake_cond);
        pthread_mutex_unlock(&wake_lock);
    }
    run_range(&job, 0);
    /* wait for the workers, who are running: spin, then spin yielding the core */
    const int64_t t0 = now_us();
    int yielding = 0;
    for (int k = 0; atomic_load(&pending) > 0; k++) {
        if (yielding) sched_yield();
        else cpu_relax();
        if ((k & 63) == 63 && !yielding) yielding = now_us() - t0 > REALM_POOL_SPIN_US;
    }
    pthread_mutex_unlock(&call_lock);
}
