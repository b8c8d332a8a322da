//! The fused head and loss (`CastedLinear::chunked_cross_entropy`) of the `small` model on
//! GPT-2's vocabulary, forward and backward, per chunk size: time against resident memory, on
//! the backend `BRAINFLOAT_BACKEND` names (flex when unset). The chunk sizes run interleaved,
//! round by round, so that a noisy machine slows them alike.
//!
//! ```text
//! cargo run --release -p brainfloat-examples --example head_chunks [-- PRESET]
//! ```

use std::time::Instant;

use brainfloat_backend::Backend;
use brainfloat_memory as memory;
use brainfloat_precision::{
    CastedLinearConfig, LOGITS_PER_CHUNK, PrecisionPolicy, apply_policy, rows_per_chunk,
};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};

/// The `small` model's head and batch.
const VOCAB: usize = 50304;
const D_MODEL: usize = 256;
const BATCH: usize = 8;
const SEQ: usize = 256;
const ROUNDS: usize = 6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    memory::retain_freed_memory(false);
    let backend = Backend::from_env()?;
    let device = backend.device()?.autodiff();
    let preset = std::env::args().nth(1).unwrap_or_else(|| "bf16-sr".into());
    let policy: PrecisionPolicy = preset.parse()?;
    let head = apply_policy(
        CastedLinearConfig::new(D_MODEL, VOCAB).init(&device),
        &policy,
        &device,
    )?;
    let targets: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| (i * 7919 % 50257) as i64)
        .collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [BATCH, SEQ]), &device);
    let hidden = Tensor::<3>::random(
        [BATCH, SEQ, D_MODEL],
        Distribution::Normal(0.0, 1.0),
        (&device, DType::F32),
    )
    .cast(policy.activation())
    .require_grad();
    let chunks = [LOGITS_PER_CHUNK, LOGITS_PER_CHUNK / 2, LOGITS_PER_CHUNK / 4];
    let mut times = vec![Vec::new(); chunks.len()];
    let mut growth = vec![0usize; chunks.len()];
    // Round 0 warms up.
    for round in 0..=ROUNDS {
        for (i, &chunk) in chunks.iter().enumerate() {
            let (ms, span) = memory::rss_during(|| {
                let start = Instant::now();
                let loss =
                    head.chunked_cross_entropy(hidden.clone(), targets.clone(), Some(30.0), chunk);
                let grads = loss.backward();
                hidden.grad(&grads).expect("hidden is tracked").into_data();
                start.elapsed().as_secs_f64() * 1e3
            });
            if round > 0 {
                times[i].push(ms);
            }
            let span_growth = span.map_or(0, |s| s.peak.saturating_sub(s.before));
            growth[i] = growth[i].max(span_growth);
        }
    }
    println!("backend {backend}, preset {preset}: the head of `small`, forward and backward");
    println!("| logits per chunk | rows per chunk | median ms | peak RSS growth (MiB) |");
    println!("|---:|---:|---:|---:|");
    for (i, chunk) in chunks.iter().enumerate() {
        times[i].sort_by(f64::total_cmp);
        println!(
            "| {} Mi | {} | {:.0} | {:.0} |",
            chunk >> 20,
            rows_per_chunk(BATCH * SEQ, VOCAB, *chunk),
            times[i][ROUNDS / 2],
            growth[i] as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
