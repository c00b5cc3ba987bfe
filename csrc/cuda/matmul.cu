/* matmul.cu: out = x W^T for a GGUF weight W in its raw blocks, and row lookups.
 *
 * Layouts every kernel here assumes (realm_ext/backends/cuda/matmul.py checks them):
 *   W    n_rows rows, each n_cols / QK blocks back to back (exactly the GGUF bytes);
 *        float weights: n_rows x n_cols elements, row-major
 *   x    float32 (n_tokens, n_cols), row-major
 *   y    the activations rounded as the CPU backend rounds them for W's type (see
 *        quants.cuh): n_tokens rows of n_cols / 32 block_q8_1 (32-element formats) or
 *        n_cols / 256 block_q8_K (K-quants: 292 bytes per 256), row-major
 *   out  float32 (n_tokens, n_rows), row-major: out[t * n_rows + r] = sum_c W[r, c] x[t, c]
 * For a quantized W, n_cols is a multiple of its block size (hence of 32).
 *
 * Kernels (per format NAME in q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K):
 *   quantize_q8_1               x -> y for the 32-element formats; block 256 threads, grid
 *                               ceil(n_tokens * n_cols / 256)
 *   quantize_q8_K               x -> y for the K-quants; block 256, grid n_tokens * n_cols / 256
 *   matvec_NAME_t{1,2,4,8}      decode: n_tokens <= T; block (32, MV_WARPS), grid ceil(n_rows / R)
 *                               with R = 1 row per block for T = 1, else 2
 *   matmul_NAME                 prefill: block 256, grid (ceil(n_rows / 32), ceil(n_tokens / 16))
 * and for the float formats NAME in f32 f16 bf16 (no quantization step: x read directly,
 * rounded to f16 / bf16 for F16 / BF16 weights as the CPU does):
 *   matvec_NAME_t{1,8}          any n_tokens: block (32, MV_WARPS), grid (ceil(n_rows / R),
 *                               ceil(n_tokens / T)); the prefill path uses t8
 * and for all thirteen formats:
 *   get_rows_NAME               out[i, :] = row ids[i] of W decoded (bit-exact with ggml);
 *                               block 256, grid (n_ids, ceil(n_cols / 256)); an id outside
 *                               0 .. n_rows-1 gives a row of NaN (no read out of bounds)
 */
#include "quants.cuh"

#define MV_WARPS 4     /* warps of a matvec block; they split each row's blocks */
#define MM_ROWS 32     /* prefill tile: weight rows ... */
#define MM_TOKENS 16   /* ... times tokens, per block of MM_THREADS threads */
#define MM_THREADS 256
#define MM_CHUNK 256   /* prefill: columns staged in shared memory per step */

/* ---- activations, rounded as the CPU backend rounds them (csrc/cpu/act_quant.c) ----------
 * quantize_q8_1: one thread per element, one warp per block of 32 (n % 32 == 0, so a
 * warp is either wholly in range or wholly out): d = max|x| / 127, q = rint(x * (127 /
 * max|x|)) (nearest, ties to even: lrintf), s = d * sum(q) with d before its rounding
 * to f16. Serves Q4_1/Q5_1 (Q8_1) and, s unused, Q4_0/Q5_0/Q8_0 (Q8_0: same d and q). */
extern "C" __global__ void __launch_bounds__(256) quantize_q8_1(const float *__restrict__ x,
                                                                 block_q8_1 *__restrict__ y, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int lane = threadIdx.x % WARP_SIZE;
    const float v = x[i];
    const float amax = warp_max(fabsf(v));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q = (int)rintf(v * id);
    const float d = amax / 127.0f;
    const float sum = warp_sum((float)q); /* |sum| <= 32 * 127: exact in float */
    block_q8_1 *b = y + i / QK8_1;
    b->qs[lane] = (int8_t)q;
    if (lane == 0) {
        b->d = f32_to_f16(d);
        b->s = f32_to_f16(d * sum);
    }
}

/* max of v over the block of QK_K threads; red: QK_K / 32 floats of shared memory,
 * free again when it returns */
static __device__ __forceinline__ float block_max_256(float v, float *red) {
    v = warp_max(v);
    if (threadIdx.x % WARP_SIZE == 0) red[threadIdx.x / WARP_SIZE] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < QK_K / WARP_SIZE; w++) v = fmaxf(v, red[w]);
    __syncthreads();
    return v;
}

/* quantize_q8_K: one block of QK_K threads per block_q8_K (n % 256 == 0), thread i on
 * element i, as quantize_row_q8_K_ref: max = the first element of largest magnitude
 * (signed), iscale = -127 / max, q = min(rint(iscale * x), 127), d = 1 / iscale,
 * bsums[j] = sum of q[16j .. 16j+15]; an all-zero block is all zero bytes. */
extern "C" __global__ void __launch_bounds__(QK_K) quantize_q8_K(const float *__restrict__ x,
                                                                  block_q8_K *__restrict__ y, long long n) {
    __shared__ float red[QK_K / WARP_SIZE];
    __shared__ float first_max;
    const int tid = threadIdx.x;
    const long long i = (long long)blockIdx.x * QK_K + tid;
    if (i >= n) return; /* whole blocks only: every thread of a block returns here or none */
    block_q8_K *b = y + blockIdx.x;
    const float v = x[i];
    const float amax = block_max_256(fabsf(v), red);
    /* the lowest index holding amax, as -max(-index) (small integers: exact in float) */
    const int first = (int)-block_max_256(fabsf(v) == amax ? -(float)tid : -(float)QK_K, red);
    if (tid == first) first_max = v;
    __syncthreads();
    const float iscale = amax != 0.0f ? -127.0f / first_max : 0.0f;
    const int q = min((int)rintf(iscale * v), 127);
    b->qs[tid] = (int8_t)q;
    float s16 = (float)q; /* sum over the 16 lanes of this bsum */
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) s16 += __shfl_xor_sync(0xffffffffu, s16, o);
    if (tid % 16 == 0) b->bsums[tid / 16] = (int16_t)s16;
    if (tid == 0) b->d = amax != 0.0f ? 1.0f / iscale : 0.0f;
}

/* ---- the end of a matvec: acc[t][r] of every thread summed over the block ----------
 * Warps 1.. hand their sums to warp 0 through shared memory; warp 0 adds them, sums
 * over its lanes and lane 0 stores out[(t0 + t) * n_rows + row0 + r] where in range. */
template <int NT, int R>
static __device__ __forceinline__ void block_sum_store(float (&acc)[NT][R], float *__restrict__ out, int n_rows,
                                                      int row0, int n_tokens, int t0) {
    __shared__ float others[MV_WARPS - 1][NT][R][WARP_SIZE];
    if (threadIdx.y > 0) {
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int r = 0; r < R; r++) others[threadIdx.y - 1][t][r][threadIdx.x] = acc[t][r];
    }
    __syncthreads();
    if (threadIdx.y > 0) return;
#pragma unroll
    for (int t = 0; t < NT; t++) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = acc[t][r];
#pragma unroll
            for (int w = 0; w < MV_WARPS - 1; w++) v += others[w][t][r][threadIdx.x];
            v = warp_sum(v);
            if (threadIdx.x == 0 && row0 + r < n_rows && t0 + t < n_tokens) out[(long long)(t0 + t) * n_rows + row0 + r] = v;
        }
    }
}

/* ---- decode matvec, quantized W ------------------------------------------------------
 * A block of MV_WARPS * 32 threads computes R rows for all n_tokens (<= NT) tokens.
 * Thread tid takes part tid % NPART of the row's blocks tid / NPART, tid / NPART + STEP,
 * ... (STEP = threads / NPART blocks per iteration, so consecutive threads read
 * consecutive bytes of a row). Rows past n_rows and tokens past n_tokens are clamped
 * to the last one for reading (no read out of bounds, no divergence) and not stored. */
template <typename F, int NT>
static __device__ __forceinline__ void matvec_q(const uint8_t *__restrict__ W, const typename F::act *__restrict__ y,
                                                float *__restrict__ out, int n_rows, int n_cols, int n_tokens) {
    typedef typename F::block block;
    typedef typename F::act act;
    constexpr int R = NT == 1 ? 1 : 2;
    constexpr int STEP = MV_WARPS * WARP_SIZE / F::NPART;
    const int tid = threadIdx.y * WARP_SIZE + threadIdx.x;
    const int part = tid % F::NPART;
    const int nb = n_cols / F::QK, nby = n_cols / F::QK_ACT;
    const int row0 = blockIdx.x * R;
    const block *rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = (const block *)W + (long long)min(row0 + r, n_rows - 1) * nb;
    const act *ys[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) ys[t] = y + (long long)min(t, n_tokens - 1) * nby;

    float acc[NT][R];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[t][r] = 0.0f;

    for (int kb = tid / F::NPART; kb < nb; kb += STEP) {
        const int kby = kb * (F::QK / F::QK_ACT);
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t][r] += F::dot(rows[r] + kb, ys[t] + kby, part);
    }
    block_sum_store<NT, R>(acc, out, n_rows, row0, n_tokens, 0);
}

/* ---- matvec for float W (F32 / F16 / BF16), any n_tokens ------------------------------
 * As matvec_q, with thread tid taking columns tid, tid + threads, ... of R rows, and
 * blockIdx.y taking tokens NT * blockIdx.y .. + NT - 1 (read straight from x and
 * rounded as the CPU rounds them for this weight type: F::round_x). */
template <typename F, int NT>
static __device__ __forceinline__ void matvec_f(const uint8_t *__restrict__ W, const float *__restrict__ x,
                                                float *__restrict__ out, int n_rows, int n_cols, int n_tokens) {
    constexpr int R = NT == 1 ? 1 : 2;
    const int tid = threadIdx.y * WARP_SIZE + threadIdx.x;
    const int row0 = blockIdx.x * R, t0 = blockIdx.y * NT;
    typedef typename F::block elem;
    const elem *rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = (const elem *)W + (long long)min(row0 + r, n_rows - 1) * n_cols;
    const float *xs[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) xs[t] = x + (long long)min(t0 + t, n_tokens - 1) * n_cols;

    float acc[NT][R];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[t][r] = 0.0f;

    for (int c = tid; c < n_cols; c += MV_WARPS * WARP_SIZE) {
        float w[R];
#pragma unroll
        for (int r = 0; r < R; r++) w[r] = F::decode(rows[r], c);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float xv = F::round_x(xs[t][c]);
#pragma unroll
            for (int r = 0; r < R; r++) acc[t][r] += w[r] * xv;
        }
    }
    block_sum_store<NT, R>(acc, out, n_rows, row0, n_tokens, t0);
}

/* ---- prefill matmul, quantized W ------------------------------------------------------
 * A block of MM_THREADS threads computes a tile of MM_ROWS rows x MM_TOKENS tokens.
 * The columns go by in chunks of MM_CHUNK (one K-quant block, or 8 blocks of 32): the
 * chunk's weight bytes of the tile's rows and activation blocks of its tokens (one
 * block_q8_K, 73 words, or 8 block_q8_1, 72 words, per token) are copied to
 * shared memory, so each weight byte is read from global memory once per token tile.
 * Thread (g, part), g = tid / PARTS, keeps the sums of rows g, g + GROUPS, ... for all
 * the tile's tokens over its share `part` of every chunk (PARTS threads share a chunk
 * row: BPC blocks of NPART parts each); the shares are summed by shuffles at the end.
 * A row of 32-element blocks may end in a partial chunk: blocks past the row's end are
 * neither copied nor used. */
template <typename F>
static __device__ __forceinline__ void matmul_q(const uint8_t *__restrict__ W, const typename F::act *__restrict__ y,
                                                float *__restrict__ out, int n_rows, int n_cols, int n_tokens) {
    typedef typename F::block block;
    typedef typename F::act act;
    constexpr int BPC = MM_CHUNK / F::QK;       /* weight blocks per chunk */
    constexpr int YPC = MM_CHUNK / F::QK_ACT;   /* activation blocks per chunk */
    constexpr int BB = (int)sizeof(block);
    constexpr int CHUNK_BYTES = BPC * BB;
    constexpr int W_STRIDE = (CHUNK_BYTES + 15) / 16 * 16; /* bytes per row in shared memory */
    constexpr int COPY = BB % 4 == 0 ? 4 : 2;   /* widest load the blocks' alignment allows */
    constexpr int PARTS = BPC * F::NPART;
    constexpr int GROUPS = MM_THREADS / PARTS;
    constexpr int RPT = MM_ROWS / GROUPS;       /* rows per thread */
    constexpr int Y_WORDS = YPC * (int)sizeof(act) / 4;
    static_assert(sizeof(act) % 4 == 0, "activation blocks are copied in 32-bit words");
    static_assert(WARP_SIZE % PARTS == 0 || PARTS % WARP_SIZE == 0, "a chunk row's parts are whole lanes");
    static_assert(PARTS <= WARP_SIZE && MM_ROWS % GROUPS == 0, "tile shape");

    __shared__ int w_tile[MM_ROWS * W_STRIDE / 4];     /* int: 4-byte aligned rows */
    __shared__ int y_tile[MM_TOKENS * Y_WORDS];

    const int tid = threadIdx.x;
    const int part = tid % PARTS, g = tid / PARTS;
    const int kb_local = part / F::NPART, p = part % F::NPART;
    const int row0 = blockIdx.x * MM_ROWS, t0 = blockIdx.y * MM_TOKENS;
    const int nb = n_cols / F::QK, nby = n_cols / F::QK_ACT;
    const int n_chunks = (nb + BPC - 1) / BPC;
    const long long row_bytes = (long long)nb * BB;

    float acc[RPT][MM_TOKENS];
#pragma unroll
    for (int i = 0; i < RPT; i++)
#pragma unroll
        for (int t = 0; t < MM_TOKENS; t++) acc[i][t] = 0.0f;

    for (int kc = 0; kc < n_chunks; kc++) {
        const int blocks_here = min(BPC, nb - kc * BPC);
        /* weight chunk: MM_ROWS rows of blocks_here * BB bytes, COPY bytes per load */
        {
            constexpr int UNITS = CHUNK_BYTES / COPY;
            const int units_here = blocks_here * BB / COPY;
            for (int idx = tid; idx < MM_ROWS * UNITS; idx += MM_THREADS) {
                const int r = idx / UNITS, u = idx % UNITS;
                if (u >= units_here) continue;
                const uint8_t *src = W + min(row0 + r, n_rows - 1) * row_bytes + (long long)kc * CHUNK_BYTES + u * COPY;
                uint8_t *dst = (uint8_t *)w_tile + r * W_STRIDE + u * COPY;
                if (COPY == 4)
                    *(int *)dst = *(const int *)src;
                else
                    *(uint16_t *)dst = *(const uint16_t *)src;
            }
        }
        /* activation chunk: MM_TOKENS tokens of YPC activation blocks, Y_WORDS words each */
        {
            const int words_here = min(YPC, nby - kc * YPC) * (int)sizeof(act) / 4;
            for (int idx = tid; idx < MM_TOKENS * Y_WORDS; idx += MM_THREADS) {
                const int t = idx / Y_WORDS, u = idx % Y_WORDS;
                if (u >= words_here) continue;
                const int *src = (const int *)(y + (long long)min(t0 + t, n_tokens - 1) * nby + kc * YPC);
                y_tile[idx] = src[u];
            }
        }
        __syncthreads();
        if (kb_local < blocks_here) {
            const act *yt = (const act *)y_tile + kb_local * (F::QK / F::QK_ACT);
#pragma unroll
            for (int i = 0; i < RPT; i++) {
                const block *b = (const block *)((const uint8_t *)w_tile + (g + GROUPS * i) * W_STRIDE) + kb_local;
#pragma unroll
                for (int t = 0; t < MM_TOKENS; t++) acc[i][t] += F::dot(b, yt + t * YPC, p);
            }
        }
        __syncthreads();
    }

    /* sum the PARTS shares (adjacent lanes) and store from the lane holding part 0 */
#pragma unroll
    for (int i = 0; i < RPT; i++) {
        const int row = row0 + g + GROUPS * i;
#pragma unroll
        for (int t = 0; t < MM_TOKENS; t++) {
            float v = acc[i][t];
#pragma unroll
            for (int o = PARTS / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (part == 0 && row < n_rows && t0 + t < n_tokens) out[(long long)(t0 + t) * n_rows + row] = v;
        }
    }
}

/* ---- get_rows: one thread per output element (float formats: blocks of one) -------- */
template <typename F>
static __device__ __forceinline__ void get_rows(const uint8_t *__restrict__ W, const int *__restrict__ ids,
                                                float *__restrict__ out, int n_rows, int n_cols) {
    typedef typename F::block block;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= n_cols) return;
    const int row = ids[blockIdx.x];
    float v = __int_as_float(0x7fc00000); /* NaN for an id out of range */
    if (row >= 0 && row < n_rows) {
        const block *b = (const block *)W + (long long)row * (n_cols / F::QK) + c / F::QK;
        v = F::decode(b, c % F::QK);
    }
    out[(long long)blockIdx.x * n_cols + c] = v;
}

/* ---- the extern "C" entry points, per format ----------------------------------------- */
#define MV_ARGS(X) const uint8_t *__restrict__ W, const X *__restrict__ x, float *__restrict__ out, int n_rows, \
                   int n_cols, int n_tokens
#define GR_ARGS const uint8_t *__restrict__ W, const int *__restrict__ ids, float *__restrict__ out, int n_rows, \
                int n_cols

/* matvec_NAME_tNT: IMPL (matvec_q or matvec_f) of format F, x of type X (q8_1 or float) */
#define MATVEC(NAME, IMPL, F, X, NT)                                                                           \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * WARP_SIZE) matvec_##NAME##_t##NT(MV_ARGS(X)) {     \
        IMPL<F, NT>(W, x, out, n_rows, n_cols, n_tokens);                                                     \
    }
#define GET_ROWS(NAME, F)                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) get_rows_##NAME(GR_ARGS) { get_rows<F>(W, ids, out, n_rows, n_cols); }
#define QUANT_FORMAT(NAME, F)                                                                                   \
    MATVEC(NAME, matvec_q, F, F::act, 1)                                                                      \
    MATVEC(NAME, matvec_q, F, F::act, 2)                                                                      \
    MATVEC(NAME, matvec_q, F, F::act, 4)                                                                      \
    MATVEC(NAME, matvec_q, F, F::act, 8)                                                                      \
    extern "C" __global__ void __launch_bounds__(MM_THREADS) matmul_##NAME(MV_ARGS(F::act)) {                 \
        matmul_q<F>(W, x, out, n_rows, n_cols, n_tokens);                                                     \
    }                                                                                                         \
    GET_ROWS(NAME, F)
#define FLOAT_FORMAT(NAME, F)                                                                                   \
    MATVEC(NAME, matvec_f, F, float, 1)                                                                       \
    MATVEC(NAME, matvec_f, F, float, 8)                                                                       \
    GET_ROWS(NAME, F)

QUANT_FORMAT(q4_0, fmt_q4_0)
QUANT_FORMAT(q4_1, fmt_q4_1)
QUANT_FORMAT(q5_0, fmt_q5_0)
QUANT_FORMAT(q5_1, fmt_q5_1)
QUANT_FORMAT(q8_0, fmt_q8_0)
QUANT_FORMAT(q2_K, fmt_q2_K)
QUANT_FORMAT(q3_K, fmt_q3_K)
QUANT_FORMAT(q4_K, fmt_q4_K)
QUANT_FORMAT(q5_K, fmt_q5_K)
QUANT_FORMAT(q6_K, fmt_q6_K)
FLOAT_FORMAT(f32, fmt_f32)
FLOAT_FORMAT(f16, fmt_f16)
FLOAT_FORMAT(bf16, fmt_bf16)
