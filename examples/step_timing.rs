//! Where one training step's time and memory go: forward, backward and optimizer, per
//! precision preset, for the tiny (default) or small model on GPT-2's vocabulary, on the backend
//! `BRAINFLOAT_BACKEND` names (flex when unset).
//!
//! ```text
//! cargo run --release -p brainfloat-examples --example step_timing [-- small [PRESET]]
//! ```
//!
//! Memory is the peak of the resident set during each phase over what was resident before the
//! preset's model was built, with freed blocks handed back to the OS (as the benchmark measures
//! it): on libtorch, whose tensors live outside Rust's allocator, it is the one measure there is.
//! After the optimizer, `kept` is what stays resident between steps. The times are taken with
//! freed blocks handed back too, which costs page faults the trainer (which keeps them, see
//! `brainfloat_memory::retain_freed_memory`) does not pay: on libtorch they read slower than
//! its steps; compare them with each other, not with the benchmark's.

use std::time::Instant;

use brainfloat_backend::Backend;
use brainfloat_gpt::{Batch, GptConfig, LanguageModel};
use brainfloat_memory as memory;
use brainfloat_precision::{PrecisionPolicy, Preset, apply_policy};
use brainfloat_trainer::{RecordOptimizer, RecordOptimizerConfig};
use burn::optim::GradientsParams;

/// Runs `phase`, returning its result, its milliseconds and the peak of the resident set
/// during it over `baseline` (bytes), in MiB.
fn measured<T>(baseline: usize, phase: impl FnOnce() -> T) -> (T, f64, f64) {
    let ((result, ms), span) = memory::rss_during(|| {
        let start = Instant::now();
        let result = phase();
        (result, start.elapsed().as_secs_f64() * 1e3)
    });
    let peak = span.map_or(0, |s| s.peak);
    (result, ms, mib(peak.saturating_sub(baseline)))
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    memory::retain_freed_memory(false);
    let backend = Backend::from_env()?;
    let device = backend.device()?.autodiff();
    let small = std::env::args().nth(1).is_some_and(|size| size == "small");
    let (mut config, batch, seq) = if small {
        (GptConfig::small(), 8, 256)
    } else {
        (GptConfig::tiny(), 16, 64)
    };
    config.vocab_size = 50304;
    let window: Vec<u32> = (0..batch * seq + 1)
        .map(|i| (i * 7919 % 50257) as u32)
        .collect();
    let data = Batch::from_window(&window, batch, seq, &device)?;
    let only: Option<Preset> = std::env::args().nth(2).map(|p| p.parse()).transpose()?;
    println!("backend {backend}: time (ms) and resident-set peak (MiB) per phase");
    for preset in Preset::ALL
        .into_iter()
        .filter(|p| only.is_none_or(|o| o == *p))
    {
        memory::release_free_memory();
        let baseline = memory::rss().map_or(0, |r| r.current);
        let policy = PrecisionPolicy::preset(preset);
        let mut model = apply_policy(config.init(&device)?, &policy, &device)?;
        let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
            ns_dtype: policy.matmul(),
            ..Default::default()
        });
        let cache = model.cache(&device);
        for step in 0..4 {
            let (loss, forward_ms, forward_mib) = measured(baseline, || {
                let loss = model.forward(&data, &cache)?;
                device.sync()?;
                Ok::<_, Box<dyn std::error::Error>>(loss)
            });
            let loss = loss?;
            let value = loss.clone().detach().into_scalar::<f32>();
            let (grads, backward_ms, backward_mib) = measured(baseline, || {
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                device.sync().map(|_| grads)
            });
            let grads = grads?;
            let ((stepped, synced), optimizer_ms, optimizer_mib) = measured(baseline, || {
                let stepped = optimizer.step(model, grads, 1.0, 1.0, step);
                (stepped, device.sync())
            });
            synced?;
            model = stepped;
            memory::release_free_memory();
            let kept = mib(memory::rss()
                .map_or(0, |r| r.current)
                .saturating_sub(baseline));
            println!(
                "{preset:<10} step {step}: loss {value:.4}  forward {forward_ms:>6.0} ms {forward_mib:>6.0} MiB  \
                 backward {backward_ms:>6.0} ms {backward_mib:>6.0} MiB  \
                 optimizer {optimizer_ms:>6.0} ms {optimizer_mib:>6.0} MiB  kept {kept:>6.0} MiB"
            );
        }
    }
    Ok(())
}
