//! Safetensors checkpoints: PyTorch names and layouts, bit-exact round trips, clear errors for
//! files that do not match the model.

use std::collections::HashMap;
use std::path::Path;

use brainfloat_gpt::{GptConfig, LanguageModel, ModelShape};
use brainfloat_precision::PrecisionPolicy;
use brainfloat_tests::*;
use brainfloat_trainer::{
    load_weights, save_weights, weights_from_safetensors, weights_shape, weights_to_safetensors,
};
use safetensors::SafeTensors;

/// Every tensor of a safetensors file: name → (dtype, shape, bytes).
fn tensors(bytes: &[u8]) -> HashMap<String, (String, Vec<usize>, Vec<u8>)> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let entry = (
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            );
            (name, entry)
        })
        .collect()
}

#[test]
fn pytorch_weights_round_trip_bit_exactly_with_their_names_and_layouts() {
    let golden = std::fs::read(golden_dir().join("init.safetensors")).unwrap();
    let (model, _) = golden_model(&PrecisionPolicy::fp32());
    let saved = weights_to_safetensors(&model).unwrap();
    // Same names, dtypes, shapes ([out, in], 0-d lamb) and bytes as the file PyTorch wrote.
    assert_eq!(tensors(&saved), tensors(&golden));
    let file = SafeTensors::deserialize(&saved).unwrap();
    assert_eq!(
        file.tensor("transformer.h.0.mlp.c_fc.weight")
            .unwrap()
            .shape(),
        [256, 64]
    );
    assert_eq!(
        file.tensor("transformer.h.0.attn.lamb").unwrap().shape(),
        [0usize; 0]
    );
}

#[test]
fn bf16_models_round_trip_bit_exactly_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (model, device) = golden_model(&PrecisionPolicy::bf16());
    save_weights(&model, &path).unwrap();
    save_weights(&model, &path).unwrap(); // over an existing file
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "no temporary file is left behind");

    let saved = std::fs::read(&path).unwrap();
    let by_name = tensors(&saved);
    assert_eq!(by_name["transformer.wte.weight"].0, "BF16");
    assert_eq!(by_name["transformer.h.1.lambdas"].0, "BF16");
    assert_eq!(by_name["lm_head.weight"].0, "F32");

    let fresh = brainfloat_precision::apply_policy(
        golden_config().init(&device).unwrap(),
        &PrecisionPolicy::bf16(),
        &device,
    )
    .unwrap();
    let loaded = load_weights(fresh, &path).unwrap();
    assert_eq!(weights_to_safetensors(&loaded).unwrap(), saved);

    // The file carries its model's shape; PyTorch's file carries none.
    let shape = weights_shape(&path).unwrap();
    assert_eq!(shape, Some(ModelShape::Record(golden_config())));
    assert_eq!(
        weights_shape(&golden_dir().join("init.safetensors")).unwrap(),
        None
    );
}

fn load_error(bytes: &[u8]) -> String {
    let (model, _) = golden_model(&PrecisionPolicy::fp32());
    match weights_from_safetensors(model, bytes) {
        Ok(_) => panic!("loaded a file that does not match the model"),
        Err(err) => err.to_string(),
    }
}

/// The golden file with its tensors edited by `edit`.
fn edited(edit: impl FnOnce(&mut Vec<TensorEntry>)) -> Vec<u8> {
    edited_tensors(
        &std::fs::read(golden_dir().join("init.safetensors")).unwrap(),
        edit,
    )
}

#[test]
fn mismatched_checkpoints_are_refused_with_the_reason() {
    let missing = edited(|l| l.retain(|(n, ..)| n != "transformer.h.1.attn.c_k.weight"));
    assert_eq!(
        load_error(&missing),
        "missing tensor transformer.h.1.attn.c_k.weight"
    );

    let extra = edited(|l| {
        l.push((
            "transformer.h.2.lambdas".into(),
            safetensors::Dtype::F32,
            vec![2],
            vec![0; 8],
        ))
    });
    assert_eq!(
        load_error(&extra),
        "unexpected tensors not in the model: transformer.h.2.lambdas"
    );

    let int = edited(|l| {
        let entry = l
            .iter_mut()
            .find(|(n, ..)| n == "transformer.h.0.lambdas")
            .unwrap();
        entry.1 = safetensors::Dtype::I32;
    });
    assert!(load_error(&int).contains("transformer.h.0.lambdas has dtype I32"));

    assert!(load_error(b"not a checkpoint").starts_with("not a valid safetensors file"));

    // Weights of another model size: every mismatch is named.
    let device = brainfloat_test_support::test_device();
    let wider = GptConfig::new(512, 2, 2, 128, 32).init(&device).unwrap();
    let err = load_weights(wider, &golden_dir().join("init.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("init.safetensors"), "{err}");
    assert!(
        err.contains(
            "tensor transformer.wte.weight has shape [512, 64], the model expects [512, 128]"
        ),
        "{err}"
    );

    let model = golden_config().init(&device).unwrap();
    let err = load_weights(model, Path::new("/nonexistent/model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("checkpoint /nonexistent/model.safetensors: cannot read"),
        "{err}"
    );
}

/// A pure-bf16 weights file is PyTorch's: the record's PyTorch GPT (scripts/pytorch_reference.py)
/// loads it with `strict=True`, every parameter bf16, and computes the loss we compute from it
/// on the golden batch, to bf16 agreement.
#[test]
fn pure_bf16_weights_load_in_pytorch_and_give_our_loss() {
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (model, device) = golden_model(&"bf16-pure".parse::<PrecisionPolicy>().unwrap());
    let weights = dir.path().join("model.safetensors");
    save_weights(&model, &weights).unwrap();
    let batch = golden_batch(0, &device);
    let ours = scalar(model.forward(&batch, &model.cache(&device)).unwrap());
    let rows = |t: burn::tensor::Tensor<2, burn::tensor::Int>| -> Vec<Vec<i64>> {
        let [b, t_len] = t.dims();
        let flat: Vec<i64> = t.into_data().convert::<i64>().try_to_vec().unwrap();
        (0..b)
            .map(|i| flat[i * t_len..(i + 1) * t_len].to_vec())
            .collect()
    };
    let tokens = serde_json::json!({
        "heads": 2,
        "inputs": rows(batch.inputs().clone()),
        "targets": rows(batch.targets().clone()),
    });
    let tokens_path = dir.path().join("tokens.json");
    std::fs::write(&tokens_path, tokens.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/load_weights.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg(&weights)
        .arg(&tokens_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "PyTorch refused the file: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["parameters"], 18);
    for (name, dtype) in report["dtypes"].as_object().unwrap() {
        assert_eq!(dtype, "bfloat16", "{name}");
    }
    let theirs = report["loss"].as_f64().unwrap();
    println!(
        "bf16-pure loss: ours {ours:.6}, PyTorch {theirs:.6}, rel {:.2e}",
        rel(ours, theirs)
    );
    // Measured 1.2e-4 (flex), 4.4e-5 (tch): the same bf16 arithmetic, in another order.
    assert!(rel(ours, theirs) <= 5e-4, "ours {ours} vs PyTorch {theirs}");
}
