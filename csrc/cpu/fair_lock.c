/* fair_lock.c: see fair_lock.h. */
#include "fair_lock.h"
#include "realm_errors.h"

int realm_fair_lock_init(realm_fair_lock *l) {
    l->next = l->serving = 0;
    if (pthread_mutex_init(&l->mutex, NULL)) return REALM_ERR_NOMEM;
    if (pthread_cond_init(&l->turn, NULL)) {
        pthread_mutex_destroy(&l->mutex);
        return REALM_ERR_NOMEM;
    }
    return 0;
}

void realm_fair_lock_destroy(realm_fair_lock *l) {
    pthread_cond_destroy(&l->turn);
    pthread_mutex_destroy(&l->mutex);
}

uint64_t realm_fair_lock_acquire(realm_fair_lock *l, uint64_t *ahead) {
    pthread_mutex_lock(&l->mutex);
    const uint64_t ticket = l->next++;
    if (ahead) *ahead = ticket - l->serving;
    while (ticket != l->serving) pthread_cond_wait(&l->turn, &l->mutex);
    pthread_mutex_unlock(&l->mutex);
    return ticket;
}

void realm_fair_lock_release(realm_fair_lock *l) {
    pthread_mutex_lock(&l->mutex);
    l->serving++;
    pthread_cond_broadcast(&l->turn); /* the next ticket's holder is among the waiters */
    pthread_mutex_unlock(&l->mutex);
}

uint64_t realm_fair_lock_grants(realm_fair_lock *l) {
    pthread_mutex_lock(&l->mutex);
    const uint64_t n = l->serving + (l->next > l->serving); /* released ones, and the holder's */
    pthread_mutex_unlock(&l->mutex);
    return n;
}
