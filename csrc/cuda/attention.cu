/* attention.cu: RoPE, the K/V append into the device KV ring, and grouped-query
 * attention over the ring (csrc/cpu/attention.h's semantics, flash-decoding's schedule).
 *
 * The ring (DESIGN.md, csrc/cpu/kv_ring.h): k, v are f16 [n_layer][capacity][n_head_kv]
 * [head_dim]; position p of a layer is in slot p % capacity, and attention at p sees
 * the window max(0, p - capacity + 1) .. p. The bookkeeping (which positions are held)
 * stays on the host; these kernels only read and write slots.
 *
 * Where the ring is and which positions are processed come from a small device buffer,
 * the ring descriptor `ring` = {position of token 0, address of k, address of v} (int64
 * each; token t is at position ring[0] + t), not from kernel arguments: a captured
 * CUDA graph then replays for any position and any ring of the same capacity after one
 * 24-byte copy into that buffer.
 *
 * Numerics: the CPU path's (attention.c), step for step: Q rounded to f16; scores f32
 * dots of f16 values times 1/sqrt(head_dim); e = exp(s - max) over the whole window;
 * p = f16(e * (float)(1 / sum)); out = sum p V in f32. The probabilities must be the
 * normalized, f16-rounded ones: on quantized models a difference there (even 2^-11
 * relative) flips 8-bit activation roundings downstream and moves the logits by ~1e-2.
 * So the split over the window takes two passes (flash-decoding computes unnormalized
 * partial outputs instead, which cannot round p): attention_max (per chunk: max and
 * sum of e), attention_weigh (per chunk: the global max and sum from every chunk's,
 * then sum p V), attention_combine (sum over chunks). The dots, ggml's expf and the
 * V sums within a chunk repeat the CPU's float operations exactly; what differs: the
 * softmax's sum (per chunk, then combined, against the CPU's groups of 16) and, when a
 * window spans several chunks, the order of the output's sum.
 */
#include "common.cuh"
#include "ggml_math.cuh"

#define NEG_INF (-__int_as_float(0x7f800000)) /* -infinity (no math.h under NVRTC) */

/* ---- RoPE and the K/V append ----------------------------------------------------------- */

/* the rotated pair, x0 c - x1 s and x0 s + x1 c, without fused multiply-adds (as the CPU) */
static __device__ __forceinline__ float rot0(float x0, float x1, float c, float s) {
    return __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
}
static __device__ __forceinline__ float rot1(float x0, float x1, float c, float s) {
    return __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

/* One block per (token, head) of Q, K or V; thread i handles the adjacent pair
 * (2i, 2i+1) of the head (blockDim.x = head_dim / 2).
 *   blockIdx.y <  n_head:               rotate Q's head in place (f32);
 *   blockIdx.y <  n_head + n_head_kv:   rotate K's head, store it f16 in the ring;
 *   else:                               store V's head f16 in the ring.
 * The angle of pair i < rope_dim / 2 is pos * theta_scale^i with theta_scale =
 * base^(-2 / rope_dim), built by repeated f32 multiplication exactly as realm_rope
 * builds its cache (so the angles are the CPU's bit for bit; cosf/sinf may differ in
 * the last bit). Pairs from rope_dim on are not rotated.
 * q, k, v: rows of token t at q + t * q_stride etc. (parts of a fused QKV output). */
extern "C" __global__ void rope_store_kv(float *q, int q_stride, const float *k, int k_stride, const float *v,
                                         int v_stride, const long long *ring, int layer, long long capacity,
                                         int n_head, int n_head_kv, int head_dim, int rope_dim, float theta_scale) {
    const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
    const long long p = ring[0] + t;
    realm_f16 *k_cache = (realm_f16 *)ring[1], *v_cache = (realm_f16 *)ring[2];
    const int d = 2 * i;

    float c = 1.0f, s = 0.0f; /* no rotation past rope_dim */
    if (d < rope_dim && head < n_head + n_head_kv) {
        float theta = (float)p;
        for (int j = 0; j < i; j++) theta *= theta_scale;
        c = cosf(theta);
        s = sinf(theta);
    }
    if (head < n_head) {
        float *x = q + (long long)t * q_stride + (long long)head * head_dim + d;
        const float x0 = x[0], x1 = x[1];
        x[0] = rot0(x0, x1, c, s);
        x[1] = rot1(x0, x1, c, s);
        return;
    }
    const int kvh = head < n_head + n_head_kv ? head - n_head : head - n_head - n_head_kv;
    const long long slot = p % capacity;
    const long long at = (((long long)layer * capacity + slot) * n_head_kv + kvh) * head_dim + d;
    if (head < n_head + n_head_kv) {
        const float *x = k + (long long)t * k_stride + (long long)kvh * head_dim + d;
        const float x0 = x[0], x1 = x[1];
        k_cache[at] = f32_to_f16(rot0(x0, x1, c, s));
        k_cache[at + 1] = f32_to_f16(rot1(x0, x1, c, s));
    } else {
        const float *x = v + (long long)t * v_stride + (long long)kvh * head_dim + d;
        v_cache[at] = f32_to_f16(x[0]);
        v_cache[at + 1] = f32_to_f16(x[1]);
    }
}

/* ---- attention: two passes over chunks of each window, then a sum ------------------ */

#define ATT_TILE 128 /* positions per tile = threads per block of the two passes */
#define ATT_WARPS (ATT_TILE / WARP_SIZE)

/* Shared by attention_max and attention_weigh. A block: token t = blockIdx.z, KV head
 * kvh = blockIdx.y, chunk c = blockIdx.x of the token's window, for the G = n_head /
 * n_head_kv query heads that read kvh (consecutive in Q's row). The window [first, p]
 * of token t is cut into gridDim.x chunks of whole tiles; chunks past its end are
 * empty. part: [n_tokens][n_head][n_chunks][head_dim + 2] floats: the chunk's sum of
 * p V, then its max and its sum of e^(s - max). */
struct att_block {
    int G, D, c, kvh, t, n_chunks;
    long long c0, c1;        /* the chunk: positions c0 .. c1-1 */
    long long row;           /* f16 elements per position of the ring */
    const realm_f16 *k_layer; /* this layer's K, V of head kvh at slot 0 */
    const realm_f16 *v_layer;
};

static __device__ att_block att_setup(const long long *ring, int layer, long long capacity, int n_head,
                                      int n_head_kv, int head_dim) {
    att_block b;
    b.G = n_head / n_head_kv;
    b.D = head_dim;
    b.c = blockIdx.x;
    b.kvh = blockIdx.y;
    b.t = blockIdx.z;
    b.n_chunks = gridDim.x;
    const long long p = ring[0] + b.t;
    const long long first = p - capacity + 1 > 0 ? p - capacity + 1 : 0;
    const long long len = p - first + 1;
    const long long per_chunk = ((len + b.n_chunks - 1) / b.n_chunks + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    b.c0 = first + b.c * per_chunk;
    b.c1 = b.c0 + per_chunk < p + 1 ? b.c0 + per_chunk : p + 1;
    b.row = (long long)n_head_kv * head_dim;
    const long long head0 = (long long)layer * capacity * b.row + (long long)b.kvh * head_dim;
    b.k_layer = (const realm_f16 *)ring[1] + head0;
    b.v_layer = (const realm_f16 *)ring[2] + head0;
    return b;
}

/* sq[G][D] = the group's Q, rounded to f16 as the CPU does */
static __device__ void att_load_q(const att_block &b, const float *q, int q_stride, float *sq) {
    const float *qg = q + (long long)b.t * q_stride + (long long)b.kvh * b.G * b.D;
    for (int i = threadIdx.x; i < b.G * b.D; i += ATT_TILE) sq[i] = f16_to_f32(f32_to_f16(qg[i]));
}

/* dot(q, k) of head_dim values as attention.c's dot_lanes sums it: 16 running sums
 * (lane i takes elements i, i+16, ...; a tail of head_dim % 16 goes to lanes 0..),
 * then halves added pairwise; separate multiplies and adds, as the CPU build. q: f32
 * (f16 values), k: f16 pairs as 32-bit words. */
static __device__ float dot_lanes(const float *q, const unsigned *k2, int D) {
    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; i++) acc[i] = 0.0f;
    int d = 0;
    for (; d + 16 <= D; d += 16) {
#pragma unroll
        for (int i = 0; i < 16; i += 2) {
            const unsigned kk = k2[(d + i) / 2];
            acc[i] = __fadd_rn(acc[i], __fmul_rn(q[d + i], f16_to_f32((realm_f16)(kk & 0xFFFFu))));
            acc[i + 1] = __fadd_rn(acc[i + 1], __fmul_rn(q[d + i + 1], f16_to_f32((realm_f16)(kk >> 16))));
        }
    }
#pragma unroll
    for (int i = 0; i < 16; i += 2) { /* the tail: D even, so whole pairs */
        if (d + i < D) {
            const unsigned kk = k2[(d + i) / 2];
            acc[i] = __fadd_rn(acc[i], __fmul_rn(q[d + i], f16_to_f32((realm_f16)(kk & 0xFFFFu))));
            acc[i + 1] = __fadd_rn(acc[i + 1], __fmul_rn(q[d + i + 1], f16_to_f32((realm_f16)(kk >> 16))));
        }
    }
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = __fadd_rn(acc[i], acc[i + 8]);
#pragma unroll
    for (int i = 0; i < 4; i++) acc[i] = __fadd_rn(acc[i], acc[i + 4]);
    acc[0] = __fadd_rn(acc[0], acc[2]);
    acc[1] = __fadd_rn(acc[1], acc[3]);
    return __fadd_rn(acc[0], acc[1]);
}

/* Scores of the tile t0 .. t0+n_valid-1: thread j takes position t0 + j for every head,
 * sp[h][j] = dot(q16_h, K_j) * scale, and sslot[j] = its slot; sp = -inf past n_valid. */
static __device__ void att_scores(const att_block &b, const float *sq, long long t0, int n_valid,
                                  long long capacity, float scale, float *sp, int *sslot) {
    const int j = threadIdx.x;
    if (j < n_valid) {
        const int slot = (int)((t0 + j) % capacity); /* capacity <= 2^24 */
        sslot[j] = slot;
        const unsigned *k2 = (const unsigned *)(b.k_layer + (long long)slot * b.row); /* f16 pairs */
        for (int h = 0; h < b.G; h++) sp[h * ATT_TILE + j] = __fmul_rn(dot_lanes(sq + h * b.D, k2, b.D), scale);
    } else {
        for (int h = 0; h < b.G; h++) sp[h * ATT_TILE + j] = NEG_INF;
    }
}

static __device__ long long att_part(const att_block &b, int n_head, int h) {
    return (((long long)b.t * n_head + b.kvh * b.G + h) * b.n_chunks + b.c) * (b.D + 2);
}

/* Pass 1: per head, the chunk's max score m and sum of e^(s - m), into part[..][D],
 * part[..][D + 1] (an empty chunk: -inf and 0). Within the chunk the sum is kept
 * online: rescaled by e^(m_old - m_new) when a tile raises the max.
 * Dynamic shared memory (floats): q16 [G][D] | s [G][ATT_TILE] | m, l [G] | slots [ATT_TILE]. */
extern "C" __global__ void __launch_bounds__(ATT_TILE)
    attention_max(const float *q, int q_stride, const long long *ring, int layer, long long capacity, int n_head,
                  int n_head_kv, int head_dim, float scale, float *part) {
    extern __shared__ float smem[];
    const att_block b = att_setup(ring, layer, capacity, n_head, n_head_kv, head_dim);
    const int G = b.G, lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    float *sq = smem, *sp = sq + G * b.D, *sm = sp + G * ATT_TILE, *sl = sm + G;
    int *sslot = (int *)(sl + G);

    att_load_q(b, q, q_stride, sq);
    for (int h = threadIdx.x; h < G; h += ATT_TILE) {
        sm[h] = NEG_INF;
        sl[h] = 0.0f;
    }
    __syncthreads();
    for (long long t0 = b.c0; t0 < b.c1; t0 += ATT_TILE) {
        const int n_valid = b.c1 - t0 < ATT_TILE ? (int)(b.c1 - t0) : ATT_TILE;
        att_scores(b, sq, t0, n_valid, capacity, scale, sp, sslot);
        __syncthreads();
        for (int h = warp; h < G; h += ATT_WARPS) { /* a warp per head */
            const float *ph = sp + h * ATT_TILE;
            float mt = NEG_INF;
            for (int j = lane; j < ATT_TILE; j += WARP_SIZE) mt = fmaxf(mt, ph[j]);
            mt = warp_max(mt);
            const float m_new = fmaxf(sm[h], mt); /* finite: the tile has a position */
            float sum = 0.0f;
            for (int j = lane; j < ATT_TILE; j += WARP_SIZE) sum += expf_ggml(ph[j] - m_new); /* 0 past the end */
            sum = warp_sum(sum);
            if (lane == 0) {
                sl[h] = sl[h] * expf_ggml(sm[h] - m_new) + sum; /* e^-inf = 0 on the first tile */
                sm[h] = m_new;
            }
        }
        __syncthreads();
    }
    for (int h = threadIdx.x; h < G; h += ATT_TILE) {
        const long long at = att_part(b, n_head, h);
        part[at + b.D] = sm[h];
        part[at + b.D + 1] = sl[h];
    }
}

/* Pass 2: per head, the window's max M and sum S from every chunk's (m, l) of pass 1,
 * S = sum_c l_c e^(m_c - M) in double; then over the chunk's positions
 * p = f16(e^(s - M) * (float)(1 / S)) and acc = sum p V (f32, positions in order),
 * into part[..][0 .. D).
 * Dynamic shared memory (floats): q16 [G][D] | acc [G][D] | p [G][ATT_TILE] |
 * M, inv [G] | slots [ATT_TILE]: attention_shared_bytes() in realm_ext/backends/cuda/backend.py. */
extern "C" __global__ void __launch_bounds__(ATT_TILE)
    attention_weigh(const float *q, int q_stride, const long long *ring, int layer, long long capacity, int n_head,
                    int n_head_kv, int head_dim, float scale, float *part) {
    extern __shared__ float smem[];
    const att_block b = att_setup(ring, layer, capacity, n_head, n_head_kv, head_dim);
    const int G = b.G, D = b.D;
    float *sq = smem, *acc = sq + G * D, *sp = acc + G * D, *sM = sp + G * ATT_TILE, *sinv = sM + G;
    int *sslot = (int *)(sinv + G);

    att_load_q(b, q, q_stride, sq);
    for (int i = threadIdx.x; i < G * D; i += ATT_TILE) acc[i] = 0.0f;
    for (int h = threadIdx.x; h < G; h += ATT_TILE) {
        const float *ph = part + att_part(b, n_head, h) - (long long)b.c * (D + 2); /* chunk 0 */
        float m = NEG_INF;
        for (int c = 0; c < b.n_chunks; c++) m = fmaxf(m, ph[c * (D + 2) + D]);
        double sum = 0.0;
        for (int c = 0; c < b.n_chunks; c++)
            sum += (double)ph[c * (D + 2) + D + 1] * (double)expf_ggml(ph[c * (D + 2) + D] - m);
        sM[h] = m;
        sinv[h] = (float)(1.0 / sum);
    }
    __syncthreads();
    for (long long t0 = b.c0; t0 < b.c1; t0 += ATT_TILE) {
        const int n_valid = b.c1 - t0 < ATT_TILE ? (int)(b.c1 - t0) : ATT_TILE;
        att_scores(b, sq, t0, n_valid, capacity, scale, sp, sslot);
        /* each thread rounds its own position's probabilities: no barrier needed here */
        for (int h = 0; h < G; h++) {
            float *e = sp + h * ATT_TILE + threadIdx.x;
            *e = f16_to_f32(f32_to_f16(expf_ggml(*e - sM[h]) * sinv[h])); /* 0 past the end */
        }
        __syncthreads();
        for (int i = threadIdx.x; i < G * D; i += ATT_TILE) { /* a thread per (head, dim) */
            const int h = i / D, d = i % D;
            const float *ph = sp + h * ATT_TILE;
            float a = acc[i];
            for (int j = 0; j < n_valid; j++) /* in position order, no FMA, as the CPU */
                a = __fadd_rn(a, __fmul_rn(ph[j], f16_to_f32(b.v_layer[(long long)sslot[j] * b.row + d])));
            acc[i] = a;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < G * D; i += ATT_TILE) part[att_part(b, n_head, i / D) + i % D] = acc[i];
}

/* out[t][head] = sum over chunks of part[t][head][c][0 .. D) (empty chunks hold 0).
 * Grid: (n_head, n_tokens), blockDim.x threads over head_dim. out: rows of
 * n_head * head_dim, contiguous. */
extern "C" __global__ void attention_combine(const float *part, int n_chunks, int n_head, int head_dim, float *out) {
    const int head = blockIdx.x, t = blockIdx.y, D = head_dim;
    const float *ph = part + ((long long)t * n_head + head) * n_chunks * (D + 2);
    float *o = out + ((long long)t * n_head + head) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        for (int c = 0; c < n_chunks; c++) a += ph[c * (D + 2) + d];
        o[d] = a;
    }
}
