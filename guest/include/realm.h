/* realm.h: the host ABI of realm-ext, for WebAssembly guest authors (DESIGN.md).
 *
 * A guest is a wasm32 module. It imports the functions below from module "env" and
 * either exports its linear memory as "memory" or imports it as "env.memory" (then the
 * host creates it with the guest's memory cap as its maximum). Every pointer is a u32
 * byte offset into that memory. `_len` of f32/u32 data counts elements; `out_len` /
 * `out_cap` of a byte blob or text counts bytes. Every import returns >= 0 on success
 * and one of the REALM_ERR_* codes below on failure; the message of the last failure
 * is read back with realm_last_error.
 *
 * Structs are little-endian, naturally aligned, and versioned: fields are only ever
 * appended, the version field grows when they are, and a reader accepts any version
 * at least as new as the fields it reads.
 */
#ifndef REALM_H
#define REALM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes --------------------------------------------------------------- */

/* REALM_OK and REALM_ERR_INVALID .. REALM_ERR_INTERNAL, the one definition that the
 * host's kernels share: csrc/realm_errors.h (build with -I<realm-ext>/csrc). */
#include "realm_errors.h"

/* ---- realm_model_info ---------------------------------------------------------- */

#define REALM_MODEL_INFO_VERSION 1
#define REALM_NO_TOKEN 0xFFFFFFFFu /* bos_id / eos_id / unk_id when the file has none */

/* flags */
#define REALM_MODEL_ADD_BOS 1u          /* the tokenizer prepends BOS to a prompt */
#define REALM_MODEL_ADD_EOS 2u          /* ... and appends EOS */
#define REALM_MODEL_ADD_SPACE_PREFIX 4u /* SentencePiece's dummy prefix ("hi" -> "▁hi") */
#define REALM_MODEL_CLEAN_SPACES 8u     /* detokenizing removes the spaces before ? ! . , and
                                           some apostrophes (clean_up_tokenization_spaces) */
#define REALM_MODEL_IGNORE_MERGES 16u   /* byte-level BPE: a word that is a token is taken
                                           whole, without merges (Llama 3) */

typedef struct realm_model_info {
    uint32_t version; /* REALM_MODEL_INFO_VERSION */
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t n_ff;
    uint32_t bos_id;
    uint32_t eos_id;
    uint32_t unk_id;
    uint32_t flags; /* REALM_MODEL_* */
} realm_model_info_t;
_Static_assert(sizeof(realm_model_info_t) == 48, "realm_model_info is 12 u32");

/* ---- the vocabulary blob (realm_vocab_size / realm_vocab_read) ----------------- */

#define REALM_VOCAB_MAGIC 0x434F5652u /* "RVOC" */
#define REALM_VOCAB_VERSION 2
#define REALM_VOCAB_SPM 1  /* tokenizer.ggml.model "llama": SentencePiece BPE */
#define REALM_VOCAB_GPT2 2 /* "gpt2": byte-level BPE with merges */

/* The pre-tokenizer of a REALM_VOCAB_GPT2 blob (tokenizer.ggml.pre): how text is split
 * into words before the merges, as llama.cpp's regex_exprs for that value split it. */
#define REALM_PRE_NONE 0   /* a REALM_VOCAB_SPM blob */
#define REALM_PRE_GPT2 1   /* "gpt2", "gpt-2" */
#define REALM_PRE_LLAMA3 2 /* "llama-bpe" (Llama 3) */
#define REALM_PRE_QWEN2 3  /* "qwen2" */
#define REALM_PRE_SMOLLM 4 /* "smollm": every digit its own word, then "gpt2" */

/* Token attributes (llama.cpp's llama_token_attr), a u32 per token in a version 2
 * blob: the GGUF type's bit, plus what llama.cpp derives from the vocabulary (CONTROL
 * on end-of-generation tokens such as "<|im_end|>" of any type, UNUSED on control
 * tokens named "unused", LSTRIP / RSTRIP for some models). */
#define REALM_ATTR_UNKNOWN 1u
#define REALM_ATTR_UNUSED 2u
#define REALM_ATTR_NORMAL 4u
#define REALM_ATTR_CONTROL 8u
#define REALM_ATTR_USER_DEFINED 16u
#define REALM_ATTR_BYTE 32u
#define REALM_ATTR_LSTRIP 128u /* a special token eats the whitespace before it */
#define REALM_ATTR_RSTRIP 256u /* ... and after it */

/* GGUF token types (tokenizer.ggml.token_type), stored as u32 */
#define REALM_TOKEN_NORMAL 1
#define REALM_TOKEN_UNKNOWN 2
#define REALM_TOKEN_CONTROL 3
#define REALM_TOKEN_USER_DEFINED 4
#define REALM_TOKEN_UNUSED 5
#define REALM_TOKEN_BYTE 6

/* The blob starts with this header; every *_off is a byte offset from the blob's
 * start, 4-byte aligned, and every array lies inside the blob:
 *   float    scores[n_tokens]          at scores_off
 *   uint32_t types[n_tokens]           at types_off  (REALM_TOKEN_*)
 *   uint32_t token_ends[n_tokens]      at token_ends_off: token i's UTF-8 text is
 *            text[token_ends[i-1] .. token_ends[i]) (token_ends[-1] = 0), no NUL
 *   uint32_t merge_ends[n_merges]      at merge_ends_off: the same for the merges
 *            ("a b" strings), whose text follows the tokens' in the text area
 *   uint8_t  text[text_bytes]          at text_off
 * and from version 2 on:
 *   uint32_t eog_ids[n_eog]            at eog_off: the end-of-generation tokens (EOS,
 *            EOT, EOM and the others llama.cpp marks), ascending
 *   uint32_t attrs[n_tokens]           at attrs_off (REALM_ATTR_*)
 * A version 1 blob has pre REALM_PRE_NONE, the attributes of its types, and EOS as
 * its only end-of-generation token. */
typedef struct realm_vocab_header {
    uint32_t magic;   /* REALM_VOCAB_MAGIC */
    uint32_t version; /* REALM_VOCAB_VERSION */
    uint32_t total_bytes;
    uint32_t kind; /* REALM_VOCAB_SPM or REALM_VOCAB_GPT2 */
    uint32_t n_tokens;
    uint32_t n_merges;
    uint32_t bos_id, eos_id, unk_id; /* REALM_NO_TOKEN when absent */
    uint32_t flags;                  /* REALM_MODEL_* */
    uint32_t scores_off, types_off, token_ends_off, merge_ends_off, text_off, text_bytes;
    /* version 2 */
    uint32_t pre; /* REALM_PRE_*: REALM_PRE_NONE for SPM, never for GPT2 */
    uint32_t eog_off, n_eog;
    uint32_t attrs_off;
} realm_vocab_header_t;
_Static_assert(sizeof(realm_vocab_header_t) == 80, "realm_vocab_header is 20 u32");
#define REALM_VOCAB_HEADER_V1_BYTES 64 /* what a version 1 blob's header holds */

/* ---- realm_generate's parameters ----------------------------------------------- */

#define REALM_PARAMS_VERSION 1

/* flags */
#define REALM_GEN_ADD_BOS 1u     /* add the model's special tokens to the prompt: BOS
                                    first (and EOS last) when its tokenizer asks for it */
#define REALM_GEN_STOP_AT_EOS 2u /* stop when EOS is sampled (not emitted) */
#define REALM_GEN_PER_LAYER 4u   /* call realm_forward_layer per layer instead of
                                    realm_forward_layers once (same results) */

typedef struct realm_params {
    uint32_t version;       /* REALM_PARAMS_VERSION */
    uint32_t max_tokens;    /* tokens to generate at most */
    float temperature;      /* <= 0: greedy (argmax) */
    int32_t top_k;          /* <= 0: off */
    float top_p;            /* >= 1: off */
    float min_p;            /* <= 0: off */
    float repeat_penalty;   /* 1: off; applied to the last repeat_last_n tokens */
    uint32_t repeat_last_n; /* 0: off */
    uint32_t n_ctx;         /* KV ring positions; 0: the model's n_ctx_train. A longer
                               conversation slides over the last n_ctx positions */
    uint32_t n_batch;       /* prompt tokens per forward call; 0: the whole prompt */
    uint32_t flags;         /* REALM_GEN_* */
    uint32_t reserved;      /* 0 */
    uint64_t seed;          /* PRNG seed: same seed, same tokens */
} realm_params_t;
_Static_assert(sizeof(realm_params_t) == 56, "realm_params is 12 u32 + u64");

/* ---- realm_chat_generate's statistics ------------------------------------------ */

#define REALM_CHAT_STATS_VERSION 1

/* flags */
#define REALM_CHAT_RESTARTED 1u /* the ring could not be rewound to the common prefix (it
                                   had wrapped past it) and started over at position 0 */

/* What one realm_chat_generate call did (realm_generate's calls do the same steps on a
 * ring of their own, with nothing to reuse). */
typedef struct realm_chat_stats {
    uint32_t version;     /* REALM_CHAT_STATS_VERSION */
    uint32_t n_prompt;    /* tokens of this call's prompt, BOS included */
    uint32_t n_cached;    /* of them, reused from the conversation's ring (not evaluated) */
    uint32_t n_evaluated; /* prompt positions evaluated: n_prompt - n_cached on success */
    uint32_t n_generated; /* tokens generated (the stop token not counted) */
    uint32_t n_held;      /* positions the ring holds for the next call */
    uint32_t flags;       /* REALM_CHAT_* */
    uint32_t reserved;    /* 0 */
} realm_chat_stats_t;
_Static_assert(sizeof(realm_chat_stats_t) == 32, "realm_chat_stats is 8 u32");

/* ---- the imports (module "env") ----------------------------------------------- */

#define REALM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

/* Writes min(out_len, sizeof(realm_model_info_t)) bytes of the model's realm_model_info
 * (out_len >= 48) and returns the count written. */
REALM_IMPORT(realm_model_info)
int32_t realm_model_info(uint32_t model_id, uint32_t out_ptr, uint32_t out_len);

/* Size in bytes of the model's vocabulary blob, and a copy of it (out_len >= size). */
REALM_IMPORT(realm_vocab_size) int32_t realm_vocab_size(uint32_t model_id);
REALM_IMPORT(realm_vocab_read)
int32_t realm_vocab_read(uint32_t model_id, uint32_t out_ptr, uint32_t out_len);

/* A new KV ring of n_ctx positions for every layer of the model, owned by this guest:
 * an id > 0. */
REALM_IMPORT(realm_kv_create) int64_t realm_kv_create(uint32_t model_id, uint32_t n_ctx);
REALM_IMPORT(realm_kv_free) int32_t realm_kv_free(uint64_t kv_cache_id);
/* Forget positions >= n_pos. */
REALM_IMPORT(realm_kv_truncate) int32_t realm_kv_truncate(uint64_t kv_cache_id, uint32_t n_pos);

/* out[n_tokens][n_embd] (f32) = the embedding rows of token_ids[n_tokens] (u32). */
REALM_IMPORT(realm_forward_embedding)
int32_t realm_forward_embedding(uint32_t model_id, uint32_t token_ids_ptr, uint32_t n_tokens,
                                uint32_t out_ptr);

/* One whole layer on hidden_states_len = n_tokens * n_embd floats, the tokens at
 * positions position .. position + n_tokens - 1; K/V appended to the ring. out may
 * equal hidden_states_ptr. */
REALM_IMPORT(realm_forward_layer)
int32_t realm_forward_layer(uint32_t model_id, uint32_t layer_idx, uint32_t hidden_states_ptr,
                            uint32_t hidden_states_len, uint32_t position, uint64_t kv_cache_id,
                            uint32_t out_ptr);

/* realm_forward_layer for layers layer_begin .. layer_begin + layer_count - 1. */
REALM_IMPORT(realm_forward_layers)
int32_t realm_forward_layers(uint32_t model_id, uint32_t layer_begin, uint32_t layer_count,
                             uint32_t hidden_states_ptr, uint32_t hidden_states_len,
                             uint32_t position, uint64_t kv_cache_id, uint32_t out_ptr);

/* Final RMSNorm and output projection: out[n_tokens][n_vocab] f32 logits. */
REALM_IMPORT(realm_forward_lm_head)
int32_t realm_forward_lm_head(uint32_t model_id, uint32_t hidden_states_ptr,
                              uint32_t hidden_states_len, uint32_t out_ptr);

/* A UTF-8 piece for the host's stream; < 0 back means stop generating. */
REALM_IMPORT(realm_emit) int32_t realm_emit(uint32_t text_ptr, uint32_t text_len);

/* A log line: level 0 debug, 1 info, 2 warning, 3 error. */
REALM_IMPORT(realm_log) int32_t realm_log(uint32_t level, uint32_t ptr, uint32_t len);

/* Copies min(out_len, length) bytes of this guest's last error message and returns
 * the message's full length (0: no error yet). */
REALM_IMPORT(realm_last_error) int32_t realm_last_error(uint32_t out_ptr, uint32_t out_len);

/* realm_tokenize's flags */
#define REALM_TOKENIZE_SPECIAL 1u

/* ---- what the shipped guest exports --------------------------------------------
 *   void    *realm_alloc(uint32_t n);                 16-byte aligned, 0 on failure
 *   void     realm_free(void *p);
 *   int32_t  realm_generate(uint32_t model_id, const char *prompt, uint32_t prompt_len,
 *                           const realm_params_t *params, uint32_t params_len);
 *              tokens generated, or an error code
 *   int32_t  realm_chat_open(uint32_t model_id, uint32_t n_ctx);
 *              a conversation: a KV ring of n_ctx positions (0: the model's n_ctx_train)
 *              that stays open across calls; a handle > 0, or an error code
 *   int32_t  realm_chat_generate(uint32_t handle, const char *prompt, uint32_t prompt_len,
 *                                const realm_params_t *params, uint32_t params_len,
 *                                realm_chat_stats_t *stats, uint32_t stats_len);
 *              realm_generate on the conversation's ring: prompt is the whole
 *              conversation so far (rendered); the ring keeps the longest common prefix
 *              of its tokens and the tokens it holds, evaluates the rest, generates, and
 *              keeps the prompt and the generated tokens fed back for the next call.
 *              params->n_ctx is 0 or the conversation's. Writes the first
 *              min(stats_len, 32) bytes of stats (stats_len 0: none). Tokens generated,
 *              or an error code; after an error the conversation holds only positions
 *              computed in full (the next call re-evaluates the rest)
 *   int32_t  realm_chat_close(uint32_t handle);  frees the conversation and its ring
 *   int32_t  realm_tokenize(uint32_t model_id, const char *text, uint32_t text_len,
 *                           uint32_t *out, uint32_t out_cap, uint32_t flags);
 *              ids of text (no BOS); returns the count, writing only the first
 *              out_cap. flags: REALM_TOKENIZE_SPECIAL to turn the text of control
 *              tokens ("<|im_start|>") into those tokens; without it only user-defined
 *              tokens are matched and control tokens are never produced
 *   int32_t  realm_detokenize(uint32_t model_id, const uint32_t *ids, uint32_t n_ids,
 *                             char *out, uint32_t out_cap);
 *              the text of ids (control tokens skipped, the dummy prefix's space
 *              removed, spaces cleaned under REALM_MODEL_CLEAN_SPACES); returns its
 *              byte length, writing only the first out_cap
 *   int32_t  realm_sample(const float *logits, uint32_t n_vocab, const realm_params_t *p,
 *                         uint32_t params_len, const uint32_t *history,
 *                         uint32_t n_history, uint64_t *rng_state);
 *              one token sampled as realm_generate does (for tests of the sampler)
 *   uint32_t realm_heap_bytes(void);                  bytes the allocator has in use
 */

#ifdef __cplusplus
}
#endif
#endif /* REALM_H */
