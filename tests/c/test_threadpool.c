/* test_threadpool.c: the kernels' pool (csrc/cpu/threadpool.c): every index of a loop is
 * run exactly once, by the thread its static range names, for any thread count (more
 * than the machine's cores too), from several calling threads at once. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "check.h"
#include "threadpool.h"

#define N_MAX 64

struct loop {
    int64_t n;
    int n_threads;
    atomic_int hits[N_MAX];
    atomic_int wrong_thread;
};

static void count(void *ctx, int64_t i0, int64_t i1, int thread) {
    struct loop *l = ctx;
    const int nt = realm_pool_threads(l->n, l->n_threads);
    if (thread < 0 || thread >= nt || i0 != l->n * thread / nt || i1 != l->n * (thread + 1) / nt)
        atomic_fetch_add(&l->wrong_thread, 1);
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&l->hits[i], 1);
}

static int run_loops(int calls, unsigned seed) {
    int bad = 0;
    for (int c = 0; c < calls; c++) {
        seed = seed * 1103515245u + 12345u;
        struct loop l;
        memset(&l, 0, sizeof l);
        l.n = (int64_t)(seed >> 8) % N_MAX;
        l.n_threads = 1 + (int)((seed >> 20) % 5); /* 1..5 threads */
        realm_parallel_for(l.n, l.n_threads, count, &l);
        for (int64_t i = 0; i < l.n; i++) bad += atomic_load(&l.hits[i]) != 1;
        bad += atomic_load(&l.wrong_thread);
    }
    return bad;
}

static void *caller(void *arg) {
    static atomic_int total_bad;
    atomic_fetch_add(&total_bad, run_loops(300, (unsigned)(uintptr_t)arg));
    return (void *)(intptr_t)atomic_load(&total_bad);
}

int main(void) {
    CHECK(realm_pool_threads(0, 4) == 1);
    CHECK(realm_pool_threads(3, 8) == 3);
    CHECK(realm_pool_threads(100, 0) == 1);
    CHECK(realm_pool_threads(1000, 100000) == REALM_POOL_MAX_THREADS);
    CHECK(run_loops(2000, 1) == 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, caller, (void *)(uintptr_t)(i + 7));
    intptr_t bad = 0;
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad = (intptr_t)r > bad ? (intptr_t)r : bad;
    }
    CHECK(bad == 0);
    if (failures) return 1;
    printf("test_threadpool: all checks passed\n");
    return 0;
}
