/* fair_lock.h: a first-come, first-served lock (tickets over a mutex and a condition
 * variable): the lock of one model's scratch, shared by every guest of that model.
 * A thread that releases it and asks again queues behind every thread already waiting,
 * so the chunks of a long call and a neighbour's steps interleave (llama.c's drivers
 * take it once per chunk). `serving` counts the grants so far. */
#ifndef REALM_FAIR_LOCK_H
#define REALM_FAIR_LOCK_H

#include <pthread.h>
#include <stdint.h>

typedef struct realm_fair_lock {
    pthread_mutex_t mutex;
    pthread_cond_t turn;
    uint64_t next;    /* the next ticket to hand out */
    uint64_t serving; /* the ticket that holds (or may take) the lock */
} realm_fair_lock;

int realm_fair_lock_init(realm_fair_lock *l); /* 0, or -7 */
void realm_fair_lock_destroy(realm_fair_lock *l);
/* Returns the grant's ticket; *ahead (may be NULL): the grants queued before it. */
uint64_t realm_fair_lock_acquire(realm_fair_lock *l, uint64_t *ahead);
void realm_fair_lock_release(realm_fair_lock *l);
uint64_t realm_fair_lock_grants(realm_fair_lock *l); /* acquisitions so far */

#endif
