//! Layer by layer against PyTorch, in the spirit of llm.c's `test_gpt2`: the record's PyTorch
//! model (`scripts/pytorch_reference.py --dump-layers`) runs the golden weights on the golden
//! batch under fp32, autocast and bf16 and writes every block's input and output, attention's
//! q, k, v and output, the MLP's hidden activation, the final norm, the loss and every
//! parameter's gradient; ours records the same (`brainfloat_gpt::trace`), and each tensor is
//! held to a bound on
//! its relative error `‖ours − PyTorch‖ / ‖PyTorch‖` (and, in bf16, its share of bit-identical
//! elements is reported). With `BRAINFLOAT_LAYERS_REPORT=FILE` the table is written there
//! (`docs/results/layers_vs_pytorch.md`; its bounds are explained in `docs/precision.md`).

use brainfloat_gpt::LanguageModel;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use brainfloat_precision::{PrecisionPolicy, Preset, named_grads};
use brainfloat_tests::*;
use burn::tensor::{DType, Tensor};
use safetensors::{Dtype, SafeTensors};

/// One tensor of PyTorch's dump: its dtype and values.
struct Reference {
    dtype: Dtype,
    values: Vec<f64>,
}

/// The values of a dumped tensor, widened to f64.
fn reference(file: &SafeTensors<'_>, name: &str) -> Reference {
    let view = file
        .tensor(name)
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    let bytes = view.data();
    let values = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| {
                let bits = u32::from(u16::from_le_bytes(b.try_into().unwrap())) << 16;
                f64::from(f32::from_bits(bits))
            })
            .collect(),
        other => panic!("{name}: dtype {other:?}"),
    };
    Reference {
        dtype: view.dtype(),
        values,
    }
}

/// How one tensor of ours compares with PyTorch's.
struct Comparison {
    name: String,
    dtype: DType,
    relative_error: f64,
    /// Elements equal to PyTorch's exactly.
    identical: f64,
}

fn compare<const D: usize>(name: &str, ours: Tensor<D>, theirs: &Reference) -> Comparison {
    let dtype = ours.dtype();
    let ours = values(ours);
    assert_eq!(ours.len(), theirs.values.len(), "{name}: element count");
    let (mut difference, mut norm, mut identical) = (0.0, 0.0, 0usize);
    for (a, b) in ours.iter().zip(&theirs.values) {
        difference += (a - b) * (a - b);
        norm += b * b;
        identical += usize::from(a == b);
    }
    Comparison {
        name: name.to_string(),
        dtype,
        relative_error: if norm == 0.0 {
            difference.sqrt()
        } else {
            (difference / norm).sqrt()
        },
        identical: identical as f64 / ours.len() as f64,
    }
}

/// The bound on a tensor's relative error under `preset`, about twice to four times the worst
/// measured (docs/precision.md): fp32 differs from PyTorch's only in summation order (measured
/// ≤ 5.4e-7 on activations, 2.3e-6 on tensor gradients, 5.0e-6 on the scalars' — `lamb` and
/// `lambdas`, each one sum over every element of an activation, whose terms cancel); autocast
/// and bf16 round at PyTorch's points or near them (≤ 9.3e-3 on activations, 2.8e-2 on
/// gradients, the latter a scalar's).
fn bound(preset: Preset, name: &str) -> f64 {
    let gradient = name.starts_with("grad.");
    let scalar = name.ends_with(".lamb") || name.ends_with(".lambdas");
    match (preset, gradient) {
        (Preset::Fp32, false) => 2e-6,
        (Preset::Fp32, true) if scalar => 2e-5,
        (Preset::Fp32, true) => 5e-6,
        (_, false) => 2e-2,
        (_, true) => 6e-2,
    }
}

/// The least share of bf16 elements equal to PyTorch's under the bf16 preset: every
/// activation is computed as PyTorch computes it, attention's exponentials included (measured
/// 100 % on flex and libtorch). Block 0's must stay so; past it a GEMM whose summation order
/// differs (another CPU's oneDNN path) may flip a rounding that spreads, so the floor is lower.
/// An fp32 computation rounded to bf16 at the end lands on few of PyTorch's bf16 values
/// (measured 0 %).
fn least_identical(name: &str) -> f64 {
    if name.starts_with("blocks.0.") {
        0.99
    } else {
        0.9
    }
}

#[test]
fn every_layer_and_gradient_is_pytorchs() {
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("layers.safetensors");
    let golden = golden_dir();
    python_output(
        &python,
        &[
            script("pytorch_reference.py").as_os_str(),
            "--vocab=512".as_ref(),
            "--layers=2".as_ref(),
            "--heads=2".as_ref(),
            "--dim=64".as_ref(),
            "--batch=2".as_ref(),
            "--seq=32".as_ref(),
            "--init".as_ref(),
            golden.join("init.safetensors").as_os_str(),
            "--tokens".as_ref(),
            golden.join("tokens.bin").as_os_str(),
            "--dump-layers".as_ref(),
            dump.as_os_str(),
        ],
    );
    let bytes = std::fs::read(&dump).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut table = String::from(
        "| preset | tensor | our dtype | PyTorch's | relative error | bit-identical | bound |\n\
         |---|---|---|---|---:|---:|---:|\n",
    );
    let mut failures = Vec::new();
    for preset in Preset::RECORD {
        let policy = PrecisionPolicy::preset(preset);
        let (model, device) = golden_model(&policy);
        let batch = golden_batch(0, &device);
        let (loss, mut ours) = brainfloat_gpt::trace::collect(|| {
            model.forward(&batch, &model.cache(&device)).unwrap()
        });
        ours.push(("loss".into(), loss.clone()));
        let grads = loss.backward();
        let mut by_name: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        for g in named_grads(&model, &grads) {
            by_name.insert(format!("grad.{}", g.name), g.tensor);
        }
        ours.extend(by_name);
        // Every tensor PyTorch wrote is compared, but its logits (ours are made and dropped
        // chunk by chunk inside the loss).
        let prefix = format!("{preset}/");
        let theirs: Vec<&str> = file
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix))
            .filter(|n| *n != "logits")
            .collect();
        let missing: Vec<&&str> = theirs
            .iter()
            .filter(|n| !ours.iter().any(|(name, _)| name.as_str() == **n))
            .collect();
        assert!(missing.is_empty(), "{preset}: not compared: {missing:?}");
        for (name, tensor) in ours {
            let activation = !name.starts_with("grad.") && name != "loss";
            let theirs = reference(&file, &format!("{preset}/{name}"));
            let c = compare(&name, tensor, &theirs);
            let limit = bound(preset, &name);
            let _ = writeln!(
                table,
                "| {preset} | {} | {:?} | {:?} | {:.2e} | {:.1}% | {limit:.1e} |",
                c.name,
                c.dtype,
                theirs.dtype,
                c.relative_error,
                100.0 * c.identical
            );
            // The activations are in the policy's dtype, as PyTorch's are. Not yet under
            // autocast: PyTorch keeps a linear's bf16 output in bf16 until it meets an fp32
            // tensor, where ours casts every product back to fp32 (issue 37).
            if preset != Preset::Autocast && activation {
                let expected = match theirs.dtype {
                    Dtype::BF16 => DType::BF16,
                    _ => DType::F32,
                };
                if c.dtype != expected {
                    failures.push(format!(
                        "{preset} {name}: dtype {:?}, PyTorch's {expected:?}",
                        c.dtype
                    ));
                }
            }
            let floor = least_identical(&name);
            if preset == Preset::Bf16 && activation && c.identical < floor {
                failures.push(format!(
                    "{preset} {name}: {:.1}% of elements PyTorch's bits, fewer than {:.0}%",
                    100.0 * c.identical,
                    100.0 * floor
                ));
            }
            if c.relative_error.is_nan() || c.relative_error > limit {
                failures.push(format!(
                    "{preset} {name}: relative error {:.2e} > {limit:.0e}",
                    c.relative_error
                ));
            }
        }
    }
    println!("{table}");
    if let Ok(path) = std::env::var("BRAINFLOAT_LAYERS_REPORT") {
        let backend = std::env::var("BRAINFLOAT_BACKEND").unwrap_or_else(|_| "flex".into());
        let file = std::path::Path::new(&path)
            .file_name()
            .map_or(String::new(), |name| name.to_string_lossy().into_owned());
        let report = format!(
            "# Layer by layer against PyTorch\n\n\
             Command: `BRAINFLOAT_LAYERS_REPORT=$PWD/docs/results/{file} cargo xtask test \
             --backend {backend} --test layer_parity`\n\n\
             The golden weights and first batch (B = 2, T = 32), on {backend}, against the record's \
             PyTorch model (`scripts/pytorch_reference.py --dump-layers`, PyTorch's CPU \
             kernels). Relative error: `‖ours − PyTorch‖ / ‖PyTorch‖` over the tensor; \
             bit-identical: the share of elements equal to PyTorch's exactly.\n\n{table}"
        );
        std::fs::write(&path, report).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
