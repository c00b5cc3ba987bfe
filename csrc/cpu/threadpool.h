/* threadpool.h: the kernels' parallel loops, on one process-wide pool of threads.
 *
 * Why not OpenMP: libgomp keeps a team of threads per calling thread, and once more
 * teams exist than the machine has cores (any second Python thread that ran a kernel:
 * a guest's runner thread next to the main thread) it stops spinning between parallel
 * regions and every region pays a futex wake-up, which made decode much slower
 * (docs/PERF.md).
 * This pool is shared by every caller (one loop at a time; others wait their turn);
 * between loops its workers spin a little, then spin yielding, then sleep.
 *
 * A loop over [0, n) is cut into n_threads contiguous ranges, range t run by thread t
 * (the caller is thread 0): which thread computes an index never changes the result.
 */
#ifndef REALM_THREADPOOL_H
#define REALM_THREADPOOL_H

#include <stdint.h>

#define REALM_POOL_MAX_THREADS 256

/* fn(ctx, i0, i1, thread) computes indices [i0, i1) as thread `thread` (0 .. n_threads-1) */
typedef void (*realm_range_fn)(void *ctx, int64_t i0, int64_t i1, int thread);

/* Run fn over [0, n) on min(n_threads, n, REALM_POOL_MAX_THREADS) threads; returns when
 * every range is done. n_threads <= 1 or n <= 1 runs fn(ctx, 0, n, 0) in the caller.
 * Not re-entrant: fn must not call realm_parallel_for. */
void realm_parallel_for(int64_t n, int n_threads, realm_range_fn fn, void *ctx);

/* threads a loop of n items would use (what realm_parallel_for passes as `thread` bound) */
int realm_pool_threads(int64_t n, int n_threads);

#endif
