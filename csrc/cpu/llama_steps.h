/* llama_steps.h: every guest's calls on one model, run as batched steps.
 *
 * A call to a model's layers or its LM head (from any guest, in any thread) becomes a
 * job in the model's step queue. One thread at a time runs a step: it takes the job at
 * the head of the queue and, where they can go together, the other queued jobs of the
 * same kind (the same layer range, or the LM head), and runs their next rows as one
 * batch under the model's lock: every matmul over all the rows (each weight block read
 * once), RoPE, the K/V append and attention per job at its own positions in its own
 * ring, and each job's results written to its own output. The others wait; a thread
 * that finds no step running runs the next one (whoever calls leads; there is no
 * thread of the queue's own). A job's rows compute the same floats in a batch as alone.
 *
 * Which rows go in a step (the policy; README "Many guests on one model"):
 *  - A decode job (one row left) runs every layer of its range in one step, with every
 *    other queued job that is at the start of a chunk of the same range.
 *  - A longer job at the start of a chunk, with no other job queued, takes the chunk of
 *    realm_llama_chunk_shape as before batching: `tokens` rows through `layers` layers
 *    per step (about max_tokens token-layers: the bound on what a neighbour waits for),
 *    then the next layers in the next steps; in the middle of a chunk it runs alone.
 *  - With other jobs queued, a longer job at the start of a chunk adds a chunk to the
 *    step, through every layer: at most the queue's step_tokens rows when a decode job
 *    shares the step (prefill rides along with the neighbours' decode rows and delays
 *    them by at most that many tokens), else REALM_STEP_PROMPT_ROWS (prompts together);
 *    fewer as its attention window grows, as in realm_llama_chunk_shape.
 *  - At most scratch->max_tokens rows (REALM_STEP_MAX_SEQS jobs) per layer step, and
 *    scratch->lm_rows per LM head step. Jobs are served round-robin: after its step a
 *    job with rows left goes to the back of the queue.
 *  - Before a step that could take others, the thread that runs it waits, at most
 *    gather_ns, for the jobs it expects: for a layers step, one per ring that the last
 *    two layers steps served (less the rings closed since: realm_step_queue_forget);
 *    for an LM head step, as many as the last layers step
 *    finished calls of, or the larger of the last two LM head steps had. Guests
 *    decoding together reach the queue a little apart (each samples its token in
 *    between), and without the wait their steps would split into several (each reading
 *    the weights). A guest alone never waits (its steps had one job).
 *  - A step short of the jobs it expects first lets a step of another kind run, once,
 *    if one is ready (the head of the queue then waits at most one step longer): each
 *    guest's token is a layers call then an LM head call, and guests that fell into two
 *    groups, one at its layers while the other is at its LM head, would otherwise stay
 *    apart, every step reading the weights for half of them.
 * Between a job's chunks, a stop of its call control ends it alone (-8); a job whose
 * chunk fails its ring's checks fails alone with that code; the others' rows are exact.
 */
#ifndef REALM_LLAMA_STEPS_H
#define REALM_LLAMA_STEPS_H

#include <pthread.h>
#include <stdint.h>

#include "fair_lock.h"
#include "llama.h"

/* A long chunk's attention over a window of W positions counts as REALM_ATTENTION_COST
 * matmul multiply-adds per attention multiply-add (2 * n_head * head_dim * W of them):
 * attention, in f16 and f32 with a softmax, runs slower per operation than the integer
 * dot products, and slower still in few-token chunks (each reads the window again). The
 * factor trades a neighbour's wait against the long call's speed (SECURITY.md). */
#define REALM_ATTENTION_COST 8

/* A call's stop signals: `cancel` is set from any thread (realm_call_cancel), and
 * `deadline_ns` is CLOCK_MONOTONIC nanoseconds (0: none). Owned by the guest's host.
 * The queue also writes what the call's steps met at the lock, for measurement. */
typedef struct {
    int32_t cancel;
    int64_t deadline_ns;
    uint64_t chunks;                  /* steps the call took part in (lock grants) */
    uint64_t first_grant, last_grant; /* their tickets (grant numbers of the model's lock) */
    uint64_t max_ahead;               /* the most steps (of other calls) one of its steps waited for */
} realm_call_control;

void realm_call_cancel(realm_call_control *c);
void realm_call_arm(realm_call_control *c, int64_t deadline_ns); /* clears cancel and the counts */
/* 0 (go on), 1 (cancelled) or 2 (past the deadline); c may be NULL (never stops) */
int realm_call_stopped(const realm_call_control *c);

/* The next chunk of a lone call at position pos with n_tokens left over n_layers layers:
 * *tokens tokens through *layers layers at a time, about max_tokens token-layers of work
 * (one token through one layer's matmuls, attention counted by REALM_ATTENTION_COST). */
void realm_llama_chunk_shape(const realm_llama_dims *d, const realm_kv_ring *kv, int64_t max_tokens, int64_t pos,
                             int64_t n_tokens, int32_t n_layers, int64_t *tokens, int32_t *layers);

struct realm_step_job;

/* One model's queue of jobs; embeds the model's lock (which also guards its scratch). */
typedef struct {
    realm_fair_lock lock;
    pthread_mutex_t mutex;
    pthread_cond_t changed; /* a step ended */
    pthread_cond_t arrived; /* a job joined the queue */
    struct realm_step_job *head, *tail;
    int running;            /* a step is being gathered or run */
    int64_t step_tokens;    /* prefill rows a job adds to a step shared with decode rows */
    int64_t gather_ns;      /* the longest a step waits for the calls it expects */
    uint64_t head_jobs[2];  /* jobs in the last two LM head steps */
    uint64_t layers_done;   /* calls the last layers step finished (each may go on to its LM head) */
    /* the rings of the last two layers steps' jobs (identities only, never dereferenced) */
    const void *rings[2][REALM_STEP_MAX_SEQS];
    int n_rings[2];
    /* counts, for measurement: steps run, rows and jobs in them, the most jobs in one,
     * nanoseconds spent running steps and gathering jobs for them */
    uint64_t steps, rows, jobs, max_jobs, run_ns, gather_ns_spent;
} realm_step_queue;

#define REALM_STEP_TOKENS_DEFAULT 1
#define REALM_STEP_PROMPT_ROWS 8 /* prefill rows per job in a step of prompts only */
#define REALM_STEP_GATHER_NS_DEFAULT 3000000

int realm_step_queue_init(realm_step_queue *q); /* 0, or -7 */
void realm_step_queue_destroy(realm_step_queue *q);
/* The ring is closed: the steps no longer expect its calls (a conversation that ended
 * would otherwise hold the next steps for gather_ns each, until it leaves the last two
 * layers steps' rings), and the LM head steps one fewer where it took part in them. */
void realm_step_queue_forget(realm_step_queue *q, const void *ring);

/* Layers first .. first+count-1 (of `layers`, indexed by layer number) over n_tokens
 * rows of x at positions pos .. into out (may be x), as jobs of the queue q (see the top
 * of this file). A stop of `ctl` between chunks ends the call with -8: *done then says
 * how many tokens every layer in range has taken (the ring holds positions up to
 * pos + *done - 1 of them; out's rows are unspecified). Other codes as the layer's. */
int realm_llama_forward_layers(const realm_llama_dims *d, const realm_llama_layer *layers, int32_t first,
                               int32_t count, realm_kv_ring *kv, int64_t pos, int64_t n_tokens, const float *x,
                               float *out, realm_llama_scratch *s, int n_threads, realm_step_queue *q,
                               realm_call_control *ctl, int64_t *done);

/* realm_llama_lm_head over n_tokens rows as jobs of q, checking `ctl` between chunks
 * (-8: *done rows were written). */
int realm_llama_lm_head_chunked(const realm_llama_dims *d, const float *output_norm, const realm_tensor *output,
                                const float *x, int64_t n_tokens, float *logits, realm_llama_scratch *s,
                                int n_threads, realm_step_queue *q, realm_call_control *ctl, int64_t *done);

#endif
