//! TensorBoard's own event reader (the `tensorboard` package from PyPI) reads the metrics
//! plugin's event files back with the values of `metrics.jsonl`: every scalar of every line
//! (to float32, which is what TensorBoard stores), per-group figures under `key/group`, and
//! samples as text.

use std::time::Duration;

use brainfloat_tests::{python_output, script, torch_python};
use brainfloat_trainer::plugins::MetricsPlugin;
use brainfloat_trainer::{
    EvalStats, LostUpdates, MemoryReading, MetricsLine, ParamGroup, Plugin, SampleStats, StepStats,
};

#[test]
fn tensorboard_reads_back_the_values_of_metrics_jsonl() {
    let Some(python) = torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let mut heap = 1u64 << 30;
    let mut plugin = MetricsPlugin::new(metrics.clone())
        .with_memory(move || {
            heap += 4096;
            MemoryReading {
                heap_peak_bytes: Some(heap),
                rss_bytes: Some(3 << 30),
            }
        })
        .with_tensorboard(dir.path().to_path_buf());
    for step in 1..=4 {
        let mut probe = LostUpdates::default();
        probe.add(ParamGroup::Matrices, step, 10);
        plugin
            .on_step(&StepStats {
                step,
                loss: 10.0 / step as f64 + 0.123_456_789,
                last_micro_loss: 0.0,
                lr_multiplier: 1.0 - 0.2 * step as f64,
                step_time: Duration::from_millis(100 + step as u64),
                tokens_per_sec: 1234.5 * step as f64,
                grad_norm: 0.75 * step as f64,
                skipped: false,
                sync_time: Duration::from_micros(250),
                lost_updates: (step % 2 == 0).then_some(probe),
            })
            .unwrap();
    }
    plugin
        .on_eval(&EvalStats {
            step: 4,
            val_loss: 3.25,
            tokens: 1024,
            tokens_per_sec: 9000.0,
        })
        .unwrap();
    plugin
        .on_sample(&SampleStats {
            step: 4,
            prompt: "The state of the Union is".into(),
            text: " strong — and ünïcode survives".into(),
            tokens: 6,
            tokens_per_sec: 50.0,
        })
        .unwrap();
    drop(plugin);

    let script = script("read_tensorboard.py");
    let stdout = python_output(&python, &[script.as_os_str(), dir.path().as_os_str()]);
    let read: serde_json::Value = serde_json::from_slice(&stdout).unwrap();

    // What metrics.jsonl says, line by line, as (tag, step, value).
    let mut expected = Vec::new();
    let mut texts = Vec::new();
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        let parsed: MetricsLine = serde_json::from_str(line).unwrap();
        let object: serde_json::Value = serde_json::from_str(line).unwrap();
        for (key, value) in object.as_object().unwrap() {
            match value {
                serde_json::Value::Number(n) if key != "step" => {
                    expected.push((key.clone(), parsed.step, n.as_f64().unwrap()));
                }
                serde_json::Value::Object(groups) => {
                    for (group, v) in groups {
                        if let Some(v) = v.as_f64() {
                            expected.push((format!("{key}/{group}"), parsed.step, v));
                        }
                    }
                }
                serde_json::Value::String(text) => {
                    texts.push((key.clone(), parsed.step, text.clone()))
                }
                _ => {}
            }
        }
    }
    for tag in [
        "loss",
        "lr",
        "tokens_per_sec",
        "grad_norm",
        "heap_peak_bytes",
        "val_loss",
    ] {
        assert!(
            expected.iter().any(|(t, _, _)| t == tag),
            "{tag} in metrics.jsonl"
        );
    }
    assert!(
        expected
            .iter()
            .any(|(t, _, _)| t == "lost_updates/matrices")
    );
    let scalars = read["scalars"].as_object().unwrap();
    let mut compared = 0;
    for (tag, step, value) in &expected {
        let series = scalars
            .get(tag)
            .unwrap_or_else(|| panic!("TensorBoard has no scalar {tag}: {scalars:?}"));
        let point = series
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0].as_u64() == Some(*step as u64))
            .unwrap_or_else(|| panic!("{tag} has no step {step}"));
        let theirs = point[1].as_f64().unwrap();
        assert_eq!(theirs, *value as f32 as f64, "{tag} at step {step}");
        compared += 1;
    }
    let total: usize = scalars.values().map(|s| s.as_array().unwrap().len()).sum();
    assert_eq!(
        total, compared,
        "TensorBoard holds scalars metrics.jsonl does not"
    );
    assert_eq!(texts.len(), 1);
    let (tag, step, text) = &texts[0];
    assert_eq!(
        read["text"][tag],
        serde_json::json!([[step, text]]),
        "the sample as text"
    );
}
