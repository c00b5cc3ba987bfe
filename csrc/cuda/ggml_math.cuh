/* ggml_math.cuh: the float arithmetic of ggml's CPU kernels that the CUDA kernels
 * repeat bit for bit (see csrc/cpu/ops.c), so that the GPU path rounds where the CPU path
 * rounds: on quantized models a 1-ulp difference that flips a later 8-bit or f16
 * rounding moves the logits by ~1e-2.
 *
 * __fmul_rn / __fadd_rn / __fsub_rn are never contracted into fused multiply-adds
 * (NVRTC contracts a * b + c by default; the CPU code is built with -ffp-contract=off).
 */
#ifndef REALM_CUDA_GGML_MATH_CUH
#define REALM_CUDA_GGML_MATH_CUH

/* e^x as realm_expf_ggml (ggml's vectorized expf, csrc/cpu/ops.c): n = round(x log2 e),
 * b = x - n ln 2 in two parts, a degree-5 polynomial in FMAs, scaled by 2^n; 0 or
 * infinity when |n| > 192. Every step is one IEEE operation, so the bits are the CPU's. */
static __device__ __forceinline__ float expf_ggml(float x) {
    const float shifter = 0x1.8p23f;
    const float n = __fsub_rn(fmaf(x, 0x1.715476p+0f, shifter), shifter);
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : __int_as_float(0x7f800000);
    const float u = __fmul_rn(b, b);
    const float p = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(p, (int)n);
}

#endif
