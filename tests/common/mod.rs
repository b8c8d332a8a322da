//! Fixtures and helpers shared by the end-to-end tests.

use std::path::PathBuf;

use brainfloat_gpt::{Batch, Gpt, GptConfig};
use brainfloat_precision::{PrecisionPolicy, apply_policy};
use brainfloat_trainer::load_weights;
use burn::tensor::{Device, Tensor};

/// `tests/fixtures/golden`: weights, tokens and the numbers of the PyTorch reference.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

/// `expected.json` of the golden fixture.
pub fn golden_expected() -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The golden token shard, read by the data crate's shard reader.
pub fn golden_tokens() -> Vec<u32> {
    let shard = brainfloat_data::Shard::open(&golden_dir().join("tokens.bin")).unwrap();
    shard.window(0, shard.len()).unwrap()
}

/// The golden model's shape: vocab 512, 2 layers, width 64, 2 heads, sequences of 32.
pub fn golden_config() -> GptConfig {
    GptConfig::new(512, 2, 2, 64, 32)
}

/// The golden weights under `policy`, on the autodiff flex device.
pub fn golden_model(policy: &PrecisionPolicy) -> (Gpt, Device) {
    let device = brainfloat_test_support::test_device().autodiff();
    let model = golden_config().init(&device).unwrap();
    let model = load_weights(model, &golden_dir().join("init.safetensors")).unwrap();
    (apply_policy(model, policy, &device).unwrap(), device)
}

/// The golden batch that starts at token `start` (B = 2, T = 32).
pub fn golden_batch(start: usize, device: &Device) -> Batch {
    let tokens = golden_tokens();
    Batch::from_window(&tokens[start..start + 2 * 32 + 1], 2, 32, device).unwrap()
}

/// A one-element tensor as f64 (any float dtype).
pub fn scalar(t: Tensor<1>) -> f64 {
    t.cast(burn::tensor::FloatDType::F32).into_scalar::<f32>() as f64
}

/// The values of a tensor as f64 (any float dtype).
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.cast(burn::tensor::FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `|a − b| / |b|`.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// A tensor of a safetensors file: name, dtype, shape, bytes.
pub type TensorEntry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The safetensors file `bytes` with its tensors rewritten by `edit` (written without metadata).
pub fn edited_tensors(bytes: &[u8], edit: impl FnOnce(&mut Vec<TensorEntry>)) -> Vec<u8> {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut list: Vec<TensorEntry> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut list);
    let views: Vec<_> = list
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The torch environment `cargo xtask test` installs (scripts/setup-torch). Under
/// `cargo xtask test` (which sets `BRAINFLOAT_BACKEND`) its absence is a failure; a plain
/// `cargo test`, which installs nothing, skips the PyTorch check and says so.
pub fn torch_python() -> Option<std::path::PathBuf> {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/torch-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("BRAINFLOAT_BACKEND").is_none(),
        "{} is missing: `cargo xtask test` installs PyTorch first",
        python.display()
    );
    eprintln!(
        "skipped: no PyTorch at {} (run `cargo xtask test`)",
        python.display()
    );
    None
}

/// The standard output of `python script args…` (a script of `scripts/`, or `-c CODE`); a
/// failure is the test's, with the interpreter's standard error.
pub fn python_output<S: AsRef<std::ffi::OsStr>>(python: &std::path::Path, args: &[S]) -> Vec<u8> {
    let output = std::process::Command::new(python)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `scripts/{name}`.
pub fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}
