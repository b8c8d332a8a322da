//! The bf16 GEMM candidates side by side on the model's shapes, in one process:
//!
//! - `amx`: the AMX GEMM on Intel AMX's tiles (`crate::amx`), bf16 out (a dash without
//!   AMX-BF16);
//! - `gemmkit`: the `gemmkit` crate's kernels, bf16 out (`vdpbf16ps` with AVX512-BF16, its
//!   widening fp32 kernels elsewhere): the path brainfloat runs;
//! - `own`: brainfloat's own AVX512-BF16 kernel (`dot_bf16`), bf16 out (a dash without
//!   AVX512-BF16);
//! - `portable`: this crate's portable path (operands widened whole, the `gemm` crate's fp32
//!   kernel, rounded), bf16 out;
//! - `flex-bf16`: what Burn's flex does for a bf16 matmul: both operands converted to fp32,
//!   the `gemm` crate's fp32 kernel, the result converted back;
//! - `flex-fp32`: the `gemm` crate on fp32 operands (flex's fp32 matmul).
//!
//! ```sh
//! cargo run --release -p brainfloat-kernels --example gemm_compare [-- TOKENS D_MODEL VOCAB]
//! ```
//! Defaults: the `small` config's micro-batch (8 × 256 tokens, width 256, GPT-2's 50304).

use std::time::Instant;

use brainfloat_kernels::{KernelPath, Matrix, Output, bf16, fp32_gemm, gemm_on, gemm_own};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("TOKENS D_MODEL VOCAB are numbers"))
        .collect();
    let (tokens, d, vocab) = match args[..] {
        [t, d, v] => (t, d, v),
        _ => (2048, 256, 50304),
    };
    println!(
        "threads: {}, AVX512-BF16: {}, AMX-BF16: {}, the path training runs: {}",
        rayon::current_num_threads(),
        KernelPath::cpu_has_avx512_bf16(),
        KernelPath::cpu_has_amx(),
        KernelPath::active().name()
    );
    println!(
        "| product | m×k×n | amx | gemmkit | own | portable | flex-bf16 | flex-fp32 | own / gemmkit |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let layers = [
        ("attn d×d", d, d),
        ("mlp.c_fc", d, 4 * d),
        ("mlp.c_proj", 4 * d, d),
        ("lm_head", d, vocab),
    ];
    for (layer, fan_in, fan_out) in layers {
        for (pass, m, k, n) in [
            ("forward", tokens, fan_in, fan_out),
            ("grad-input", tokens, fan_out, fan_in),
            ("grad-weight", fan_out, tokens, fan_in),
        ] {
            let a: Vec<bf16> = (0..m * k).map(|i| bf16::from_f32(wave(i))).collect();
            let b: Vec<bf16> = (0..k * n).map(|i| bf16::from_f32(wave(i + 7))).collect();
            let mut c = vec![bf16::ZERO; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            let gflops = |seconds: f64| flops / seconds / 1e9;
            let (a_view, b_view) = (Matrix::row_major(&a, m, k), Matrix::row_major(&b, k, n));
            let native =
                time(|| gemm_on(KernelPath::Gemmkit, a_view, b_view, Output::Bf16(&mut c)));
            let reference = c.clone();
            // Both round the same fp32 sums; summation order may flip a rounding now and then.
            let agrees = |c: &[bf16], kernel: &str| {
                let differing = c.iter().zip(&reference).filter(|(x, y)| x != y).count();
                assert!(
                    differing * 100 <= c.len(),
                    "{kernel} disagrees with gemmkit on {differing} values"
                );
            };
            let amx = KernelPath::cpu_has_amx().then(|| {
                let seconds =
                    time(|| gemm_on(KernelPath::Amx, a_view, b_view, Output::Bf16(&mut c)));
                agrees(&c, "amx");
                seconds
            });
            // brainfloat's own kernel needs AVX512-BF16; elsewhere its column says so.
            let own = KernelPath::cpu_has_avx512_bf16().then(|| {
                let seconds = time(|| gemm_own(a_view, b_view, Output::Bf16(&mut c)));
                agrees(&c, "own");
                seconds
            });
            let portable =
                time(|| gemm_on(KernelPath::Portable, a_view, b_view, Output::Bf16(&mut c)));
            let flex_bf16 = time(|| {
                let a32: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
                let b32: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
                let mut c32 = vec![0.0f32; m * n];
                fp32_gemm(&a32, &b32, &mut c32, [m, k, n]);
                for (dst, src) in c.iter_mut().zip(&c32) {
                    *dst = bf16::from_f32(*src);
                }
            });
            let (a32, b32): (Vec<f32>, Vec<f32>) = (
                a.iter().map(|v| v.to_f32()).collect(),
                b.iter().map(|v| v.to_f32()).collect(),
            );
            let mut c32 = vec![0.0f32; m * n];
            let flex_fp32 = time(|| fp32_gemm(&a32, &b32, &mut c32, [m, k, n]));
            println!(
                "| {layer} {pass} | {m}×{k}×{n} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} |",
                amx.map_or("—".into(), |amx| format!("{:.0}", gflops(amx))),
                gflops(native),
                own.map_or("—".into(), |own| format!("{:.0}", gflops(own))),
                gflops(portable),
                gflops(flex_bf16),
                gflops(flex_fp32),
                own.map_or("—".into(), |own| format!("{:.2}×", native / own)),
            );
        }
    }
}

/// Deterministic values in [−1, 1].
fn wave(i: usize) -> f32 {
    ((i * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0
}

/// Median seconds of 7 runs after a warm-up run.
fn time(mut run: impl FnMut()) -> f64 {
    run();
    let mut seconds: Vec<f64> = (0..7)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    seconds[3]
}
