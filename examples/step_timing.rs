//! Where one training step's time goes: forward, backward and optimizer, per precision preset,
//! for the tiny (default) or small model on GPT-2's vocabulary.
//!
//! ```text
//! cargo run --release -p brainfloat-examples --example step_timing [-- small [PRESET]]
//! ```

use std::time::Instant;

use brainfloat_gpt::{Batch, GptConfig};
use brainfloat_precision::{PrecisionPolicy, Preset, apply_policy};
use brainfloat_trainer::{RecordOptimizer, RecordOptimizerConfig};
use burn::optim::GradientsParams;
use burn::tensor::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the trainer does: freed blocks are reused, not handed back to the OS each time.
    brainfloat_memory::retain_freed_memory(true);
    let device = Device::flex().autodiff();
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
    for preset in Preset::ALL
        .into_iter()
        .filter(|p| only.is_none_or(|o| o == *p))
    {
        let policy = PrecisionPolicy::preset(preset);
        let mut model = apply_policy(config.init(&device)?, &policy, &device)?;
        let mut optimizer = RecordOptimizer::new(RecordOptimizerConfig {
            ns_dtype: policy.matmul(),
            ..Default::default()
        });
        for step in 0..4 {
            let t0 = Instant::now();
            let loss = model.forward(&data)?;
            let value = loss.clone().detach().into_scalar::<f32>();
            let t1 = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            device.sync()?;
            let t2 = Instant::now();
            (model, _) = optimizer.step(model, grads, 1.0, 1.0, step);
            device.sync()?;
            let t3 = Instant::now();
            println!(
                "{preset:<8} step {step}: loss {value:.4}  forward {:>6.0} ms  backward {:>6.0} ms  optimizer {:>6.0} ms",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                (t3 - t2).as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
