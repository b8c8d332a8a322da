//! `brainfloat ledger`: the traffic ledger of one training step on libtorch, counted on the
//! CPU. Every libtorch operator the step runs is counted, with the bytes it reads and writes
//! (`crates/ops/csrc/ledger.cpp` says how), once on the composed route (what a GPU ran before
//! the device route) and once on the device route (what a GPU runs now), both forced on
//! libtorch's CPU, beside PyTorch eager's count of the same step by the same rules
//! (`scripts/pytorch_reference.py --ledger`). Between GPU runs, a number that moves.

use std::path::{Path, PathBuf};

use brainfloat_backend::Backend;
use brainfloat_bench::short_run_config;
use clap::Args;
use serde_json::{Value, json};

use crate::error::CliError;
use crate::setup::{RunArgs, command_line, prepare};

#[derive(Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// PyTorch eager's count of the same step (`scripts/pytorch_reference.py --ledger FILE`).
    #[arg(long)]
    pub pytorch: Option<PathBuf>,
    /// Folder of the report (JSON and Markdown).
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    /// File stem of the report (default: ledger_<size>).
    #[arg(long)]
    pub name: Option<String>,
}

/// One system's traffic per training step, in all and by operator.
struct Row {
    system: String,
    launches: u64,
    bytes_read: u64,
    bytes_written: u64,
    /// Operator name → (launches, bytes moved).
    operators: Vec<(String, u64, u64)>,
}

impl Row {
    fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }

    fn to_json(&self) -> Value {
        json!({
            "system": self.system,
            "launches_per_step": self.launches,
            "bytes_per_step": self.bytes(),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "operators": self
                .operators
                .iter()
                .map(|(name, launches, bytes)| json!({"name": name, "launches": launches, "bytes": bytes}))
                .collect::<Vec<_>>(),
        })
    }
}

/// Runs `brainfloat ledger`.
pub fn run(args: LedgerArgs) -> Result<(), CliError> {
    if !matches!(args.run.backend, Backend::Tch | Backend::TchCuda(_)) {
        return Err(CliError::Refused(format!(
            "`ledger` counts libtorch's operators: run it with --backend tch (not {})",
            args.run.backend
        )));
    }
    let (config, device) = prepare(&args.run)?;
    let shape = config.shape();
    let step = json!({
        "model": serde_json::from_str::<Value>(&shape.to_json()).expect("a shape is JSON"),
        "batch_size": config.train.batch_size,
        "seq_len": config.train.seq_len,
        "grad_accum_steps": config.train.grad_accum_steps,
        "precision": config.train.precision.to_string(),
    });
    let pytorch = args
        .pytorch
        .as_deref()
        .map(|path| read_pytorch(path, &step))
        .transpose()?;
    let mut rows = Vec::new();
    for system in ["composed", "device-route"] {
        tracing::info!(system, "one warm-up step, then one counted step");
        let config = short_run_config(&config, 2, &format!("ledger-{system}"));
        rows.push(count_step(system, config, &device)?);
    }
    rows.extend(pytorch);
    let name = args
        .name
        .unwrap_or_else(|| format!("ledger_{}", config.model.size));
    let report = json!({
        "command": command_line(),
        "machine": crate::setup::machine(args.run.backend),
        "counts_gpu_launches": counts_gpu_launches(),
        "step": step,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    let markdown = markdown(&rows, &report);
    write_report(&args.out, &name, &report, &markdown)?;
    println!("{markdown}");
    Ok(())
}

/// The report as `<out>/<name>.json` and `.md`, each written atomically.
pub fn write_report(
    out: &Path,
    name: &str,
    report: &Value,
    markdown: &str,
) -> Result<(), CliError> {
    let (json, md) = brainfloat_bench::write_json_and_markdown(out, name, report, markdown)
        .map_err(|err| CliError::io(out, "write the report", err))?;
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// Whether the ledger counts as a GPU launches (a CUDA build of libtorch).
fn counts_gpu_launches() -> bool {
    #[cfg(feature = "tch")]
    return brainfloat_ops::ledger_counts_gpu_launches();
    #[cfg(not(feature = "tch"))]
    false
}

#[cfg(feature = "tch")]
fn count_step(
    system: &str,
    config: brainfloat_trainer::TrainConfig,
    device: &burn::tensor::Device,
) -> Result<Row, CliError> {
    use brainfloat_ops::{LibTorchRoute, ledger_start, ledger_stop, with_libtorch_route};
    use brainfloat_trainer::Trainer;
    let route = match system {
        "composed" => LibTorchRoute::Composed,
        _ => LibTorchRoute::Device,
    };
    let traffic = with_libtorch_route(route, || -> Result<_, CliError> {
        let mut trainer = Trainer::builder(config).build(device)?;
        // The first step makes the optimizer's state; the second is a steady one.
        trainer.train_step()?;
        ledger_start();
        let step = trainer.train_step();
        let traffic = ledger_stop();
        step?;
        Ok((traffic, brainfloat_ops::ledger_by_operator()))
    })?;
    let (traffic, by_operator) = traffic;
    Ok(Row {
        system: system.to_string(),
        launches: traffic.launches,
        bytes_read: traffic.bytes_read,
        bytes_written: traffic.bytes_written,
        operators: by_operator
            .into_iter()
            .map(|(name, t)| (name, t.launches, t.bytes_read + t.bytes_written))
            .collect(),
    })
}

#[cfg(not(feature = "tch"))]
fn count_step(
    _system: &str,
    _config: brainfloat_trainer::TrainConfig,
    _device: &burn::tensor::Device,
) -> Result<Row, CliError> {
    Err(CliError::Refused(
        "`ledger` needs a binary built with the `tch` feature (cargo xtask ledger does it)".into(),
    ))
}

/// PyTorch eager's row from `path`, whose step must be `step` (the same model, batch and
/// precision).
fn read_pytorch(path: &Path, step: &Value) -> Result<Row, CliError> {
    let text = std::fs::read_to_string(path).map_err(|err| CliError::io(path, "read", err))?;
    let refuse = |problem: String| CliError::Refused(format!("{}: {problem}", path.display()));
    let value: Value =
        serde_json::from_str(&text).map_err(|err| refuse(format!("not JSON: {err}")))?;
    let theirs = &value["step"];
    for key in ["batch_size", "seq_len", "grad_accum_steps", "precision"] {
        if theirs[key] != step[key] {
            return Err(refuse(format!(
                "counted a step with {key} = {}, this one has {}",
                theirs[key], step[key]
            )));
        }
    }
    for key in ["n_layer", "n_head", "d_model", "vocab_size"] {
        if theirs["model"][key] != step["model"][key] {
            return Err(refuse(format!(
                "counted a model with {key} = {}, this one has {}",
                theirs["model"][key], step["model"][key]
            )));
        }
    }
    let count = |key: &str| {
        value[key]
            .as_u64()
            .ok_or_else(|| refuse(format!("`{key}` is not a count")))
    };
    let operators = value["operators"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|op| {
            Some((
                op["name"].as_str()?.to_string(),
                op["launches"].as_u64()?,
                op["bytes"].as_u64()?,
            ))
        })
        .collect();
    Ok(Row {
        system: "pytorch-eager".into(),
        launches: count("launches_per_step")?,
        bytes_read: count("bytes_read")?,
        bytes_written: count("bytes_written")?,
        operators,
    })
}

/// The table a person reads.
fn markdown(rows: &[Row], report: &Value) -> String {
    let gb = |bytes: u64| bytes as f64 / 1e9;
    let eager = rows.iter().find(|r| r.system == "pytorch-eager");
    let mut text = String::from("# Traffic ledger: one training step's libtorch operators\n\n");
    let step = &report["step"];
    let model = &step["model"];
    text.push_str(&format!(
        "One step of {} layers × {} wide ({} heads, vocabulary {}) on {} sequences of {} tokens \
         in {} accumulation step(s), `{}`, counted on libtorch's CPU with the routes forced.\n\n\
         Machine: {}\n\nCommand: `{}`\n\n",
        model["n_layer"],
        model["d_model"],
        model["n_head"],
        model["vocab_size"],
        step["batch_size"],
        step["seq_len"],
        step["grad_accum_steps"],
        step["precision"].as_str().unwrap_or_default(),
        report["machine"].as_str().unwrap_or_default(),
        report["command"].as_str().unwrap_or_default(),
    ));
    text.push_str(
        "| system | operators (launches) | GB read | GB written | GB moved | × PyTorch eager's bytes |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let ratio = eager
            .map(|e| format!("{:.2}", row.bytes() as f64 / e.bytes() as f64))
            .unwrap_or_else(|| "–".into());
        text.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {ratio} |\n",
            row.system,
            row.launches,
            gb(row.bytes_read),
            gb(row.bytes_written),
            gb(row.bytes()),
        ));
    }
    text.push_str(&by_operator(rows));
    text.push_str(
        "\nCounted by libtorch's RecordFunction callbacks (`crates/ops/csrc/ledger.cpp`, the same \
         rules for PyTorch): one launch for each operator libtorch has a CUDA kernel for (what a \
         GPU would launch, whatever its CPU twin calls inside it), composites through the \
         operators they call, brainfloat's own kernels one each; views and allocations left \
         out; bytes read are the inputs' sizes, bytes written the outputs'.\n",
    );
    text
}

/// The operators that move the most bytes on any row, each row's launches and GB beside.
fn by_operator(rows: &[Row]) -> String {
    const SHOWN: usize = 15;
    let mut names: Vec<(&str, u64)> = Vec::new();
    for row in rows {
        for (name, _, bytes) in &row.operators {
            match names.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = entry.1.max(*bytes),
                None => names.push((name, *bytes)),
            }
        }
    }
    names.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let mut text = format!(
        "\nThe {SHOWN} operators that move the most bytes (launches / GB moved per step):\n\n| operator |"
    );
    for row in rows {
        text.push_str(&format!(" {} |", row.system));
    }
    text.push_str("\n|---|");
    text.push_str(&"---:|".repeat(rows.len()));
    text.push('\n');
    for (name, _) in names.iter().take(SHOWN) {
        text.push_str(&format!("| `{name}` |"));
        for row in rows {
            match row.operators.iter().find(|(n, _, _)| n == name) {
                Some((_, launches, bytes)) => {
                    text.push_str(&format!(" {launches} / {:.3} |", *bytes as f64 / 1e9))
                }
                None => text.push_str(" – |"),
            }
        }
        text.push('\n');
    }
    text
}
