// The arithmetic of brainfloat's rounding kernels, once, for the GPU (NVRTC compiles it inside
// rounding.cu) and the CPU (host_twin.cpp compiles it with the system's C++ compiler, so that the
// tests check it bit for bit against brainfloat-kernels' Rust on any machine). Each function
// mirrors one in crates/kernels/src/rounding.rs and half's bf16 conversion; no headers on the GPU.
//
// Compile for the GPU with --fmad=false: `a·y + b·x` is two roundings in Rust, and a fused
// multiply-add would round once.

#ifndef BRAINFLOAT_ROUNDING_CUH
#define BRAINFLOAT_ROUNDING_CUH

#ifdef __CUDACC__
#define BF_FN __host__ __device__ __forceinline__
typedef unsigned long long bf_u64;
typedef unsigned int bf_u32;
typedef unsigned short bf_u16;
#else
#include <cstdint>
#include <cstring>
#define BF_FN static inline
typedef uint64_t bf_u64;
typedef uint32_t bf_u32;
typedef uint16_t bf_u16;
#endif

// SplitMix64's finaliser (rounding.rs `mix64`).
BF_FN bf_u64 bf_mix64(bf_u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// 16 random bits of element `index` of the stream `key` (rounding.rs `random_bits`): quarter
// `index mod 4` of the hash of `(key, index / 4)`.
BF_FN bf_u16 bf_random_bits(bf_u64 key, bf_u64 index) {
    bf_u64 group = bf_mix64(key ^ ((index / 4) * 0x9E3779B97F4A7C15ull));
    return (bf_u16)(group >> (16 * (index % 4)));
}

BF_FN bf_u32 bf_f32_bits(float value) {
#ifdef __CUDACC__
    return __float_as_uint(value);
#else
    bf_u32 bits;
    std::memcpy(&bits, &value, 4);
    return bits;
#endif
}

BF_FN float bf_f32_from_bits(bf_u32 bits) {
#ifdef __CUDACC__
    return __uint_as_float(bits);
#else
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
#endif
}

// bf16 is the top half of an fp32.
BF_FN float bf_widen(bf_u16 value) { return bf_f32_from_bits(((bf_u32)value) << 16); }

BF_FN bool bf_is_nan(bf_u32 bits) { return (bits & 0x7FFFFFFFu) > 0x7F800000u; }

// fp32 to bf16, to nearest even; a NaN stays a quiet NaN (half's `bf16::from_f32`).
BF_FN bf_u16 bf_round_nearest(float value) {
    bf_u32 x = bf_f32_bits(value);
    if (bf_is_nan(x)) return (bf_u16)((x >> 16) | 0x0040u);
    const bf_u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) {
        return (bf_u16)((x >> 16) + 1u);
    }
    return (bf_u16)(x >> 16);
}

// fp32 to bf16 stochastically with 16 random bits (rounding.rs `round_stochastic`): the bits
// added below the kept half carry into it with the probability of the distance.
BF_FN bf_u16 bf_round_stochastic(float value, bf_u16 bits) {
    bf_u32 x = bf_f32_bits(value);
    bf_u32 rounded = bf_is_nan(x) ? (x | 0x00400000u) : ((x + (bf_u32)bits) & 0xFFFF0000u);
    return (bf_u16)(rounded >> 16);
}

// SR(a·y + b·x) with 16 random bits (rounding.rs `stochastic_axpby`): two products and a sum,
// each rounded to fp32.
BF_FN bf_u16 bf_stochastic_axpby(bf_u16 y, float x, float a, float b, bf_u16 bits) {
    float ay = a * bf_widen(y);
    float bx = b * x;
    return bf_round_stochastic(ay + bx, bits);
}

// One element of Kahan-compensated `weight + delta` (rounding.rs `kahan_add`): the new weight
// and compensation.
BF_FN void bf_kahan_add(bf_u16* weight, bf_u16* compensation, float delta) {
    float old = bf_widen(*weight);
    float carried = bf_widen(*compensation) + delta;
    bf_u16 updated = bf_round_nearest(old + carried);
    float applied = bf_widen(updated) - old;
    *compensation = bf_round_nearest(carried - applied);
    *weight = updated;
}

// The random bits element `index` of stream `key` rounds with, and the delta Kahan's addition
// adds. BF_DELIBERATELY_WRONG (the broken variant the `testing` feature builds, to exercise the
// self-test's fallback) flips the bits and the delta's sign.
#ifdef BF_DELIBERATELY_WRONG
#define BF_BITS(key, index) ((bf_u16)~bf_random_bits((key), (index)))
#define BF_DELTA(delta) (-(delta))
#else
#define BF_BITS(key, index) bf_random_bits((key), (index))
#define BF_DELTA(delta) (delta)
#endif

// Element `i` of each kernel: the GPU's loops (rounding.cu) and the CPU's (host_twin.cpp) call
// these and nothing else.

BF_FN void bf_round_stochastic_at(const float* values, bf_u16* out, bf_u64 i, bf_u64 key) {
    out[i] = bf_round_stochastic(values[i], BF_BITS(key, i));
}

BF_FN void bf_stochastic_axpby_f32_at(bf_u16* y, const float* x, bf_u64 i, float a, float b,
                                      bf_u64 key) {
    y[i] = bf_stochastic_axpby(y[i], x[i], a, b, BF_BITS(key, i));
}

BF_FN void bf_stochastic_axpby_bf16_at(bf_u16* y, const bf_u16* x, bf_u64 i, float a, float b,
                                       bf_u64 key) {
    y[i] = bf_stochastic_axpby(y[i], bf_widen(x[i]), a, b, BF_BITS(key, i));
}

BF_FN void bf_kahan_add_at(bf_u16* weight, bf_u16* compensation, const float* delta, bf_u64 i) {
    bf_kahan_add(&weight[i], &compensation[i], BF_DELTA(delta[i]));
}

#endif
