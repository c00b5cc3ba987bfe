/* A minimal custom guest: one token through the whole model, the first logit back.
 * Build: python -m ziglang cc --target=wasm32-freestanding -O2 -nostdlib -Iguest/include \
 *          -Wl,--no-entry -Wl,--import-memory -Wl,--export=first_logit \
 *          -o first_logit.wasm guest/examples/first_logit.c */
#include "realm.h"

static float x[8192], logits[65536]; /* sized for the model at hand */

__attribute__((export_name("first_logit")))
float first_logit(uint32_t model, uint32_t token) {
    realm_model_info_t info;
    if (realm_model_info(model, (uint32_t)&info, sizeof info) < 0) return -1;
    if (info.n_embd > 8192 || info.n_vocab > 65536) return -1;
    int64_t kv = realm_kv_create(model, 16);
    if (kv < 0) return -1;
    realm_forward_embedding(model, (uint32_t)&token, 1, (uint32_t)x);
    realm_forward_layers(model, 0, info.n_layer, (uint32_t)x, info.n_embd, 0, (uint64_t)kv, (uint32_t)x);
    realm_forward_lm_head(model, (uint32_t)x, info.n_embd, (uint32_t)logits);
    realm_kv_free((uint64_t)kv);
    return logits[0];
}
