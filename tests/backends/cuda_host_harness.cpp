/* cuda_host_harness.cpp: csrc/cuda/matmul.cu (and the quants.cuh it includes) compiled
 * for the host, so the kernels can be run and checked on a CPU with no GPU
 * (tests/backends/cuda_emulator.py builds this with g++ and loads it by ctypes).
 *
 * - The per-format dot products and decoders are exported as plain functions
 *   (harness_dot_rows, harness_decode_rows).
 * - The kernels themselves run under a small emulator (emu_launch): every CUDA thread
 *   of a block is a fiber (ucontext) with its own threadIdx; __syncthreads() and each
 *   warp shuffle are scheduling points. A fiber at a block barrier resumes when every
 *   live thread of the block has reached it; a fiber at a warp step when every live
 *   lane of its warp has. Blocks run one after another, so __shared__ is `static`.
 *   A barrier that some threads never reach is reported (emu_launch returns -1).
 *
 * The CUDA intrinsics the kernels use are emulated with their documented semantics;
 * common.cuh (PTX inline asm) is replaced by host versions of what it defines. Build
 * with -ffp-contract=off so no multiply-add is fused (as on the device, where decode()
 * uses __fmul_rn / __fadd_rn). */
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define REALM_CUDA_COMMON_CUH /* skip common.cuh: its conversions are PTX */
#include "ggml_blocks.h"

#define WARP_SIZE 32

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline int min(int a, int b) { return a < b ? a : b; }

static inline float f16_to_f32(realm_f16 h) {
    const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    float f;
    if (exp == 0)
        f = std::ldexp((float)mant, -24);
    else if (exp == 31)
        f = mant ? NAN : INFINITY;
    else
        f = std::ldexp((float)(mant | 0x400), exp - 25);
    return sign ? -f : f;
}
static inline realm_f16 f32_to_f16(float f) { /* round to nearest even, as PTX cvt.rn */
    const _Float16 h = (_Float16)f;
    realm_f16 bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}
static inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
static inline float bf16_to_f32(realm_bf16 h) { return __uint_as_float((unsigned)h << 16); }
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
static inline realm_bf16 f32_to_bf16(float f) { /* as common.cuh */
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (realm_bf16)((u >> 16) | 64u);
    return (realm_bf16)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* the sum of the four signed byte products of a and b, plus c */
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
/* per signed byte a - b, saturated to -128 .. 127 */
static inline unsigned __vsubss4(int a, int b) {
    unsigned r = 0;
    for (int i = 0; i < 4; i++) {
        int v = (int)(int8_t)(a >> (8 * i)) - (int)(int8_t)(b >> (8 * i));
        v = v < -128 ? -128 : (v > 127 ? 127 : v);
        r |= (unsigned)(uint8_t)v << (8 * i);
    }
    return r;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }

/* ---- the fiber scheduler ---------------------------------------------------------- */
enum { RUNNABLE, AT_BARRIER, AT_WARP_STEP, DONE };
struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int state;
    int warp;
};
static const size_t STACK_BYTES = 128 << 10;
static ucontext_t scheduler;
static std::vector<Fiber> fibers;
static std::vector<char> stacks;
static int current;
typedef void (*kernel6)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
static kernel6 kernel_fn;
static uint64_t kernel_args[6];
static float shuffle_slots[32][WARP_SIZE]; /* per warp, per lane */

static void wait_for(int state) {
    fibers[current].state = state;
    swapcontext(&fibers[current].ctx, &scheduler);
}
static void __syncthreads() { wait_for(AT_BARRIER); }

static float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const int w = fibers[current].warp, lane = (threadIdx.y * blockDim.x + threadIdx.x) % WARP_SIZE;
    shuffle_slots[w][lane] = v;
    wait_for(AT_WARP_STEP); /* every lane has written */
    const float r = shuffle_slots[w][lane ^ lane_mask];
    wait_for(AT_WARP_STEP); /* every lane has read */
    return r;
}

static inline float warp_sum(float v) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static inline float warp_max(float v) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static void fiber_main() {
    kernel_fn(kernel_args[0], kernel_args[1], kernel_args[2], kernel_args[3], kernel_args[4], kernel_args[5]);
    fibers[current].state = DONE; /* then uc_link returns to the scheduler */
}

/* Run one block to completion; false if its threads wait on a barrier forever. */
static bool run_block() {
    const int n = (int)fibers.size();
    for (int i = 0; i < n; i++) {
        Fiber &f = fibers[i];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = &stacks[(size_t)i * STACK_BYTES];
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_main, 0);
        f.state = RUNNABLE;
    }
    const int n_warps = (n + WARP_SIZE - 1) / WARP_SIZE;
    for (;;) {
        bool any = false, all_done = true, block_ready = true;
        std::vector<bool> warp_ready(n_warps, true);
        for (const Fiber &f : fibers) {
            if (f.state == DONE) continue;
            all_done = false;
            block_ready &= f.state == AT_BARRIER;
            warp_ready[f.warp] = warp_ready[f.warp] && f.state == AT_WARP_STEP;
        }
        if (all_done) return true;
        for (Fiber &f : fibers)
            if ((f.state == AT_BARRIER && block_ready) || (f.state == AT_WARP_STEP && warp_ready[f.warp]))
                f.state = RUNNABLE;
        for (int i = 0; i < n; i++) {
            if (fibers[i].state != RUNNABLE) continue;
            any = true;
            current = i;
            threadIdx = fibers[i].tid;
            swapcontext(&scheduler, &fibers[i].ctx);
        }
        if (!any) return false;
    }
}

extern "C" {
/* Launch `fn` (an extern "C" kernel of matmul.cu, taking up to six integer or pointer
 * arguments) on a (gx, gy) grid of (bx, by) blocks; 0 on success, -1 on a deadlock. */
int emu_launch(void *fn, int gx, int gy, int bx, int by, const uint64_t *args) {
    kernel_fn = (kernel6)fn;
    std::memcpy(kernel_args, args, sizeof kernel_args);
    gridDim.x = gx, gridDim.y = gy, blockDim.x = bx, blockDim.y = by;
    const int n = bx * by;
    if (n > 32 * WARP_SIZE) return -2;
    fibers.assign(n, Fiber());
    stacks.resize((size_t)n * STACK_BYTES);
    for (int i = 0; i < n; i++) {
        fibers[i].tid.x = i % bx, fibers[i].tid.y = i / bx;
        fibers[i].warp = i / WARP_SIZE;
    }
    for (int y = 0; y < gy; y++)
        for (int x = 0; x < gx; x++) {
            blockIdx.x = x, blockIdx.y = y;
            if (!run_block()) return -1;
        }
    return 0;
}
}

#include "matmul.cu"

/* a row's dot product as the kernels form it: every block, every part, summed */
template <typename F>
static float dot_row(const uint8_t *w, const void *y, int n_cols) {
    const typename F::block *b = (const typename F::block *)w;
    const typename F::act *ya = (const typename F::act *)y;
    float sum = 0.0f;
    for (int kb = 0; kb < n_cols / F::QK; kb++)
        for (int part = 0; part < F::NPART; part++) sum += F::dot(b + kb, ya + kb * (F::QK / F::QK_ACT), part);
    return sum;
}
template <typename F>
static void decode_row(const uint8_t *w, float *out, int n_cols) {
    const typename F::block *b = (const typename F::block *)w;
    for (int c = 0; c < n_cols; c++) out[c] = F::decode(b + c / F::QK, c % F::QK);
}

#define FORMATS(X)                                                                                          \
    X(REALM_TYPE_Q4_0, fmt_q4_0)                                                                            \
    X(REALM_TYPE_Q4_1, fmt_q4_1)                                                                            \
    X(REALM_TYPE_Q5_0, fmt_q5_0)                                                                            \
    X(REALM_TYPE_Q5_1, fmt_q5_1)                                                                            \
    X(REALM_TYPE_Q8_0, fmt_q8_0)                                                                            \
    X(REALM_TYPE_Q2_K, fmt_q2_K)                                                                            \
    X(REALM_TYPE_Q3_K, fmt_q3_K)                                                                            \
    X(REALM_TYPE_Q4_K, fmt_q4_K)                                                                            \
    X(REALM_TYPE_Q5_K, fmt_q5_K)                                                                            \
    X(REALM_TYPE_Q6_K, fmt_q6_K)

extern "C" {
/* out[r] = dot of row r of w (n_rows x n_cols, raw blocks) with the activation row y
 * (the format's F::act blocks: block_q8_1 or block_q8_K); -1 for a float type */
int harness_dot_rows(int type, const uint8_t *w, const uint8_t *y, int n_rows, int n_cols, float *out) {
    const long long rb = (long long)n_cols / realm_type_block_elems(type) * realm_type_block_bytes(type);
#define CASE(T, F)                                                                                          \
    case T:                                                                                                 \
        for (int r = 0; r < n_rows; r++) out[r] = dot_row<F>(w + r * rb, y, n_cols);              \
        return 0;
    switch (type) { FORMATS(CASE) default: return -1; }
#undef CASE
}

/* the n_rows x n_cols tensor w decoded by the kernels' decode() */
int harness_decode_rows(int type, const uint8_t *w, int n_rows, int n_cols, float *out) {
    const int qk = realm_type_block_elems(type);
    if (qk == 0) return -1;
    const long long rb = (long long)n_cols / qk * realm_type_block_bytes(type);
#define CASE(T, F)                                                                                          \
    case T:                                                                                                 \
        for (int r = 0; r < n_rows; r++) decode_row<F>(w + r * rb, out + (long long)r * n_cols, n_cols);    \
        return 0;
    switch (type) {
        FORMATS(CASE)
        CASE(REALM_TYPE_F32, fmt_f32)
        CASE(REALM_TYPE_F16, fmt_f16)
        CASE(REALM_TYPE_BF16, fmt_bf16)
    default: return -1;
    }
#undef CASE
}
}
