//! `brainfloat gpu-check`: every op of the device route against the composed op on the same
//! device (`brainfloat_ops::conformance`: the checks the tests run on the CPU), and the self-tests
//! of brainfloat's device kernels, written as JSON and Markdown. On a GPU, what only a GPU can
//! check; `--backend tch` rehearses it on libtorch's CPU with the device route forced.

use std::path::PathBuf;

use brainfloat_backend::Backend;
use brainfloat_ops::{LibTorchRoute, conformance, with_libtorch_route};
use clap::Args;
use serde_json::{Value, json};

use crate::error::CliError;
use crate::setup::{command_line, device, init_logs};

#[derive(Args)]
pub struct GpuCheckArgs {
    /// The backend whose device route is checked: tch-cuda[:N] (or tch, to rehearse on the CPU).
    #[arg(long, default_value = "tch-cuda")]
    pub backend: Backend,
    /// Folder of the report (JSON and Markdown).
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    /// File stem of the report (default: gpu_check_<backend>).
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs `brainfloat gpu-check`.
pub fn run(args: GpuCheckArgs) -> Result<(), CliError> {
    init_logs(brainfloat_trainer::LogFormat::Human, true);
    let device = device(args.backend)?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for (check, run_check) in conformance::CHECKS {
        tracing::info!(check, "checking");
        for agreement in with_libtorch_route(LibTorchRoute::Device, || run_check(&device)) {
            failed += usize::from(!agreement.holds());
            rows.push(json!({
                "check": check,
                "output": agreement.output,
                "dtype": format!("{:?}", agreement.dtype),
                "error": agreement.error,
                "tolerance": agreement.tolerance,
                "holds": agreement.holds(),
                "summary": agreement.to_string(),
            }));
        }
    }
    let self_tests = self_tests();
    let report = json!({
        "command": command_line(),
        "machine": args.backend.machine(),
        "backend": args.backend.to_string(),
        "agreements": rows,
        "self_tests": self_tests,
    });
    let name = args
        .name
        .unwrap_or_else(|| format!("gpu_check_{}", args.backend).replace(':', "_"));
    let markdown = markdown(&report);
    crate::ledger::write_report(&args.out, &name, &report, &markdown)?;
    println!("{markdown}");
    if failed > 0 {
        return Err(CliError::Refused(format!(
            "{failed} of {} outputs of the device route disagree with the composed ops (see above)",
            rows.len()
        )));
    }
    Ok(())
}

/// The device kernels' self-tests this process ran.
fn self_tests() -> Value {
    #[cfg(feature = "tch")]
    {
        let results: Vec<Value> = brainfloat_ops::kernel_self_tests()
            .into_iter()
            .map(|r| json!({"kernel": r.kernel, "device": r.device, "passed": r.passed}))
            .collect();
        Value::Array(results)
    }
    #[cfg(not(feature = "tch"))]
    Value::Array(Vec::new())
}

/// The tables a person reads.
fn markdown(report: &Value) -> String {
    let mut text = format!(
        "# gpu-check: the device route against the composed ops\n\nMachine: {}\n\nBackend: {}\n\n\
         Command: `{}`\n\n| check | output | dtype | error (of the scale) | tolerance | holds |\n\
         |---|---|---|---:|---:|---|\n",
        report["machine"].as_str().unwrap_or_default(),
        report["backend"].as_str().unwrap_or_default(),
        report["command"].as_str().unwrap_or_default(),
    );
    for row in report["agreements"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {:.0e} | {} |\n",
            row["check"].as_str().unwrap_or_default(),
            row["output"].as_str().unwrap_or_default(),
            row["dtype"].as_str().unwrap_or_default(),
            row["error"].as_f64().unwrap_or(f64::NAN),
            row["tolerance"].as_f64().unwrap_or(f64::NAN),
            if row["holds"] == true {
                "yes"
            } else {
                "**no**"
            },
        ));
    }
    text.push_str("\n| device kernel | device | self-test |\n|---|---|---|\n");
    for test in report["self_tests"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "| {} | {} | {} |\n",
            test["kernel"].as_str().unwrap_or_default(),
            test["device"].as_str().unwrap_or_default(),
            if test["passed"] == true {
                "passed"
            } else {
                "**failed: the composed op runs**"
            },
        ));
    }
    text
}
