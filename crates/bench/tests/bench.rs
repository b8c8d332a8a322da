//! The benchmark and the validation on the golden-sized model: the report's structure and
//! arithmetic (no timing is asserted), the measured memory, and the pipeline checks.

#[path = "../../trainer/tests/common/mod.rs"]
mod common;

use brainfloat_backend::MemoryMeasure;
use brainfloat_bench::validate::{format_checks, validate_pipeline};
use brainfloat_bench::{BenchOptions, BenchReport, Part, Peak, RowDtype, part_bytes, run_bench};
use brainfloat_gpt::Gpt;
use brainfloat_memory::{self as memory, CountingAllocator};
use brainfloat_precision::PrecisionPolicy;
use brainfloat_test_support::{test_backend, test_device};
use burn::tensor::FloatDType;

// This test binary counts its heap, as the `brainfloat` binary does.
#[global_allocator]
static HEAP: CountingAllocator = CountingAllocator;

/// The heap counters are process-wide: tests that read them run one at a time.
static HEAP_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive_heap() -> std::sync::MutexGuard<'static, ()> {
    HEAP_USERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn policy(name: &str) -> PrecisionPolicy {
    name.parse().expect("a preset")
}

fn options(presets: &[&str]) -> BenchOptions {
    BenchOptions {
        presets: presets.iter().map(|p| policy(p)).collect(),
        baseline: policy("autocast"),
        warmup_steps: 1,
        steps: 3,
        matmul_reps: 1,
        peak: Peak::stated(100.0),
        bf16_peak: Some(Peak::stated(400.0)),
        backend: test_backend(),
        machine: "test machine".into(),
        command: "cargo xtask bench --steps 3".into(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
fn a_bench_run_reports_every_preset_with_consistent_figures() {
    let _heap = exclusive_heap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), "bf16", &[]);
    let report = run_bench::<Gpt>(
        &config,
        &test_device(),
        &options(&["fp32", "autocast", "bf16"]),
    )
    .unwrap();
    let names: Vec<String> = report
        .presets
        .iter()
        .map(|p| p.preset.to_string())
        .collect();
    assert_eq!(names, ["fp32", "autocast", "bf16"]);
    let m = &report.model;
    assert_eq!(m.tokens_per_step, 4 * 32);
    // The tiny model at T = 32, counted by hand: 6 FLOPs per token per matmul weight (the
    // blocks' 2 × 12·64² and the head's 512·64; the embedding is a lookup) and attention's
    // 12·L·C·T: 6 · 131,072 + 12 · 2 · 64 · 32.
    assert_eq!(m.flops_per_token, 835_584);

    let baseline = report.preset(policy("autocast")).unwrap();
    for p in &report.presets {
        assert_eq!(p.step_time_ms.count, 3, "{}", p.preset);
        assert_eq!(p.losses.len(), 4, "warm-up and timed steps");
        assert!(p.losses.iter().all(|l| l.is_finite()) && p.val_loss.is_finite());
        // The derived figures follow from the measured median.
        let tokens_per_sec = m.tokens_per_step as f64 / (p.step_time_ms.median / 1e3);
        assert!(close(p.tokens_per_sec, tokens_per_sec));
        assert!(close(
            p.achieved_gflops,
            m.flops_per_token as f64 * tokens_per_sec / 1e9
        ));
        // Each preset against the peak of its matmul dtype: fp32's 100, bf16's 400.
        let peak = if p.preset == policy("fp32") {
            100.0
        } else {
            400.0
        };
        assert!(close(p.mfu, p.achieved_gflops / peak), "{}", p.preset);
        assert!(close(
            p.ratios["step_time"],
            p.step_time_ms.median / baseline.step_time_ms.median
        ));
        assert!(close(p.ratios["val_loss"], p.val_loss / baseline.val_loss));

        // Memory is measured: what the preset keeps holds at least its weights and optimizer
        // state, and on the heap its peak at least that plus the activations.
        let mem = &p.memory;
        let kept = part_bytes(&p.distribution, Part::Weights)
            + part_bytes(&p.distribution, Part::OptimizerState);
        let peak = mem.peak_bytes.unwrap();
        assert!(peak >= kept, "{}: {peak} < {kept}", p.preset);
        match test_backend().memory_measure() {
            MemoryMeasure::Heap => {
                assert_eq!(mem.peak_bytes, mem.heap_peak_bytes, "{}", p.preset);
                let resident = mem.heap_resident_bytes.unwrap();
                assert!(resident >= kept, "{}: {resident} < {kept}", p.preset);
                let activations = part_bytes(&p.distribution, Part::Activations);
                assert!(activations > 0);
                assert!(peak >= resident + activations, "{}", p.preset);
            }
            MemoryMeasure::ResidentSet => {
                assert_eq!(mem.peak_bytes, mem.rss_growth_bytes, "{}", p.preset)
            }
            other => panic!("a CPU test backend measures {other:?}"),
        }
        assert_eq!(mem.device_reserved_bytes, None, "no device pool on the CPU");
        // Gradients have their parameters' dtypes and sizes.
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let bytes = |part| {
                p.distribution
                    .iter()
                    .filter(|r| r.part == part && r.dtype == RowDtype::Float(dtype))
                    .map(|r| r.bytes)
                    .sum::<u64>()
            };
            assert_eq!(
                bytes(Part::Weights),
                bytes(Part::Gradients),
                "{} {dtype:?}",
                p.preset
            );
        }
    }
    for name in [
        "step_time",
        "tokens_per_sec",
        "peak_memory",
        "val_loss",
        "mfu",
    ] {
        assert_eq!(baseline.ratios[name], 1.0, "{name}");
    }
    // Only bf16 stores parameters (embedding, scalars) in bf16; activations are one measured row.
    let dtypes = |preset: &str| -> Vec<String> {
        let p = report.preset(policy(preset)).unwrap();
        p.distribution
            .iter()
            .filter(|r| r.part == Part::Weights)
            .map(|r| r.dtype.to_string())
            .collect()
    };
    assert_eq!(dtypes("fp32"), ["fp32"]);
    assert_eq!(dtypes("autocast"), ["fp32"]);
    assert_eq!(dtypes("bf16"), ["bf16", "fp32"]);
    let activation_rows = report.presets[2]
        .distribution
        .iter()
        .filter(|r| r.part == Part::Activations);
    assert!(activation_rows.map(|r| r.dtype).eq([RowDtype::Mixed]));
    // Same init and data: the presets' first losses agree within bf16 tolerance.
    let first = |p: &str| report.preset(policy(p)).unwrap().losses[0];
    assert!((first("bf16") / first("fp32") - 1.0).abs() < 1e-2);

    assert_eq!(report.matmuls.len(), 12);
    assert!(
        report
            .matmuls
            .iter()
            .all(|r| r.fp32_gflops > 0.0 && r.bf16_gflops.is_some())
    );

    // Markdown: the table's columns, a row per preset, the distribution and the matmuls.
    let md = report.to_markdown();
    for needle in [
        "| preset | step time median (ms)",
        "MFU peaks: fp32 matmuls 100.0 GFLOP/s (stated on the command line: 100 GFLOP/s); \
         bf16 matmuls 400.0 GFLOP/s (stated on the command line: 400 GFLOP/s)",
        "## Where the memory is",
        "## Matmul micro-benchmark",
        "| lm_head grad-weight | 512 × 128 × 64 |",
        "Command: `cargo xtask bench --steps 3`",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
    for preset in ["fp32", "autocast", "bf16"] {
        assert!(md.contains(&format!("\n| {preset} | ")), "{preset} row");
    }
    // JSON round trip.
    let (json, md_path) = report.write(dir.path(), "bench").unwrap();
    assert_eq!(BenchReport::read(&json).unwrap(), report);
    assert_eq!(std::fs::read_to_string(md_path).unwrap(), md);
}

#[test]
fn a_bench_without_steps_or_presets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), "bf16", &[]);
    let mut none = options(&["bf16"]);
    none.steps = 0;
    let err = run_bench::<Gpt>(&config, &test_device(), &none)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("at least one preset and one timed step"),
        "{err}"
    );
}

#[test]
fn the_metrics_stream_carries_the_probe_and_the_heap_peak() {
    let _heap = exclusive_heap();
    use brainfloat_trainer::Trainer;
    use brainfloat_trainer::plugins::MetricsPlugin;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let config = common::config(dir.path(), "bf16", &["eval.lost_update_every=2"]);
    let mut trainer = Trainer::builder(config)
        .plugin(MetricsPlugin::new(path.clone()).with_memory(memory::step_reading))
        .build(&test_device())
        .unwrap();
    trainer.run().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("loss").is_some())
        .collect();
    assert_eq!(lines.len(), 6);
    for line in &lines {
        let step = line["step"].as_u64().unwrap();
        // Steps 1, 3, 5 (0-based 0, 2, 4) are probed.
        assert_eq!(
            line.get("lost_updates").is_some(),
            step % 2 == 1,
            "step {step}"
        );
        assert!(line["heap_peak_bytes"].as_u64().unwrap() > 0);
    }
    // From the second step on every group updates; fractions are fractions.
    let probe = &lines[2]["lost_updates"];
    for group in ["embedding", "head", "matrices", "scalars"] {
        let fraction = probe[group].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&fraction), "{group} {fraction}");
    }
    assert!(memory::heap().is_some());
}

#[test]
fn the_bf16_pipeline_validates_on_the_golden_model() {
    let _heap = exclusive_heap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        "bf16",
        &["train.batch_size=8", "eval.tokens=512"],
    );
    let checks = validate_pipeline::<Gpt>(&config, &test_device(), 20).unwrap();
    let table = format_checks(&checks);
    assert_eq!(checks.len(), 10, "{table}");
    for check in &checks {
        assert!(check.passed, "{table}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names[0], "fp32 learns");
    assert_eq!(names[9], "checkpoint round-trip");
    assert!(table.starts_with("check "));
    assert_eq!(table.matches("PASS").count(), 10, "{table}");
}
