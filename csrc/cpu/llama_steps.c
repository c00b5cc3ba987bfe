/* llama_steps.c: see llama_steps.h. realm_step_run is the queue; run_step one step. */
#include "llama_steps.h"
#include "realm_errors.h"

#include <string.h>
#include <time.h>

/* ---- call controls ------------------------------------------------------------------ */

void realm_call_cancel(realm_call_control *c) { __atomic_store_n(&c->cancel, 1, __ATOMIC_RELAXED); }

void realm_call_arm(realm_call_control *c, int64_t deadline_ns) {
    c->deadline_ns = deadline_ns;
    c->chunks = c->first_grant = c->last_grant = c->max_ahead = 0;
    __atomic_store_n(&c->cancel, 0, __ATOMIC_RELAXED);
}

int realm_call_stopped(const realm_call_control *c) {
    if (!c) return 0;
    if (__atomic_load_n(&c->cancel, __ATOMIC_RELAXED)) return 1;
    if (c->deadline_ns > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec >= c->deadline_ns) return 2;
    }
    return 0;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

void realm_llama_chunk_shape(const realm_llama_dims *d, const realm_kv_ring *kv, int64_t max_tokens, int64_t pos,
                             int64_t n_tokens, int32_t n_layers, int64_t *tokens, int32_t *layers) {
    const int64_t window = pos + max_tokens < kv->capacity ? pos + max_tokens : kv->capacity;
    const int64_t attention = REALM_ATTENTION_COST * 2 * (int64_t)d->n_head * d->head_dim * window;
    const int64_t unit = 1 + attention / realm_llama_layer_weight_elems(d); /* token-layers per token and layer */
    const int64_t t = clamp64(max_tokens / unit, 1, n_tokens);
    *tokens = t;
    *layers = (int32_t)clamp64(max_tokens / (t * unit), 1, n_layers);
}

/* ---- jobs ----------------------------------------------------------------------------- */

enum { JOB_LAYERS, JOB_LM_HEAD };

typedef struct realm_step_job {
    int kind;
    /* the model (the same for every job of a queue) */
    const realm_llama_dims *d;
    const realm_llama_layer *layers;
    const realm_tensor *output;
    const float *output_norm;
    realm_llama_scratch *s;
    int n_threads;
    /* the call: rows of x (the caller's, [n_tokens][n_embd]) into out ([n_tokens][n_embd]
     * for layers, [n_tokens][n_vocab] for the LM head) */
    int32_t first, count;
    realm_kv_ring *kv;
    int64_t pos, n_tokens;
    const float *x;
    float *out;
    realm_call_control *ctl;
    /* progress: rows done (through every layer), the current chunk's rows and the next
     * layer it goes through (== first at the start of a chunk) */
    int64_t done, chunk;
    int32_t layer;
    int32_t step_layers; /* layers this job goes through in the running step */
    uint64_t queued_at;  /* the queue's step count when the job last joined the queue */
    int rc, finished;
    struct realm_step_job *next;
} realm_step_job;

int realm_step_queue_init(realm_step_queue *q) {
    memset(q, 0, sizeof *q);
    if (realm_fair_lock_init(&q->lock)) return REALM_ERR_NOMEM;
    if (pthread_mutex_init(&q->mutex, NULL)) {
        realm_fair_lock_destroy(&q->lock);
        return REALM_ERR_NOMEM;
    }
    if (pthread_cond_init(&q->changed, NULL)) {
        pthread_mutex_destroy(&q->mutex);
        realm_fair_lock_destroy(&q->lock);
        return REALM_ERR_NOMEM;
    }
    if (pthread_cond_init(&q->arrived, NULL)) {
        pthread_cond_destroy(&q->changed);
        pthread_mutex_destroy(&q->mutex);
        realm_fair_lock_destroy(&q->lock);
        return REALM_ERR_NOMEM;
    }
    q->step_tokens = REALM_STEP_TOKENS_DEFAULT;
    q->gather_ns = REALM_STEP_GATHER_NS_DEFAULT;
    return 0;
}

void realm_step_queue_destroy(realm_step_queue *q) {
    pthread_cond_destroy(&q->arrived);
    pthread_cond_destroy(&q->changed);
    pthread_mutex_destroy(&q->mutex);
    realm_fair_lock_destroy(&q->lock);
}

static void unlink_job(realm_step_queue *q, realm_step_job *j) {
    realm_step_job **p = &q->head, *prev = NULL;
    while (*p && *p != j) prev = *p, p = &(*p)->next;
    if (!*p) return;
    *p = j->next;
    if (q->tail == j) q->tail = prev;
    j->next = NULL;
}

static void push_back(realm_step_queue *q, realm_step_job *j) {
    j->next = NULL;
    j->queued_at = q->steps;
    if (q->tail) q->tail->next = j;
    else q->head = j;
    q->tail = j;
}

static void finish(realm_step_queue *q, realm_step_job *j, int rc) {
    unlink_job(q, j);
    j->rc = rc;
    j->finished = 1;
}

/* ---- choosing a step (the queue's mutex held) ----------------------------------------- */

/* Start j's next chunk of `rows` rows at most (`alone`: the lone chunk shape; else at
 * most `share` rows, fewer as its window grows): sets j->chunk and j->step_layers; 0,
 * or the code j fails with. */
static int start_chunk(realm_step_job *j, int alone, int64_t rows, int64_t share) {
    const int64_t left = j->n_tokens - j->done, p = j->pos + j->done;
    if (j->kind == JOB_LM_HEAD) {
        j->chunk = clamp64(left, 1, alone ? j->s->lm_rows : rows);
        return 0;
    }
    int64_t t = 1;
    int32_t g = j->count;
    if (left > 1 && alone) {
        realm_llama_chunk_shape(j->d, j->kv, j->s->max_tokens, p, left, j->count, &t, &g);
    } else if (left > 1) {
        int32_t unused;
        realm_llama_chunk_shape(j->d, j->kv, share < rows ? share : rows, p, left, j->count, &t, &unused);
    }
    if (t > realm_kv_chunk_limit(j->kv, p)) t = realm_kv_chunk_limit(j->kv, p); /* see llama.c's ring_chunk */
    j->chunk = t;
    j->step_layers = g;
    return realm_llama_seq_check(j->d, j->first, j->count, j->kv, p, t, j->s, j->n_threads);
}

/* may a and b share a step? (the same threads too: the attention scratch is reserved
 * per ring for the threads its calls use) */
static int same_kind(const realm_step_job *a, const realm_step_job *b) {
    return a->kind == b->kind && a->n_threads == b->n_threads &&
           (a->kind == JOB_LM_HEAD || (a->first == b->first && a->count == b->count));
}

/* is a queued job that may share h's step a decode row (a layers call of one row left)? */
static int decode_queued(const realm_step_job *h) {
    if (h->kind != JOB_LAYERS) return 0;
    for (const realm_step_job *j = h; j; j = j->next)
        if (same_kind(h, j) && j->layer == j->first && j->n_tokens - j->done == 1) return 1;
    return 0;
}

/* Jobs stopped by their controls leave the queue; then the next step's jobs go into
 * step[] (returns how many; 0 when the queue is empty). */
static int pick(realm_step_queue *q, realm_step_job **step) {
    for (realm_step_job *j = q->head, *next; j; j = next) {
        next = j->next;
        const int mid_chunk = j->kind == JOB_LAYERS && j->layer != j->first;
        if (!mid_chunk && realm_call_stopped(j->ctl)) finish(q, j, REALM_ERR_CANCELLED);
    }
    while (q->head) {
        realm_step_job *h = q->head;
        if (h->kind == JOB_LAYERS && h->layer != h->first) { /* the rest of a lone chunk */
            h->step_layers = (int32_t)clamp64(h->step_layers, 1, h->first + h->count - h->layer);
            step[0] = h;
            return 1;
        }
        const int64_t cap = h->kind == JOB_LM_HEAD ? h->s->lm_rows : h->s->max_tokens;
        const int alone = h->next == NULL;
        const int64_t share = decode_queued(h) ? q->step_tokens : REALM_STEP_PROMPT_ROWS;
        int rc = start_chunk(h, alone, cap, share);
        if (rc) {
            finish(q, h, rc);
            continue;
        }
        int n = 1;
        int64_t rows = h->chunk;
        if (h->kind == JOB_LAYERS && !alone) h->step_layers = h->count;
        for (realm_step_job *j = h->next, *next; j && rows < cap && n < REALM_STEP_MAX_SEQS; j = next) {
            next = j->next;
            if (!same_kind(h, j) || (j->kind == JOB_LAYERS && j->layer != j->first)) continue;
            rc = start_chunk(j, 0, cap - rows, share);
            if (rc) {
                finish(q, j, rc);
                continue;
            }
            j->step_layers = j->count;
            step[n++] = j;
            rows += j->chunk;
        }
        step[0] = h;
        /* the rows of larger calls first (llama.h's realm_llama_seq): a stable insertion sort */
        for (int i = 1; i < n; i++)
            for (int k = i; k > 0 && step[k - 1]->n_tokens < step[k]->n_tokens; k--) {
                realm_step_job *t = step[k];
                step[k] = step[k - 1];
                step[k - 1] = t;
            }
        return n;
    }
    return 0;
}

/* may j start its next chunk in a step shared with others? */
static int ready_to_share(const realm_step_job *j) { return j->kind == JOB_LM_HEAD || j->layer == j->first; }

/* The jobs a step of h's kind expects (llama_steps.h): the distinct rings of the last
 * two layers steps; for the LM head, the calls the last layers step finished (each goes
 * on to its LM head; a prompt still under way does not) or the jobs of the larger of
 * the last two LM head steps. */
static uint64_t expected_jobs(const realm_step_queue *q, const realm_step_job *h) {
    if (h->kind == JOB_LM_HEAD) {
        const uint64_t heads = q->head_jobs[0] > q->head_jobs[1] ? q->head_jobs[0] : q->head_jobs[1];
        return heads > q->layers_done ? heads : q->layers_done;
    }
    uint64_t n = (uint64_t)q->n_rings[0];
    for (int i = 0; i < q->n_rings[1]; i++) {
        int seen = 0;
        for (int k = 0; k < q->n_rings[0] && !seen; k++) seen = q->rings[1][i] == q->rings[0][k];
        n += !seen;
    }
    return n;
}

void realm_step_queue_forget(realm_step_queue *q, const void *ring) {
    pthread_mutex_lock(&q->mutex);
    int seen = 0;
    for (int s = 0; s < 2; s++) {
        int kept = 0;
        for (int i = 0; i < q->n_rings[s]; i++)
            if (q->rings[s][i] != ring) q->rings[s][kept++] = q->rings[s][i];
        seen |= kept < q->n_rings[s];
        q->n_rings[s] = kept;
    }
    if (seen) { /* its last token's LM head was among those steps' */
        for (int s = 0; s < 2; s++) q->head_jobs[s] -= q->head_jobs[s] > 0;
        q->layers_done -= q->layers_done > 0;
    }
    pthread_cond_broadcast(&q->arrived); /* a step gathering for it looks again */
    pthread_mutex_unlock(&q->mutex);
}

/* The first queued job after the head that is ready to share a step of another kind;
 * NULL if none. */
static realm_step_job *other_kind_ready(const realm_step_queue *q) {
    for (realm_step_job *j = q->head->next; j; j = j->next)
        if (!same_kind(q->head, j) && ready_to_share(j)) return j;
    return NULL;
}

/* Wait (the mutex held, at most q->gather_ns) until the queue holds as many jobs that
 * can share the head's step as it expects; a head short of them that has not already
 * waited a step yields the front, once, to a ready job of another kind. */
static void gather(realm_step_queue *q) {
    if (q->gather_ns <= 0) return;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline); /* the condition variable's clock */
    deadline.tv_sec += (time_t)(q->gather_ns / 1000000000);
    deadline.tv_nsec += (long)(q->gather_ns % 1000000000);
    if (deadline.tv_nsec >= 1000000000) deadline.tv_sec++, deadline.tv_nsec -= 1000000000;
    int yielded = 0;
    for (;;) {
        realm_step_job *h = q->head;
        if (!h || !ready_to_share(h)) return; /* nothing to share */
        const uint64_t want = expected_jobs(q, h);
        if (want <= 1) return;
        uint64_t ready = 0;
        for (const realm_step_job *j = h; j; j = j->next) ready += same_kind(h, j) && ready_to_share(j);
        if (ready >= want) return;
        realm_step_job *other = yielded || q->steps - h->queued_at >= 2 ? NULL : other_kind_ready(q);
        if (other) { /* to the front; its place in the round-robin order is kept otherwise */
            unlink_job(q, other);
            other->next = q->head;
            q->head = other;
            if (!q->tail) q->tail = other;
            yielded = 1;
            continue;
        }
        if (pthread_cond_timedwait(&q->arrived, &q->mutex, &deadline)) return; /* timed out */
    }
}

/* ---- running a step (the model's lock held) ------------------------------------------- */

/* the step's rows through its layers, or the LM head, into each job's output */
static int run_step(realm_step_job **step, int n) {
    realm_step_job *h = step[0];
    const realm_llama_dims *d = h->d;
    realm_llama_scratch *s = h->s;
    const int64_t E = d->n_embd;
    realm_llama_seq seqs[REALM_STEP_MAX_SEQS];
    for (int i = 0; i < n; i++)
        seqs[i] = (realm_llama_seq){step[i]->kv, step[i]->pos + step[i]->done, step[i]->chunk, step[i]->n_tokens,
                                    step[i]->done};
    if (h->kind == JOB_LM_HEAD) {
        if (n == 1)
            return realm_llama_lm_head_rows(d, h->output_norm, h->output, seqs, 1, h->x + h->done * E,
                                            h->out + h->done * d->n_vocab, s, h->n_threads);
        int64_t row = 0;
        for (int i = 0; i < n; row += step[i]->chunk, i++)
            memcpy(s->hidden + row * E, step[i]->x + step[i]->done * E, (size_t)(step[i]->chunk * E) * sizeof(float));
        const int rc =
            realm_llama_lm_head_rows(d, h->output_norm, h->output, seqs, n, s->hidden, s->logits, s, h->n_threads);
        if (rc) return rc;
        row = 0;
        for (int i = 0; i < n; row += step[i]->chunk, i++)
            memcpy(step[i]->out + step[i]->done * d->n_vocab, s->logits + row * d->n_vocab,
                   (size_t)(step[i]->chunk * d->n_vocab) * sizeof(float));
        return 0;
    }
    if (n == 1) { /* in place in the caller's rows, as one call alone always ran */
        const float *in = (h->layer == h->first ? h->x : h->out) + h->done * E;
        return realm_llama_layers_rows(d, h->layers, h->layer, h->step_layers, seqs, 1, in, h->out + h->done * E, s,
                                       h->n_threads);
    }
    int64_t row = 0;
    for (int i = 0; i < n; row += step[i]->chunk, i++)
        memcpy(s->hidden + row * E, step[i]->x + step[i]->done * E, (size_t)(step[i]->chunk * E) * sizeof(float));
    const int rc =
        realm_llama_layers_rows(d, h->layers, h->first, h->count, seqs, n, s->hidden, s->hidden, s, h->n_threads);
    if (rc) return rc;
    row = 0;
    for (int i = 0; i < n; row += step[i]->chunk, i++)
        memcpy(step[i]->out + step[i]->done * E, s->hidden + row * E, (size_t)(step[i]->chunk * E) * sizeof(float));
    return 0;
}

/* each job's progress after its step (the queue's mutex held) */
static void advance(realm_step_queue *q, realm_step_job **step, int n, int rc) {
    int64_t rows = 0;
    uint64_t calls_done = 0;
    for (int i = 0; i < n; i++) {
        realm_step_job *j = step[i];
        rows += j->chunk;
        if (rc) {
            finish(q, j, rc);
            continue;
        }
        if (j->kind == JOB_LAYERS) j->layer += j->step_layers;
        if (j->kind == JOB_LM_HEAD || j->layer == j->first + j->count) { /* the chunk is through */
            j->done += j->chunk;
            j->layer = j->first;
        }
        unlink_job(q, j);
        if (j->done == j->n_tokens) {
            j->rc = 0;
            j->finished = 1;
            calls_done++;
        } else {
            push_back(q, j); /* round-robin */
        }
    }
    if (step[0]->kind == JOB_LM_HEAD) {
        q->head_jobs[1] = q->head_jobs[0];
        q->head_jobs[0] = (uint64_t)n;
    } else {
        memcpy(q->rings[1], q->rings[0], sizeof q->rings[0]);
        q->n_rings[1] = q->n_rings[0];
        for (int i = 0; i < n; i++) q->rings[0][i] = step[i]->kv;
        q->n_rings[0] = n;
        q->layers_done = calls_done;
    }
    q->steps++;
    q->rows += (uint64_t)rows;
    q->jobs += (uint64_t)n;
    if ((uint64_t)n > q->max_jobs) q->max_jobs = (uint64_t)n;
}

/* a step of the job's call: its lock ticket, and the steps that ran while it waited */
static void note_step(realm_call_control *c, uint64_t ticket, uint64_t ahead) {
    if (!c) return;
    if (!c->chunks++) c->first_grant = ticket;
    c->last_grant = ticket;
    if (ahead > c->max_ahead) c->max_ahead = ahead;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Queue j and wait until it is finished, running steps (for any job) whenever none runs. */
static int realm_step_run(realm_step_queue *q, realm_step_job *j) {
    realm_step_job *step[REALM_STEP_MAX_SEQS];
    pthread_mutex_lock(&q->mutex);
    push_back(q, j);
    pthread_cond_signal(&q->arrived);
    while (!j->finished) {
        if (q->running) {
            pthread_cond_wait(&q->changed, &q->mutex);
            continue;
        }
        q->running = 1;
        const uint64_t t0 = now_ns();
        gather(q);
        q->gather_ns_spent += now_ns() - t0;
        const int n = pick(q, step);
        if (n == 0) { /* only stopped jobs were left: j among them */
            q->running = 0;
            pthread_cond_broadcast(&q->changed);
            continue;
        }
        pthread_mutex_unlock(&q->mutex);
        const uint64_t ticket = realm_fair_lock_acquire(&q->lock, NULL);
        const uint64_t t1 = now_ns();
        const int rc = run_step(step, n);
        const uint64_t t2 = now_ns();
        realm_fair_lock_release(&q->lock);
        pthread_mutex_lock(&q->mutex);
        q->run_ns += t2 - t1;
        for (int i = 0; i < n; i++) note_step(step[i]->ctl, ticket, q->steps - step[i]->queued_at);
        advance(q, step, n, rc);
        q->running = 0;
        pthread_cond_broadcast(&q->changed);
    }
    pthread_mutex_unlock(&q->mutex);
    return j->rc;
}

/* ---- the calls -------------------------------------------------------------------------- */

int realm_llama_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                               int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x,
                               float *out, realm_llama_scratch *s, int n_threads, realm_step_queue *q,
                               realm_call_control *ctl, int64_t *done) {
    *done = 0;
    if (!d || !layers || !kv || !s || !q || !x || !out || count <= 0 || first < 0 || n_tokens <= 0 || pos < 0 ||
        n_threads <= 0)
        return REALM_ERR_INVALID;
    for (int32_t l = first; l < first + count; l++)
        if (realm_llama_check_layer(d, &layers[l])) return REALM_ERR_INVALID;
    realm_step_job j = {.kind = JOB_LAYERS, .d = d, .layers = layers, .s = s, .n_threads = n_threads,
                        .first = first, .count = count, .kv = kv, .pos = pos, .n_tokens = n_tokens,
                        .x = x, .out = out, .ctl = ctl, .layer = first};
    const int rc = realm_step_run(q, &j);
    *done = j.done;
    return rc;
}

int realm_llama_lm_head_chunked(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                                const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s,
                                int n_threads, realm_step_queue *q, realm_call_control *ctl, int64_t *done) {
    *done = 0;
    if (!d || !output || !output_norm || !s || !q || !x || !logits || n_tokens <= 0 || n_threads <= 0)
        return REALM_ERR_INVALID;
    realm_step_job j = {.kind = JOB_LM_HEAD, .d = d, .output = output, .output_norm = output_norm, .s = s,
                        .n_threads = n_threads, .x = x, .out = logits, .n_tokens = n_tokens, .ctl = ctl};
    const int rc = realm_step_run(q, &j);
    *done = j.done;
    return rc;
}
