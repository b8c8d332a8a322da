//! Parity with the PyTorch reference of the record: the golden weights and tokens give the
//! losses and gradient norms PyTorch computed from them.

use brainfloat_precision::{PrecisionPolicy, Preset, named_grads};
use brainfloat_tests::*;

#[test]
fn loss_at_init_matches_pytorch_for_every_preset() {
    let expected = golden_expected();
    for preset in Preset::ALL {
        let (model, device) = golden_model(&PrecisionPolicy::preset(preset));
        // Mean over the first two batches, read from tokens 0 and 64.
        let loss = [0, 64]
            .map(|start| scalar(model.forward(&golden_batch(start, &device)).unwrap()))
            .iter()
            .sum::<f64>()
            / 2.0;
        let want = expected["loss_at_init"][preset.name()].as_f64().unwrap();
        let tolerance = if preset == Preset::Fp32 { 1e-4 } else { 2e-2 };
        println!(
            "{preset}: loss {loss:.7} vs PyTorch {want:.7}, rel {:.2e}",
            rel(loss, want)
        );
        assert!(rel(loss, want) <= tolerance, "{preset}: {loss} vs {want}");
    }
}

#[test]
fn grad_norms_at_init_match_pytorch_fp32() {
    let expected = golden_expected();
    let expected = expected["grad_norm_at_init_fp32"].as_object().unwrap();
    let (model, device) = golden_model(&PrecisionPolicy::fp32());
    let grads = model.forward(&golden_batch(0, &device)).unwrap().backward();
    let grads = named_grads(&model, &grads);
    assert_eq!(grads.len(), expected.len(), "one gradient per parameter");
    for g in grads {
        let want = expected[&g.name].as_f64().unwrap();
        let norm = values(g.tensor).iter().map(|v| v * v).sum::<f64>().sqrt();
        println!("{:<40} {norm:.7} vs {want:.7}", g.name);
        if want == 0.0 {
            // Block 0's `lamb` mixes v with itself: its gradient is exactly zero.
            assert!(norm <= 1e-6, "{}: {norm}", g.name);
        } else {
            assert!(rel(norm, want) <= 1e-4, "{}: {norm} vs {want}", g.name);
        }
    }
}
