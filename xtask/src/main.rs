//! `cargo xtask <command> [args]`: builds the `brainfloat` binary in release with the backend
//! feature that `--backend` names and runs it with the same arguments. `validate` also builds
//! and runs the test suite first, and ends with one pass/fail table.
//!
//! ```text
//! cargo xtask train                       # the embedded tiny config, bf16, on the SOTU corpus
//! cargo xtask train --precision fp32 --set train.steps=100
//! cargo xtask bench --steps 20            # fp32 vs autocast vs bf16 → docs/results/
//! cargo xtask study                       # six presets × 3 seeds → docs/results/convergence.md
//! cargo xtask validate                    # build, tests, and the bf16 pipeline's checks
//! cargo xtask train --ranks 2             # two data-parallel ranks under mpirun (OpenMPI)
//! cargo xtask train --ranks 8 --hostfile hosts   # ranks across the machines of a hostfile
//! cargo xtask train --backend tch         # libtorch on the CPU (installs PyTorch 2.9 once)
//! cargo xtask bench --backend tch --config configs/small.toml
//! cargo xtask test                        # install what the tests need, run them on flex and tch,
//!                                         # and check that the `cuda` feature compiles
//! cargo xtask test --backend flex         # … on one backend only
//! cargo xtask reliability                 # the fault suite → docs/reliability.md
//! cargo xtask step-files --out docs/results/step_files.md   # the files one step runs
//! cargo xtask compare docs/results/bench_small_{flex,tch}.json --out docs/results/cpu_small.md
//! cargo xtask eval --checkpoint runs/tiny/step_000150.json
//! cargo xtask generate --checkpoint runs/tiny/step_000150.json --prompt "The economy"
//! cargo xtask train --init hf:path/to/gpt2   # fine-tune a Hugging Face GPT-2 folder
//! cargo xtask export --checkpoint runs/tiny/step_000150.json --hf out/   # … and write one
//! cargo xtask data --text my_texts/ --name mine --dir data/mine
//! cargo xtask ledger --backend tch --config configs/speedrun.toml --set train.seq_len=64 ...
//! ```

mod step_files;

use std::path::Path;
use std::process::{Command, ExitCode};

const COMMANDS: [&str; 15] = [
    "train",
    "eval",
    "generate",
    "export",
    "bench",
    "study",
    "validate",
    "data",
    "plot",
    "compare",
    "test",
    "reliability",
    "ledger",
    "gpu-check",
    "step-files",
];

/// The project's set-up script: installs the system packages the tests need (OpenMPI, libclang).
const SETUP: &str = "scripts/setup";

/// Installs PyTorch (whose libtorch the `tch` backend links) into the build folder, once.
const SETUP_TORCH: &str = "scripts/setup-torch";

/// The backends the test suite runs on: one build with every feature, one pass per backend
/// (`BRAINFLOAT_BACKEND` picks the device of every test and of every binary they start).
const TEST_BACKENDS: [&str; 2] = ["flex", "tch"];

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
    let result = match command.as_str() {
        "validate" => validate(&backend, &args),
        "test" => test(&args[1..]),
        "reliability" => reliability(),
        "step-files" => step_files::step_files(&args[1..]),
        "train" if value_of(&args, "--ranks").is_some() => distributed_train(&backend, &args),
        _ => cargo(&["run"], &backend).map(|mut run| {
            run.arg("--").args(&args);
            status(&mut run)
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn cargo_command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The features of the test build: `mpi`, `testing` (the fault suite's hooks), the kernels'
/// second GEMM (`own-gemm`, checked against the same float64 reference) and every backend of
/// [`TEST_BACKENDS`] and `backend`
/// (one build serves `test` on each default backend and `reliability`), and the environment
/// they need.
fn suite_build(backend: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut features = vec![
        "brainfloat-cli/mpi".to_string(),
        "brainfloat-cli/testing".to_string(),
        "brainfloat-kernels/own-gemm".to_string(),
    ];
    let mut environment = Vec::new();
    for backend in TEST_BACKENDS.into_iter().chain([backend]) {
        if let Some(feature) = backend_feature(backend)? {
            let feature_name = format!("brainfloat-cli/{feature}");
            if !features.contains(&feature_name) {
                features.push(feature_name);
                environment.extend(backend_environment(feature)?);
            }
        }
    }
    Ok((features.join(","), environment))
}

/// `cargo test --workspace --release` with the suite's features on `backend`, after
/// `scripts/setup` (OpenMPI and libclang for the distributed tests under `mpirun -np 2`).
fn suite_command(backend: &str) -> Result<Command, String> {
    if !status(&mut Command::new(SETUP)) {
        return Err(format!(
            "{SETUP} failed (it installs OpenMPI and libclang; see above)"
        ));
    }
    let (features, environment) = suite_build(backend)?;
    let mut tests = cargo_command();
    tests
        .args(["test", "--workspace", "--release", "--features", &features])
        .envs(environment)
        .env("BRAINFLOAT_BACKEND", backend);
    mpi_environment(&mut tests);
    Ok(tests)
}

/// Every test, once per backend of [`TEST_BACKENDS`] or of `--backend X`; other arguments go
/// to `cargo test`.
fn test(args: &[String]) -> Result<bool, String> {
    let backends: Vec<String> = match value_of(args, "--backend") {
        Some(backend) => vec![backend],
        None => TEST_BACKENDS.iter().map(|b| b.to_string()).collect(),
    };
    let extra = without_flag(args, "--backend");
    let mut results = Vec::new();
    for backend in &backends {
        eprintln!("xtask: the test suite on backend `{backend}`");
        let mut tests = suite_command(backend)?;
        tests.args(&extra);
        results.push((format!("test suite on `{backend}`"), status(&mut tests)));
    }
    if value_of(args, "--backend").is_none() {
        eprintln!("xtask: the `cuda` feature compiles without GitHub");
        results.push(("`cuda` feature compiles".to_string(), cuda_compiles()));
        eprintln!("xtask: every published crate packages");
        results.push(("crates package".to_string(), crates_package()));
    }
    for (what, passed) in &results {
        let result = if *passed { "passed" } else { "FAILED" };
        eprintln!("xtask: {what}: {result}");
    }
    Ok(results.iter().all(|(_, passed)| *passed))
}

/// The workspace's members that are not published (tests, examples, this task runner).
const UNPUBLISHED: [&str; 5] = [
    "brainfloat-tests",
    "brainfloat-examples",
    "brainfloat-downstream",
    "brainfloat-test-support",
    "xtask",
];

/// `cargo package` of every published crate: versions on every dependency, license files,
/// metadata, and every file a crate includes inside it. (Not verified by building the packages:
/// that is the suite's build once more; `cargo package --workspace` without `--no-verify` does
/// it.)
fn crates_package() -> bool {
    let mut package = cargo_command();
    package.args([
        "package",
        "--workspace",
        "--no-verify",
        "--allow-dirty",
        "--quiet",
    ]);
    for crate_name in UNPUBLISHED {
        package.args(["--exclude", crate_name]);
    }
    status(&mut package)
}

/// The crate whose build script downloads LLVM from GitHub; upstream cubecl-cuda pulls it in,
/// the copy in `third_party/cubecl-cuda` does not.
const LLVM_DOWNLOADER: &str = "tracel-llvm-bundler";

/// Burn's CUDA backend type-checks (no GPU or CUDA toolkit needed: cudarc loads CUDA at run
/// time), and nothing in its build graph downloads from outside the package registries.
fn cuda_compiles() -> bool {
    let tree = cargo_command()
        .args(["tree", "--package", "brainfloat-cli", "--features", "cuda"])
        .args(["--edges", "normal,build", "--prefix", "none"])
        .output();
    match tree {
        Ok(tree) if tree.status.success() => {
            let downloader = String::from_utf8_lossy(&tree.stdout)
                .lines()
                .any(|line| line.starts_with(LLVM_DOWNLOADER));
            if downloader {
                eprintln!(
                    "error: the `cuda` feature depends on {LLVM_DOWNLOADER} again: is the \
                     [patch.crates-io] of third_party/cubecl-cuda still in Cargo.toml?"
                );
                return false;
            }
        }
        Ok(tree) => {
            eprintln!(
                "error: cargo tree: {}",
                String::from_utf8_lossy(&tree.stderr)
            );
            return false;
        }
        Err(err) => {
            eprintln!("error: cannot run cargo tree: {err}");
            return false;
        }
    }
    let Ok(mut check) = cargo(&["check"], "cuda") else {
        return false;
    };
    status(&mut check)
}

/// The fault suite (`tests/faults/main.rs`, with the test build: its mpirun cases included) on
/// flex, writing its report to `docs/reliability.md`.
fn reliability() -> Result<bool, String> {
    let report = std::env::current_dir()
        .map_err(|err| format!("cannot tell the current folder: {err}"))?
        .join("docs")
        .join("reliability.md");
    let mut faults = suite_command("flex")?;
    faults
        .args(["-p", "brainfloat-cli", "--test", "faults"])
        .env("BRAINFLOAT_RELIABILITY_REPORT", report)
        .env_remove("RUST_BACKTRACE");
    Ok(status(&mut faults))
}

/// OpenMPI settings for containers: running as root is allowed, and shared-memory transfers do
/// not use cross-process memory attach (often forbidden there).
fn mpi_environment(command: &mut Command) {
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
}

/// Seconds between the stages of OpenMPI 4.1's stop when `mpirun` gets SIGTERM or SIGINT
/// (measured, docs/distributed.md): it waits this long, passes SIGTERM on to the ranks, waits as
/// long again, then sends SIGKILL (its default is 1 s). It must cover a step and a checkpoint,
/// and twice it should fit the scheduler's grace (SLURM's `KillWait`, Kubernetes'
/// `terminationGracePeriodSeconds`: 30 s by default).
pub const STOP_GRACE_S: u32 = 15;

/// The MCA parameter of that grace, as an environment variable; a value already set wins.
const STOP_GRACE_VAR: &str = "OMPI_MCA_odls_base_sigkill_timeout";

/// `train --ranks N [--hostfile F]`: builds the binary with the `mpi` feature and runs it under
/// `mpirun -np N`, with `train.ranks=N`.
fn distributed_train(backend: &str, args: &[String]) -> Result<bool, String> {
    let ranks = value_of(args, "--ranks").unwrap_or_default();
    if ranks.parse::<usize>().map_or(true, |n| n == 0) {
        return Err(format!("--ranks wants a number of ranks, got `{ranks}`"));
    }
    let mut build = cargo(&["build"], backend)?;
    build.args(["--features", "mpi"]);
    if !status(&mut build) {
        return Ok(false);
    }
    let mut mpirun = Command::new("mpirun");
    mpirun.args(["-np", &ranks, "--oversubscribe"]);
    if let Some(hostfile) = value_of(args, "--hostfile") {
        mpirun.args(["--hostfile", &hostfile]);
    }
    mpi_environment(&mut mpirun);
    if std::env::var_os(STOP_GRACE_VAR).is_none() {
        mpirun.env(STOP_GRACE_VAR, STOP_GRACE_S.to_string());
    }
    // The backend's environment (libtorch's folder for tch), as the build got it.
    mpirun.envs(
        build
            .get_envs()
            .filter_map(|(key, value)| Some((key, value?))),
    );
    mpirun.arg(Path::new("target").join("release").join("brainfloat"));
    mpirun.args(without_flag(&without_flag(args, "--ranks"), "--hostfile"));
    mpirun.args(["--set", &format!("train.ranks={ranks}")]);
    match mpirun.status() {
        Ok(status) => Ok(status.success()),
        Err(err) => Err(format!(
            "cannot run mpirun ({err}); install OpenMPI with {SETUP} (Debian: openmpi-bin)"
        )),
    }
}

/// `cargo <verb> --release --package brainfloat-cli` with `backend`'s feature and environment.
fn cargo(verb: &[&str], backend: &str) -> Result<Command, String> {
    let mut cargo = cargo_command();
    cargo
        .args(verb)
        .args(["--release", "--package", "brainfloat-cli"]);
    if let Some(feature) = backend_feature(backend)? {
        cargo
            .args(["--features", feature])
            .envs(backend_environment(feature)?);
    }
    Ok(cargo)
}

/// The CLI feature `backend` needs (the names of `brainfloat-backend`, which xtask does not
/// link so that it builds in seconds): `flex` none, `tch` and `tch-cuda[:N]` tch, `cuda[:N]`
/// cuda.
fn backend_feature(backend: &str) -> Result<Option<&'static str>, String> {
    match backend.split(':').next().unwrap_or_default() {
        "flex" if !backend.contains(':') => Ok(None),
        "tch" if !backend.contains(':') => Ok(Some("tch")),
        "tch-cuda" => Ok(Some("tch")),
        "cuda" => Ok(Some("cuda")),
        _ => Err(format!(
            "unknown backend `{backend}` (valid: flex, tch, tch-cuda[:N], cuda[:N])"
        )),
    }
}

/// What building and running with `feature` needs in the environment. For `tch`: PyTorch
/// installed into the build folder once ([`SETUP_TORCH`]), torch-sys told to link its
/// libtorch (`LIBTORCH_USE_PYTORCH`, which runs the environment's `python`), and the loader
/// pointed at it.
fn backend_environment(feature: &str) -> Result<Vec<(String, String)>, String> {
    if feature != "tch" {
        return Ok(Vec::new());
    }
    let setup = Command::new(SETUP_TORCH)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|err| format!("cannot run {SETUP_TORCH}: {err}"))?;
    if !setup.status.success() {
        return Err(format!("{SETUP_TORCH} failed (see above)"));
    }
    let venv = Path::new(String::from_utf8_lossy(&setup.stdout).trim()).to_path_buf();
    let python = venv.join("bin").join("python");
    // torch's libraries, and NVRTC's from the `nvidia-*` wheels beside it (the compile gate of
    // brainfloat-cuda-kernels needs no GPU, only libnvrtc).
    let lib = Command::new(&python)
        .args([
            "-c",
            "import glob, os, torch; d = os.path.dirname(torch.__file__); \
             nvrtc = glob.glob(os.path.join(os.path.dirname(d), 'nvidia', '**', 'libnvrtc.so*'), \
             recursive=True); \
             print(':'.join([os.path.join(d, 'lib')] + sorted({os.path.dirname(p) for p in nvrtc})))",
        ])
        .output()
        .map_err(|err| format!("cannot run {}: {err}", python.display()))?;
    if !lib.status.success() {
        return Err(format!(
            "{} cannot import torch: {}",
            python.display(),
            String::from_utf8_lossy(&lib.stderr).trim()
        ));
    }
    let lib = String::from_utf8_lossy(&lib.stdout).trim().to_string();
    let prepend = |var: &str, first: String| match std::env::var(var) {
        Ok(rest) if !rest.is_empty() => format!("{first}:{rest}"),
        _ => first,
    };
    Ok(vec![
        ("VIRTUAL_ENV".into(), venv.display().to_string()),
        (
            "PATH".into(),
            prepend("PATH", venv.join("bin").display().to_string()),
        ),
        ("LIBTORCH_USE_PYTORCH".into(), "1".into()),
        ("BRAINFLOAT_REQUIRE_NVRTC".into(), "1".into()),
        ("LD_LIBRARY_PATH".into(), prepend("LD_LIBRARY_PATH", lib)),
    ])
}

/// Runs `command`; whether it succeeded.
fn status(command: &mut Command) -> bool {
    match command.status() {
        Ok(status) => status.success(),
        Err(err) => {
            eprintln!("error: cannot run {:?}: {err}", command.get_program());
            false
        }
    }
}

/// Builds, runs the test suite as `cargo xtask test` does (unless `--skip-tests`), runs
/// `brainfloat validate`, and prints every step's result in one table.
fn validate(backend: &str, args: &[String]) -> Result<bool, String> {
    let mut rows: Vec<(String, bool, String)> = Vec::new();
    let built = status(&mut cargo(&["build"], backend)?);
    rows.push(("release build".into(), built, format!("backend {backend}")));
    if !built {
        return Ok(print_table(&rows));
    }
    let skip_tests = args.iter().any(|a| a == "--skip-tests");
    if !skip_tests {
        // The project's test command, as `cargo xtask test` runs it.
        let passed = test(&[]).unwrap_or_else(|err| {
            eprintln!("error: {err}");
            false
        });
        rows.push(("test suite".into(), passed, "cargo xtask test".into()));
    }
    let json = Path::new("target").join("validate.json");
    let _ = std::fs::remove_file(&json);
    let mut run = cargo(&["run"], backend)?;
    run.arg("--")
        .args(args.iter().filter(|a| *a != "--skip-tests"))
        .arg("--json")
        .arg(&json);
    let ran = status(&mut run);
    match std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    {
        Some(serde_json::Value::Array(checks)) => {
            for check in checks {
                rows.push((
                    check["name"].as_str().unwrap_or("?").to_string(),
                    check["passed"].as_bool().unwrap_or(false),
                    check["detail"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        _ => rows.push((
            "pipeline checks".into(),
            false,
            "brainfloat validate did not finish (its error is above)".into(),
        )),
    }
    Ok(print_table(&rows) && ran)
}

/// Prints the pass/fail table; whether every row passed.
fn print_table(rows: &[(String, bool, String)]) -> bool {
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(5);
    println!("\n{:<width$}  result  detail", "step");
    for (name, passed, detail) in rows {
        let result = if *passed { "PASS" } else { "FAIL" };
        println!("{name:<width$}  {result:<6}  {detail}");
    }
    let failed = rows.iter().filter(|r| !r.1).count();
    if failed == 0 {
        println!("validate: all {} steps passed", rows.len());
    } else {
        println!("validate: {failed} of {} steps FAILED", rows.len());
    }
    failed == 0
}

/// The value of `--backend X` or `--backend=X`, `flex` if absent.
fn backend_of(args: &[String]) -> String {
    value_of(args, "--backend").unwrap_or_else(|| "flex".into())
}

/// `args` without `flag X` and `flag=X`.
fn without_flag(args: &[String], flag: &str) -> Vec<String> {
    let mut kept = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == flag {
            iter.next();
        } else if !arg.starts_with(&format!("{flag}=")) {
            kept.push(arg.clone());
        }
    }
    kept
}

/// The value of `flag X` or `flag=X` in `args`.
fn value_of(args: &[String], flag: &str) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == flag {
            return Some(iter.next().cloned().unwrap_or_default());
        }
        if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
            return Some(value.to_string());
        }
    }
    None
}
