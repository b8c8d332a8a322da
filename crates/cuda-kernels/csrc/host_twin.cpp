// The GPU kernels' host twin: rounding.cu's loops on the CPU over the same per-element
// functions (rounding.cuh), for the tests. Built twice by build.rs: as written, and with
// BF_DELIBERATELY_WRONG under a `_wrong` suffix (the broken variant of the self-test's test).

#include "rounding.cuh"

#ifdef BF_DELIBERATELY_WRONG
#define BF_TWIN(name) name##_wrong
#else
#define BF_TWIN(name) name
#endif

extern "C" {

void BF_TWIN(bf_host_round_stochastic)(const float* values, bf_u16* out, bf_u64 n, bf_u64 key) {
    for (bf_u64 i = 0; i < n; i++) bf_round_stochastic_at(values, out, i, key);
}

void BF_TWIN(bf_host_stochastic_axpby_f32)(bf_u16* y, const float* x, bf_u64 n, float a, float b,
                                           bf_u64 key) {
    for (bf_u64 i = 0; i < n; i++) bf_stochastic_axpby_f32_at(y, x, i, a, b, key);
}

void BF_TWIN(bf_host_stochastic_axpby_bf16)(bf_u16* y, const bf_u16* x, bf_u64 n, float a,
                                            float b, bf_u64 key) {
    for (bf_u64 i = 0; i < n; i++) bf_stochastic_axpby_bf16_at(y, x, i, a, b, key);
}

void BF_TWIN(bf_host_kahan_add)(bf_u16* weight, bf_u16* compensation, const float* delta,
                                bf_u64 n) {
    for (bf_u64 i = 0; i < n; i++) bf_kahan_add_at(weight, compensation, delta, i);
}

}  // extern "C"
