//! The table across benchmark reports, from a committed report (tiny on flex) and PyTorch's
//! figures for the same model.

use std::path::Path;

use brainfloat_bench::BenchReport;
use brainfloat_precision::PrecisionPolicy;
use brainfloat_reports::{PytorchReference, comparison_markdown};

#[test]
fn the_table_has_a_row_per_preset_the_ratios_and_pytorchs_rows() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_tiny_flex.json");
    let report = BenchReport::read(&fixture).unwrap();
    let pytorch: PytorchReference = serde_json::from_str(
        r#"{"torch": "2.9.0", "tokens_per_step": 1024, "presets": {
            "bf16": {"step_time_ms_median": 100.0, "tokens_per_sec": 10240.0},
            "fp32": {"step_time_ms_median": 200.0, "tokens_per_sec": 5120.0}}}"#,
    )
    .unwrap();
    let table = comparison_markdown(
        std::slice::from_ref(&report),
        std::slice::from_ref(&pytorch),
    );
    let preset = |name: &str| {
        let policy: PrecisionPolicy = name.parse().unwrap();
        report.preset(policy).unwrap().clone()
    };
    let time = |name: &str| preset(name).step_time_ms.median;
    for needle in [
        format!("| flex | tiny | bf16 | {:.1} |", time("bf16")),
        format!(
            "| flex | tiny | {:.3} | {:.3} |",
            time("bf16") / time("fp32"),
            time("bf16") / time("autocast")
        ),
        // PyTorch's presets in the presets' order, whatever the file's.
        "| PyTorch 2.9.0 eager | – | fp32 | 200.0 | 5120.0 | – | – | – |\n\
         | PyTorch 2.9.0 eager | – | bf16 | 100.0 | 10240.0 | – | – | – |"
            .into(),
        "| PyTorch 2.9.0 eager | – | 0.500 | – |".into(),
        format!(
            "| flex | tiny | | {:.3} |",
            preset("bf16").tokens_per_sec / 10240.0
        ),
    ] {
        assert!(table.contains(&needle), "missing {needle:?} in\n{table}");
    }
}

#[test]
fn an_unknown_preset_in_pytorchs_figures_is_refused_by_name() {
    let err = serde_json::from_str::<PytorchReference>(
        r#"{"torch": "2.9.0", "tokens_per_step": 1, "presets": {
            "bf17": {"step_time_ms_median": 1.0, "tokens_per_sec": 1.0}}}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown precision preset `bf17`"),
        "{err}"
    );
}
