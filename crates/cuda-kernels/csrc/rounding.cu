// brainfloat's rounding kernels for the GPU, compiled at run time by NVRTC: one thread an
// element, grid-stride, each element as rounding.cuh computes it; bf16 as its 16 bits.

#include "rounding.cuh"

#define BF_EACH_ELEMENT(i, n)                                                 \
    for (bf_u64 i = blockIdx.x * (bf_u64)blockDim.x + threadIdx.x; i < (n); \
         i += (bf_u64)gridDim.x * blockDim.x)

extern "C" __global__ void bf_round_stochastic_kernel(const float* values, bf_u16* out, bf_u64 n,
                                                      bf_u64 key) {
    BF_EACH_ELEMENT(i, n) bf_round_stochastic_at(values, out, i, key);
}

extern "C" __global__ void bf_stochastic_axpby_f32_kernel(bf_u16* y, const float* x, bf_u64 n,
                                                          float a, float b, bf_u64 key) {
    BF_EACH_ELEMENT(i, n) bf_stochastic_axpby_f32_at(y, x, i, a, b, key);
}

extern "C" __global__ void bf_stochastic_axpby_bf16_kernel(bf_u16* y, const bf_u16* x, bf_u64 n,
                                                           float a, float b, bf_u64 key) {
    BF_EACH_ELEMENT(i, n) bf_stochastic_axpby_bf16_at(y, x, i, a, b, key);
}

extern "C" __global__ void bf_kahan_add_kernel(bf_u16* weight, bf_u16* compensation,
                                               const float* delta, bf_u64 n) {
    BF_EACH_ELEMENT(i, n) bf_kahan_add_at(weight, compensation, delta, i);
}
