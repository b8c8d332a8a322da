//! `cargo xtask <command> [args]`: builds the `brainfloat` binary in release with the backend
//! feature that `--backend` names and runs it with the same arguments.
//!
//! ```text
//! cargo xtask train                       # the embedded tiny config, bf16, on the SOTU corpus
//! cargo xtask train --precision fp32 --set train.steps=100
//! cargo xtask eval --checkpoint runs/tiny/step_000400.json
//! cargo xtask data --text my_texts/ --name mine --dir data/mine
//! ```

use std::process::{Command, ExitCode};

const COMMANDS: [&str; 4] = ["train", "eval", "data", "plot"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("usage: cargo xtask <{}> [args]", COMMANDS.join("|"));
        return ExitCode::FAILURE;
    };
    if !COMMANDS.contains(&command.as_str()) {
        eprintln!(
            "error: unknown xtask `{command}` (valid: {})",
            COMMANDS.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let backend = backend_of(&args);
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["run", "--release", "--quiet", "--package", "brainfloat-cli"]);
    match backend.as_str() {
        "flex" => {}
        "tch" => {
            cargo
                .args(["--features", "tch"])
                .env("LIBTORCH_USE_PYTORCH", "1");
        }
        "cuda" => {
            cargo.args(["--features", "cuda"]);
        }
        other => {
            eprintln!("error: unknown backend `{other}` (valid: flex, tch, cuda)");
            return ExitCode::FAILURE;
        }
    }
    cargo.arg("--").args(&args);
    match cargo.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: cannot run cargo: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The value of `--backend X` or `--backend=X`, `flex` if absent.
fn backend_of(args: &[String]) -> String {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--backend" {
            return iter.next().cloned().unwrap_or_default();
        }
        if let Some(value) = arg.strip_prefix("--backend=") {
            return value.to_string();
        }
    }
    "flex".into()
}
