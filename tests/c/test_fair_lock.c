/* test_fair_lock.c: the model's lock (csrc/cpu/fair_lock.c) grants in the order threads
 * asked, counts its grants and what each waiter found ahead of it; a call's control
 * (csrc/cpu/llama.c) stops on cancel and on its deadline. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "check.h"
#include "fair_lock.h"
#include "llama_steps.h"

#define WAITERS 6

static realm_fair_lock lock;
static atomic_int order[WAITERS], n_done;
static uint64_t ahead_of[WAITERS];

static void *waiter(void *arg) {
    const int id = (int)(intptr_t)arg;
    realm_fair_lock_acquire(&lock, &ahead_of[id]);
    order[atomic_fetch_add(&n_done, 1)] = id;
    realm_fair_lock_release(&lock);
    return NULL;
}

/* wait until `tickets` tickets are out (every earlier waiter is queued) */
static void wait_for_tickets(uint64_t tickets) {
    for (;;) {
        pthread_mutex_lock(&lock.mutex);
        const uint64_t next = lock.next;
        pthread_mutex_unlock(&lock.mutex);
        if (next >= tickets) return;
        sched_yield();
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(void) {
    CHECK(realm_fair_lock_init(&lock) == 0);
    /* the main thread holds the lock while the waiters queue, one after the other */
    CHECK(realm_fair_lock_acquire(&lock, NULL) == 0);
    CHECK(realm_fair_lock_grants(&lock) == 1);
    pthread_t threads[WAITERS];
    for (int i = 0; i < WAITERS; i++) {
        pthread_create(&threads[i], NULL, waiter, (void *)(intptr_t)i);
        wait_for_tickets(2 + (uint64_t)i);
    }
    realm_fair_lock_release(&lock);
    for (int i = 0; i < WAITERS; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < WAITERS; i++) {
        CHECK(order[i] == i);              /* first come, first served */
        CHECK(ahead_of[i] == (uint64_t)i + 1); /* the holder and every earlier waiter */
    }
    CHECK(realm_fair_lock_grants(&lock) == 1 + WAITERS);
    realm_fair_lock_destroy(&lock);

    realm_call_control c = {0};
    CHECK(realm_call_stopped(NULL) == 0);
    realm_call_arm(&c, 0);
    CHECK(realm_call_stopped(&c) == 0);
    realm_call_cancel(&c);
    CHECK(realm_call_stopped(&c) == 1);
    realm_call_arm(&c, now_ns() + 1000000000); /* a new call: cancel cleared, 1 s left */
    CHECK(realm_call_stopped(&c) == 0);
    realm_call_arm(&c, now_ns() - 1);
    CHECK(realm_call_stopped(&c) == 2);

    if (failures) {
        fprintf(stderr, "test_fair_lock: %d checks failed\n", failures);
        return 1;
    }
    printf("test_fair_lock: all checks passed\n");
    return 0;
}
