/* ops.cu: the small per-token steps of a llama layer on the GPU (csrc/cpu/ops.c's, with the
 * same float semantics where it is cheap): RMSNorm, the residual add fused with the
 * RMSNorm that follows it, and SwiGLU over the gate and up projections.
 *
 * Rows are f32. A launch covers n_tokens rows: blockIdx.y (or blockIdx.x for the norms)
 * is the token. Strides are in floats, so a row may be a slice of a wider row (the gate
 * and up parts of one fused gate+up matmul output).
 */
#include "common.cuh"
#include "ggml_math.cuh"

#define NORM_THREADS 256

/* sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread
 * gets the total. red: 32 doubles of shared memory. */
static __device__ double block_sum(double v, double *red) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / WARP_SIZE) ? red[lane] : 0.0;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* out = x / sqrt(mean(x^2) + eps) * w for one row of n, as realm_rmsnorm: the squares
 * in f32 summed in double (a tree here, a loop there: the same float almost always),
 * the mean and the scale in f32, then (x * scale) * w. */
static __device__ void rmsnorm_row(const float *x, const float *w, float *out, int n, float eps, double *red) {
    double sum = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += (double)__fmul_rn(x[i], x[i]);
    sum = block_sum(sum, red);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = (x[i] * scale) * w[i];
}

/* out[t] = rmsnorm(x[t]) * w. Grid: n_tokens blocks of NORM_THREADS. */
extern "C" __global__ void __launch_bounds__(NORM_THREADS) rmsnorm_f32(const float *x, const float *w, float *out,
                                                                     int n, float eps) {
    __shared__ double red[WARP_SIZE];
    const long long row = (long long)blockIdx.x * n;
    rmsnorm_row(x + row, w, out + row, n, eps, red);
}

/* The residual add and the norm after it, in one pass:
 *     sum[t] = a[t] + b[t];   if w: norm[t] = rmsnorm(sum[t]) * w
 * sum may alias a or b (each element is read and written by the same thread); norm
 * must not alias any of them. Grid: n_tokens blocks of NORM_THREADS. */
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    add_rmsnorm_f32(const float *a, const float *b, float *sum, const float *w, float *norm, int n, float eps) {
    __shared__ double red[WARP_SIZE];
    const long long row = (long long)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum[row + i] = a[row + i] + b[row + i];
    if (w == nullptr) return; /* uniform over the grid */
    /* each thread reads back only the elements it wrote: no barrier needed before */
    rmsnorm_row(sum + row, w, norm + row, n, eps, red);
}

/* out[t][i] = silu(gate[t][i]) * up[t][i], silu(g) = g / (1 + e^-g), as realm_swiglu:
 * ggml's expf for the first n - n % 16 elements (its 16-lane part), libm's (CUDA's
 * expf here) for the tail. Grid: (ceil(n / blockDim.x), n_tokens). out: rows of n,
 * contiguous. */
extern "C" __global__ void swiglu_f32(const float *gate, int gate_stride, const float *up, int up_stride, float *out,
                                      int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const long long t = blockIdx.y;
    if (i >= n) return;
    const float g = gate[t * gate_stride + i];
    const float e = i < n - n % 16 ? expf_ggml(0.0f - g) : expf(-g);
    out[t * n + i] = g / (1.0f + e) * up[t * up_stride + i];
}
