/* common.cuh: what every kernel file includes. NVRTC compiles each .cu on its own,
 * with csrc/ and csrc/cuda/ on the include path (realm_ext/backends/cuda/source.py).
 *
 * The block structs are ggml_blocks.h's, the same ones the C kernels use; f16 scales
 * are raw IEEE half bits (uint16_t), converted here by PTX cvt instructions.
 *
 * No CUDA toolkit header is included (not even cuda_fp16.h): NVRTC alone, with no
 * toolkit installed, must compile every file (CI does, for sm_80 and sm_90).
 */
#ifndef REALM_CUDA_COMMON_CUH
#define REALM_CUDA_COMMON_CUH

#include "ggml_blocks.h"

#define WARP_SIZE 32

static __device__ __forceinline__ float f16_to_f32(realm_f16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

/* round to nearest even, as ggml's f32 -> f16 */
static __device__ __forceinline__ realm_f16 f32_to_f16(float f) {
    realm_f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
static __device__ __forceinline__ float bf16_to_f32(realm_bf16 h) { return __uint_as_float((unsigned)h << 16); }
/* round to nearest even, NaN kept quiet: as realm_f32_to_bf16 (csrc/fp16.h) */
static __device__ __forceinline__ realm_bf16 f32_to_bf16(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (realm_bf16)((u >> 16) | 64u);
    return (realm_bf16)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
