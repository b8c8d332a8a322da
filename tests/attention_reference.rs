//! fp32 attention (rotary, QK-norm, value residual, causal softmax) against an independent
//! float64 reference written here, element by element, without any Burn op.

use brainfloat_gpt::{RMS_NORM_EPS, Rotary};
use brainfloat_precision::{PrecisionPolicy, named_params};
use brainfloat_tests::*;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

/// Deterministic values in [-1, 1) (a 64-bit LCG), so the test needs no RNG crate.
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// `y[r, o] = Σ_i x[r, i] · w[o, i]` for `w` in PyTorch's `[out, in]` layout.
fn linear_f64(x: &[f64], w: &[f64], d_in: usize, d_out: usize) -> Vec<f64> {
    let rows = x.len() / d_in;
    let mut y = vec![0.0; rows * d_out];
    for r in 0..rows {
        for o in 0..d_out {
            y[r * d_out + o] = (0..d_in).map(|i| x[r * d_in + i] * w[o * d_in + i]).sum();
        }
    }
    y
}

/// QK-norm then half-split rotary on one head vector at position `t`, in place.
fn norm_and_rotate(head: &mut [f64], t: usize) {
    let d = head.len();
    let rms = (head.iter().map(|v| v * v).sum::<f64>() / d as f64 + RMS_NORM_EPS).sqrt();
    head.iter_mut().for_each(|v| *v /= rms);
    let half = d / 2;
    for i in 0..half {
        let angle = t as f64 / 10000f64.powf((2 * i) as f64 / d as f64);
        let (x1, x2) = (head[i], head[i + half]);
        head[i] = x1 * angle.cos() + x2 * angle.sin();
        head[i + half] = -x1 * angle.sin() + x2 * angle.cos();
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_f64(
    x: &[f64],
    v1: &[f64],
    weights: &[Vec<f64>; 4],
    lamb: f64,
    (b, t, h, hd): (usize, usize, usize, usize),
) -> Vec<f64> {
    let c = h * hd;
    let mut q = linear_f64(x, &weights[0], c, c);
    let mut k = linear_f64(x, &weights[1], c, c);
    let v: Vec<f64> = linear_f64(x, &weights[2], c, c)
        .iter()
        .zip(v1)
        .map(|(v, v1)| (1.0 - lamb) * v + lamb * v1)
        .collect();
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                let at = (bi * t + ti) * c + hi * hd;
                norm_and_rotate(&mut q[at..at + hd], ti);
                norm_and_rotate(&mut k[at..at + hd], ti);
            }
        }
    }
    let mut y = vec![0.0; b * t * c];
    for bi in 0..b {
        for hi in 0..h {
            for tq in 0..t {
                let row = |tt: usize| (bi * t + tt) * c + hi * hd;
                let scores: Vec<f64> = (0..=tq)
                    .map(|tk| {
                        (0..hd)
                            .map(|d| q[row(tq) + d] * k[row(tk) + d])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exp.iter().sum();
                for (tk, e) in exp.iter().enumerate() {
                    for d in 0..hd {
                        y[row(tq) + d] += e / total * v[row(tk) + d];
                    }
                }
            }
        }
    }
    linear_f64(&y, &weights[3], c, c)
}

#[test]
fn fp32_attention_matches_a_float64_reference() {
    let policy = PrecisionPolicy::fp32();
    let (model, device) = golden_model(&policy);
    // Block 1: its `lamb` is not 0.5, and v1 (block 0's values) differs from its own v.
    let attn = &model.transformer.h[1].attn;
    let (b, t, h, hd) = (2, 16, 2, 32);
    let c = h * hd;

    let x = pseudo_random(b * t * c, 1);
    let v1 = pseudo_random(b * t * c, 2);
    let tensor = |values: &[f32], shape: [usize; 4]| {
        Tensor::<4>::from_data(
            TensorData::new(values.to_vec(), shape),
            (&device, DType::F32),
        )
    };
    let rotary = Rotary::new(t, hd, 10000.0, FloatDType::F32, &device);
    let (y, _) = attn.forward(
        tensor(&x, [1, b, t, c]).reshape([b, t, c]),
        Some(tensor(&v1, [b, t, h, hd])),
        &rotary,
        None,
    );
    let y = values(y);

    let param = |suffix: &str| {
        let name = format!("transformer.h.1.attn.{suffix}");
        let p = named_params(&model)
            .into_iter()
            .find(|p| p.name == name)
            .unwrap();
        values(p.tensor)
    };
    let weights = ["c_q", "c_k", "c_v", "c_proj"].map(|n| param(&format!("{n}.weight")));
    let lamb = param("lamb")[0];
    let as_f64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let reference = attention_f64(&as_f64(&x), &as_f64(&v1), &weights, lamb, (b, t, h, hd));

    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff: Vec<f64> = y.iter().zip(&reference).map(|(a, b)| a - b).collect();
    let relative = norm(&diff) / norm(&reference);
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = diff.iter().fold(0.0f64, |m, v| m.max(v.abs())) / scale;
    println!("relative L2 error {relative:.2e}, worst element {worst:.2e} of max |y|");
    assert!(relative <= 1e-5, "relative error {relative}");
    assert!(worst <= 1e-5, "worst element error {worst}");
}
