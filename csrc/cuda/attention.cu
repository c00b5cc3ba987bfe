/* attention.cu: RoPE, the K/V append into the device KV ring, and grouped-query
 * attention over the ring (csrc/attention.h's semantics, flash-decoding's schedule).
 *
 * The ring (DESIGN.md, csrc/kv_ring.h): k, v are f16 [n_layer][capacity][n_head_kv]
 * [head_dim]; position p of a layer is in slot p % capacity, and attention at p sees
 * the window max(0, p - capacity + 1) .. p. The bookkeeping (which positions are held)
 * stays on the host; these kernels only read and write slots.
 *
 * Positions come from a device buffer, `pos0` (the position of token 0; token t is at
 * pos0 + t), not from a kernel argument, so that a captured CUDA graph replays for a
 * new position after one small copy into that buffer.
 *
 * Numerics against the CPU path (attention.c): Q is rounded to f16 before Q.K, scores
 * are f32 dots times 1/sqrt(head_dim), the softmax is exact in f32 (expf). Unlike the
 * CPU path the probabilities stay f32 (flash-decoding normalizes only at the end, so
 * there is no final probability to round): a difference of ~1e-4 relative, far inside
 * the backend's 1e-2 tolerance.
 */
#include "common.cuh"

#define NEG_INF (-__int_as_float(0x7f800000)) /* -infinity (no math.h under NVRTC) */

/* ---- RoPE and the K/V append ----------------------------------------------------------- */

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
                                         int v_stride, realm_f16 *k_cache, realm_f16 *v_cache, int layer,
                                         long long capacity, const long long *pos0, int n_head, int n_head_kv,
                                         int head_dim, int rope_dim, float theta_scale) {
    const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
    const long long p = *pos0 + t;
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
        x[0] = x0 * c - x1 * s;
        x[1] = x0 * s + x1 * c;
        return;
    }
    const int kvh = head < n_head + n_head_kv ? head - n_head : head - n_head - n_head_kv;
    const long long slot = p % capacity;
    const long long at = (((long long)layer * capacity + slot) * n_head_kv + kvh) * head_dim + d;
    if (head < n_head + n_head_kv) {
        const float *x = k + (long long)t * k_stride + (long long)kvh * head_dim + d;
        const float x0 = x[0], x1 = x[1];
        k_cache[at] = f32_to_f16(x0 * c - x1 * s);
        k_cache[at + 1] = f32_to_f16(x0 * s + x1 * c);
    } else {
        const float *x = v + (long long)t * v_stride + (long long)kvh * head_dim + d;
        v_cache[at] = f32_to_f16(x[0]);
        v_cache[at + 1] = f32_to_f16(x[1]);
    }
}

/* ---- attention: partial results per chunk of the window, then their combination ---- */

#define ATT_TILE 128 /* positions per tile = threads per block of attention_split */
#define ATT_WARPS (ATT_TILE / WARP_SIZE)

/* One block: token t = blockIdx.z, KV head kvh = blockIdx.y, chunk c = blockIdx.x of
 * that token's window, for the G = n_head / n_head_kv query heads that read kvh.
 *
 * The window of token t (position p) is split into gridDim.x chunks of whole tiles;
 * chunks past its end are empty. The block walks its chunk a tile of ATT_TILE
 * positions at a time with an online softmax: per query head a running max m, sum l
 * and output acc (f32), rescaled by e^(m_old - m_new) when the max grows. It writes
 * part[t][head][c] = (acc[0..head_dim), m, l), unnormalized; attention_combine merges
 * the chunks. An empty chunk writes m = -inf, l = 0, acc = 0.
 *
 * Dynamic shared memory (floats): q16 [G][head_dim] | acc [G][head_dim] |
 * p [G][ATT_TILE] | m, l, corr [G] each | slots [ATT_TILE] (ints):
 * attention_shared_bytes() in realm_ext/backends/cuda.py computes the same size. */
extern "C" __global__ void __launch_bounds__(ATT_TILE)
    attention_split(const float *q, int q_stride, const realm_f16 *k_cache, const realm_f16 *v_cache, int layer,
                    long long capacity, const long long *pos0, int n_head, int n_head_kv, int head_dim, float scale,
                    float *part) {
    extern __shared__ float smem[];
    const int G = n_head / n_head_kv, D = head_dim;
    const int c = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z, n_chunks = gridDim.x;
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    float *sq = smem, *acc = sq + G * D, *sp = acc + G * D, *sm = sp + G * ATT_TILE, *sl = sm + G,
          *scorr = sl + G;
    int *sslot = (int *)(scorr + G);

    /* this chunk of the window [first, p] */
    const long long p = *pos0 + t;
    const long long first = p - capacity + 1 > 0 ? p - capacity + 1 : 0;
    const long long len = p - first + 1;
    const long long per_chunk = ((len + n_chunks - 1) / n_chunks + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    const long long c0 = first + c * per_chunk;
    const long long c1 = c0 + per_chunk < p + 1 ? c0 + per_chunk : p + 1;

    /* Q of the group's heads (consecutive in the row), rounded to f16 as the CPU does */
    const float *qg = q + (long long)t * q_stride + (long long)kvh * G * D;
    for (int i = tid; i < G * D; i += ATT_TILE) {
        sq[i] = f16_to_f32(f32_to_f16(qg[i]));
        acc[i] = 0.0f;
    }
    for (int h = tid; h < G; h += ATT_TILE) {
        sm[h] = NEG_INF;
        sl[h] = 0.0f;
    }
    __syncthreads();

    const long long row = (long long)n_head_kv * D; /* f16 elements per position */
    const realm_f16 *k_layer = k_cache + (long long)layer * capacity * row + (long long)kvh * D;
    const realm_f16 *v_layer = v_cache + (long long)layer * capacity * row + (long long)kvh * D;

    for (long long t0 = c0; t0 < c1; t0 += ATT_TILE) {
        const int n_valid = c1 - t0 < ATT_TILE ? (int)(c1 - t0) : ATT_TILE;

        /* 1. scores: thread j takes position t0 + j, every head of the group */
        if (tid < n_valid) {
            const int slot = (int)((t0 + tid) % capacity); /* capacity <= 2^24 */
            sslot[tid] = slot;
            const unsigned *k2 = (const unsigned *)(k_layer + (long long)slot * row); /* f16 pairs */
            for (int h = 0; h < G; h++) {
                const float *qh = sq + h * D;
                float s = 0.0f;
                for (int d = 0; d < D; d += 2) {
                    const unsigned kk = k2[d / 2];
                    s += qh[d] * f16_to_f32((realm_f16)(kk & 0xFFFFu)) + qh[d + 1] * f16_to_f32((realm_f16)(kk >> 16));
                }
                sp[h * ATT_TILE + tid] = s * scale;
            }
        } else {
            for (int h = 0; h < G; h++) sp[h * ATT_TILE + tid] = NEG_INF;
        }
        __syncthreads();

        /* 2. online softmax, a warp per head: new max, rescale factor, e^(s - m) */
        for (int h = warp; h < G; h += ATT_WARPS) {
            float *ph = sp + h * ATT_TILE;
            float mt = NEG_INF;
            for (int j = lane; j < ATT_TILE; j += WARP_SIZE) mt = fmaxf(mt, ph[j]);
            mt = warp_max(mt);
            const float m_old = sm[h], m_new = fmaxf(m_old, mt); /* finite: the tile has a position */
            float sum = 0.0f;
            for (int j = lane; j < ATT_TILE; j += WARP_SIZE) {
                const float e = expf(ph[j] - m_new); /* 0 past the chunk's end */
                ph[j] = e;
                sum += e;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float corr = expf(m_old - m_new); /* 0 on the first tile */
                scorr[h] = corr;
                sl[h] = sl[h] * corr + sum;
                sm[h] = m_new;
            }
        }
        __syncthreads();

        /* 3. acc = acc * corr + sum_j p_j V_j, a thread per (head, dim) */
        for (int i = tid; i < G * D; i += ATT_TILE) {
            const int h = i / D, d = i % D;
            const float *ph = sp + h * ATT_TILE;
            float a = acc[i] * scorr[h];
            for (int j = 0; j < n_valid; j++) a += ph[j] * f16_to_f32(v_layer[(long long)sslot[j] * row + d]);
            acc[i] = a;
        }
        __syncthreads();
    }

    /* the chunk's partial result, per query head */
    for (int i = tid; i < G * D; i += ATT_TILE) {
        const int h = i / D, d = i % D;
        const long long at = (((long long)t * n_head + kvh * G + h) * n_chunks + c) * (D + 2);
        part[at + d] = acc[i];
        if (d == 0) {
            part[at + D] = sm[h];
            part[at + D + 1] = sl[h];
        }
    }
}

/* out[t][head] = the chunks of part merged: with M = max_c m_c,
 *     out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c.
 * Grid: (n_head, n_tokens), blockDim.x threads over head_dim. out: rows of
 * n_head * head_dim, contiguous. */
extern "C" __global__ void attention_combine(const float *part, int n_chunks, int n_head, int head_dim, float *out) {
    const int head = blockIdx.x, t = blockIdx.y, D = head_dim;
    const float *ph = part + ((long long)t * n_head + head) * n_chunks * (D + 2);
    float m = NEG_INF;
    for (int c = 0; c < n_chunks; c++) m = fmaxf(m, ph[c * (D + 2) + D]);
    float l = 0.0f;
    for (int c = 0; c < n_chunks; c++) l += expf(ph[c * (D + 2) + D] - m) * ph[c * (D + 2) + D + 1];
    const float inv = 1.0f / l;
    float *o = out + ((long long)t * n_head + head) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        for (int c = 0; c < n_chunks; c++) a += expf(ph[c * (D + 2) + D] - m) * ph[c * (D + 2) + d];
        o[d] = a * inv;
    }
}
