//! CPU kernels for bf16 mixed-precision training, over plain slices (no Burn types), in the
//! manner of llm.c's kernels: each named for what it computes, tested against a float64
//! reference on ragged shapes.
//!
//! - [`gemm`]: `C = A·B` with bf16 operands, fp32 accumulation and a bf16 or fp32 result; any
//!   strides, so transposed operands cost nothing. It runs the `gemmkit` crate's kernels:
//!   `vdpbf16ps` on a CPU with AVX512-BF16, fp32 kernels on bf16 panels widened as they are
//!   packed elsewhere; [`KernelPath::Portable`] (forced) widens the operands whole and runs the
//!   `gemm` crate's fp32 GEMM (flex's).
//! - [`rms_norm`] and [`rms_norm_backward`]: RMSNorm over the last dimension that keeps one
//!   fp32 statistic per row and reads and writes the activation dtype only.
//! - [`softcapped_cross_entropy`]: the record's soft-capped fp32 loss over logits rows and its
//!   gradient in one pass per row, with vectorised `exp` and `tanh`; written over the logits by
//!   [`softcapped_cross_entropy_in_place`].
//! - [`adam_update`]: one Adam step of a parameter and its moments in one pass (decoupled decay
//!   and Kahan compensation included).
//! - [`causal_attention`] and [`causal_attention_backward`]: bf16 attention as PyTorch's CPU
//!   `scaled_dot_product_attention` rounds it (fp32 scores, bf16 exponentials for `e·V`, fp32
//!   row sums), saving nothing but its output.
//! - [`causal_softmax`] and [`causal_softmax_backward`]: attention's masked softmax, fp32
//!   inside, one pass per row each way.
//! - [`rotary`]: rotary position embeddings and their backward in one pass.
//! - [`relu_square`] and [`relu_square_backward`]: the MLP's ReLU², one pass each way.
//! - [`accumulate`] and [`widen`]: fp32 sums of bf16 parts.
//! - [`round_stochastic_into`] and [`kahan_add`]: writing fp32 updates into bf16 storage
//!   without losing the small ones (stochastic rounding with counter-based random bits, Kahan
//!   compensation).
//!
//! - [`amx`]: the bf16 GEMM on Intel AMX's tiles, written once over a tile unit with two
//!   implementations: the instructions (`asm!`) and a software model that any CPU runs.
//!
//! All run on all cores (rayon). [`KernelPath::active`] says which GEMM runs (AMX where the CPU
//! and OS allow it, else gemmkit's); the environment variable [`PATH_VAR`] forces one by name.
//!
//! ```
//! use brainfloat_kernels::{Matrix, Output, gemm};
//! use half::bf16;
//!
//! let a: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0].map(bf16::from_f32).to_vec(); // 2×2
//! let b: Vec<bf16> = [5.0f32, 6.0, 7.0, 8.0].map(bf16::from_f32).to_vec(); // 2×2
//! let mut c = vec![0.0f32; 4];
//! gemm(Matrix::row_major(&a, 2, 2), Matrix::row_major(&b, 2, 2), Output::F32(&mut c));
//! assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
//! ```

mod accumulate;
mod adam;
pub mod amx;
mod attention;
mod cross_entropy;
#[cfg(feature = "own-gemm")]
mod dot_bf16;
mod elem;
mod gemm;
mod math;
mod ordered;
mod path;
mod relu_square;
mod rms_norm;
mod rotary;
mod rounding;
mod softmax;

pub use accumulate::{accumulate, axpby, scale, square_sum, widen};
pub use adam::{AdamStep, adam_update};
pub use attention::{AttentionShape, causal_attention, causal_attention_backward};
pub use cross_entropy::{
    MAX_SHIFT_CAP, softcapped_cross_entropy, softcapped_cross_entropy_in_place,
};
pub use elem::Float;
#[cfg(feature = "own-gemm")]
pub use gemm::gemm_own;
pub use gemm::{Matrix, MatrixStack, Output, batched_gemm, fp32_gemm, gemm, gemm_on};
pub use half::bf16;
pub use path::{KernelPath, PATH_VAR};
pub use relu_square::{relu_square, relu_square_backward};
pub use rms_norm::{rms_norm, rms_norm_backward};
pub use rotary::rotary;
pub use rounding::{
    kahan_add, random_bits, round_stochastic, round_stochastic_into, rounding_key, stochastic_axpby,
};
pub use softmax::{causal_softmax, causal_softmax_backward};

/// Test inputs shared by the kernels' unit tests.
#[cfg(test)]
mod test_values {
    use half::bf16;

    /// `len` deterministic pseudo-random bf16 values in [−2, 2) (xorshift from `seed`).
    pub fn values(len: usize, seed: u64) -> Vec<bf16> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bf16::from_f32((state >> 40) as f32 / (1u64 << 22) as f32 - 2.0)
            })
            .collect()
    }

    /// [`values`] times a power of two, `2^exponent` (exact in bf16).
    pub fn scaled_values(len: usize, seed: u64, exponent: i32) -> Vec<bf16> {
        let factor = 2f32.powi(exponent);
        (values(len, seed).into_iter())
            .map(|v| bf16::from_f32(v.to_f32() * factor))
            .collect()
    }
}
