//! GPT-2 through the binary: `train --init hf:DIR` fine-tunes a model `transformers` saved,
//! `export --hf` writes one it loads, and `generate` reads our weights file without `--config`
//! (the shape is in its metadata) and the exported folder, to the same text.

use std::path::Path;
use std::process::{Command, Output};

use brainfloat_tests::{python_output, script, torch_python};

const BIN: &str = env!("CARGO_BIN_EXE_brainfloat");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn check(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn fine_tune_export_and_generate_a_transformers_gpt2() {
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let make = script("hf_gpt2.py");
    // GPT-2's vocabulary, so that the GPT-2 tokenizer's prompts fit.
    python_output(
        &python,
        &[
            make.as_os_str(),
            "make".as_ref(),
            hf.as_os_str(),
            "50257".as_ref(),
        ],
    );
    let shard = dir.path().join("pattern_000.bin");
    let tokens: Vec<u32> = (0..20_000u32).map(|i| (i % 29) * 1733 % 50257).collect();
    brainfloat_data::write_shard(&shard, &tokens).unwrap();
    let out = dir.path().join("out");
    let init = format!("hf:{}", text(&hf));
    let data = |key: &str| format!("data.{key}={}", text(&shard));
    let (train, val, output) = (
        data("train"),
        data("val"),
        format!("output.dir={}", text(&out)),
    );
    let mut args = vec!["train", "--init", &init];
    for set in [
        &train,
        &val,
        &output,
        "train.steps=2",
        "train.batch_size=2",
        "train.seq_len=32", // the folder's context is 48
        "train.warmdown_steps=0",
        "eval.every=0",
        "eval.sample_every=0",
        "output.checkpoint_every=2",
        "output.progress=false",
    ] {
        args.extend(["--set", set]);
    }
    check(&run(&args), "train --init hf:DIR");
    let record = out.join("step_000002.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(saved["config"]["model"]["arch"], "gpt2");
    assert_eq!(saved["config"]["model"]["d_mlp"], 160);

    let exported = dir.path().join("exported");
    let stdout = check(
        &run(&[
            "export",
            "--checkpoint",
            text(&record),
            "--hf",
            text(&exported),
        ]),
        "export",
    );
    assert!(stdout.contains("model.safetensors"), "{stdout}");
    let tokens_json = dir.path().join("tokens.json");
    std::fs::write(&tokens_json, "[[464, 3290, 11, 50256]]").unwrap();
    let logits = python_output(
        &python,
        &[
            make.as_os_str(),
            "logits".as_ref(),
            exported.as_os_str(),
            tokens_json.as_os_str(),
        ],
    );
    let logits: Vec<f64> = serde_json::from_slice(&logits).unwrap();
    assert_eq!(logits.len(), 4 * 50257);
    assert!(logits.iter().all(|l| l.is_finite()));

    // The weights file alone (no --config: the embedded tiny config is another shape) and the
    // exported folder give the same greedy text.
    let weights = out.join(saved["model"]["file"].as_str().unwrap());
    let generate = |checkpoint: &str| {
        let output = run(&[
            "generate",
            "--checkpoint",
            checkpoint,
            "--prompt",
            "The",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--precision",
            "fp32",
        ]);
        check(&output, &format!("generate --checkpoint {checkpoint}"))
    };
    let from_weights = generate(text(&weights));
    let from_export = generate(&format!("hf:{}", text(&exported)));
    assert!(from_weights.starts_with("The"), "{from_weights}");
    assert_eq!(from_weights, from_export);

    // A folder that is not a Hugging Face model: one line naming it, no panic.
    let missing = dir.path().join("missing");
    let output = run(&["train", "--init", &format!("hf:{}", text(&missing))]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("config.json") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
