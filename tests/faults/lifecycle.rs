//! A run's life outside the happy path: resumed under another precision or a changed config,
//! two trainers on one folder, temporaries of killed writers, SIGTERM under mpirun. Each case
//! states what is expected and what happened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::{Dtype, SafeTensors};

#[cfg(feature = "mpi")]
use crate::curve;
use crate::{BIN, Base, newest_checkpoint, run};

/// One case: what it is, what was expected, what happened, and whether the two agree.
pub struct Outcome {
    pub case: String,
    pub expected: String,
    pub happened: String,
    pub ok: bool,
}

/// stderr as text.
fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The first stderr line that contains `needle`, or the last `error:` line, or the last line.
fn line_with(output: &Output, needle: &str) -> String {
    let text = stderr(output);
    text.lines()
        .find(|l| l.contains(needle))
        .or_else(|| text.lines().rfind(|l| l.starts_with("error:")))
        .or_else(|| text.lines().last())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn panicked(output: &Output) -> bool {
    let text = stderr(output);
    text.contains("panicked") || text.contains("stack backtrace")
}

/// The dtype of tensor `name` in a safetensors file.
fn dtype_of(file: &Path, name: &str) -> Option<Dtype> {
    let bytes = std::fs::read(file).ok()?;
    let tensors = SafeTensors::deserialize(&bytes).ok()?;
    tensors.tensor(name).ok().map(|view| view.dtype())
}

/// Copies the step-2 checkpoint files of `from` into a new folder `to`.
fn copy_checkpoint(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step_000002") {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The embedding's storage dtype under each preset (the record: bf16 in the bf16 recipe).
fn embedding_dtype(preset: &str) -> Dtype {
    if preset == "bf16" {
        Dtype::BF16
    } else {
        Dtype::F32
    }
}

const PRESETS: [&str; 3] = ["fp32", "autocast", "bf16"];

/// A 4-step run under each preset with a checkpoint at step 2 is resumed from step 2 under each
/// other preset: the resume converts and says so, and the run's next checkpoint holds the new
/// policy's dtypes (weights and Adam's moments).
pub fn precision_resumes(base: &Base) -> Vec<Outcome> {
    let sets = [
        "train.steps=4",
        "train.warmdown_steps=1",
        "output.checkpoint_every=2",
    ];
    let mut out = Vec::new();
    for from in PRESETS {
        let source = format!("resume/from_{from}");
        let mut args = base.train_args(&source, &sets);
        args.extend(["--precision".into(), from.into()]);
        assert!(run(&args, &[]).status.success(), "{from} run");
        for to in PRESETS.iter().filter(|p| **p != from) {
            let folder = format!("resume/{from}_to_{to}");
            copy_checkpoint(&base.dir.join(&source), &base.dir.join(&folder));
            let mut args = base.train_args(&folder, &sets);
            args.extend(["--precision".into(), (*to).into(), "--resume".into()]);
            let output = run(&args, &[]);
            let dir = base.dir.join(&folder);
            let (model, optim) = (
                crate::data_file(&dir.join("step_000004.json"), "model"),
                crate::data_file(&dir.join("step_000004.json"), "optim"),
            );
            let want = embedding_dtype(to);
            let wte = "transformer.wte.weight";
            let dtypes = (
                dtype_of(&model, wte),
                dtype_of(&optim, &format!("{wte}.exp_avg")),
            );
            let note =
                format!("train.precision changed since the checkpoint: \"{from}\" → \"{to}\"");
            let said = stderr(&output).contains(&note);
            out.push(Outcome {
                case: format!("resume a {from} checkpoint with --precision {to}"),
                expected: format!(
                    "converted: a warning naming {from} → {to}; the run completes; the embedding \
                     and its Adam moments are stored as {want:?}"
                ),
                happened: format!(
                    "exit {:?}; embedding {:?}, moment {:?}; `{}`",
                    output.status.code(),
                    dtypes.0,
                    dtypes.1,
                    line_with(&output, "changed since the checkpoint")
                ),
                ok: output.status.success()
                    && said
                    && dtypes == (Some(want), Some(want))
                    && !panicked(&output),
            });
        }
    }
    out
}

/// A bf16 checkpoint at step 2 resumed with one key changed: the run completes and a warning
/// names the key, its old and new values, and what it means.
pub fn changed_keys(base: &Base) -> Vec<Outcome> {
    let source = base.dir.join("resume/from_bf16");
    let base_sets = [
        "train.steps=4",
        "train.warmdown_steps=1",
        "output.checkpoint_every=2",
    ];
    let cases = [
        (
            "train.batch_size",
            "16",
            "8 → 16",
            "the data continues at the checkpoint's position",
        ),
        (
            "train.seq_len",
            "16",
            "32 → 16",
            "the data continues at the checkpoint's position",
        ),
        (
            "train.grad_accum_steps",
            "2",
            "1 → 2",
            "each step still reads 8 sequences",
        ),
        (
            "train.steps",
            "6",
            "4 → 6",
            "the learning-rate schedule is recomputed",
        ),
        (
            "optim.matrix_lr",
            "0.01",
            "0.02 → 0.01",
            "applied from the resumed step on",
        ),
    ];
    let mut out = Vec::new();
    for (key, value, change, meaning) in cases {
        let folder = format!("resume/changed_{key}");
        copy_checkpoint(&source, &base.dir.join(&folder));
        let set = format!("{key}={value}");
        let mut sets = base_sets.to_vec();
        sets.push(&set);
        let mut args = base.train_args(&folder, &sets);
        args.push("--resume".into());
        let output = run(&args, &[]);
        let note = format!("{key} changed since the checkpoint: {change}: {meaning}");
        out.push(Outcome {
            case: format!("resume with {key} changed"),
            expected: format!("a warning `{key} … {change}: {meaning}…`; the run completes"),
            happened: format!(
                "exit {:?}; `{}`",
                output.status.code(),
                line_with(&output, "changed since the checkpoint")
            ),
            ok: output.status.success() && stderr(&output).contains(&note) && !panicked(&output),
        });
    }
    out
}

/// Starts a run of 100,000 steps into `out` (no evaluation, no periodic checkpoint, `extra`
/// overrides last), stderr piped, and waits until it has written `lines` metrics lines.
pub fn spawn_long_run(base: &Base, out: &str, extra: &[&str], lines: usize) -> Child {
    let mut sets = vec![
        "train.steps=100000",
        "train.warmdown_steps=0",
        "output.checkpoint_every=0",
        "eval.every=0",
    ];
    sets.extend(extra);
    let child = Command::new(BIN)
        .args(base.train_args(out, &sets))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&base.dir.join(out).join("metrics.jsonl"), lines);
    child
}

/// Waits (up to a minute) until `metrics` has `lines` lines.
pub fn wait_for_steps(metrics: &Path, lines: usize) {
    let started = Instant::now();
    while std::fs::read_to_string(metrics).map_or(0, |m| m.lines().count()) < lines
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child` and waits for it.
fn terminate(child: Child) -> Output {
    // SAFETY: sends a signal to our own child, which has not been waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

/// A long run holds `out_busy`; a second trainer on it stops at start naming the first one's
/// pid and writes nothing; `eval` of its checkpoint and `plot` of its metrics work meanwhile.
pub fn two_trainers(base: &Base) -> Vec<Outcome> {
    let first = spawn_long_run(base, "out_busy", &["output.checkpoint_every=2"], 3);
    let dir = base.dir.join("out_busy");
    let metrics_before = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let mut args = base.train_args("out_busy", &["train.precision=fp32"]);
    args.extend(["--precision".into(), "fp32".into()]);
    let second = run(&args, &[]);
    let pid = first.id();
    let second_line = line_with(&second, "error:");
    let metrics_after = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let mut out = vec![Outcome {
        case: "a second trainer (fp32) on the folder of a running one (bf16)".into(),
        expected: "a clear error naming the first trainer's pid; nothing written by the second"
            .into(),
        happened: format!("exit {:?}; `{second_line}`", second.status.code()),
        ok: !second.status.success()
            && second_line.contains(&format!("in use by another trainer (pid {pid})"))
            && metrics_after.starts_with(&metrics_before)
            && !panicked(&second),
    }];
    let record = dir.join(format!("step_{:06}.json", newest_checkpoint(&dir)));
    let config = base.config.display().to_string();
    let shard = format!("data.val={}", base.shard.display());
    let eval = run(
        &[
            "eval".into(),
            "--config".into(),
            config,
            "--set".into(),
            shard,
            "--checkpoint".into(),
            record.display().to_string(),
        ],
        &[],
    );
    let plot = run(
        &[
            "plot".into(),
            dir.join("metrics.jsonl").display().to_string(),
            "--out".into(),
            base.dir.join("busy.svg").display().to_string(),
        ],
        &[],
    );
    out.push(Outcome {
        case: "`eval` of its checkpoint and `plot` of its metrics while it runs".into(),
        expected: "both work (readers take no lock)".into(),
        happened: format!(
            "eval exit {:?} (`{}`), plot exit {:?}",
            eval.status.code(),
            String::from_utf8_lossy(&eval.stdout).trim(),
            plot.status.code()
        ),
        ok: eval.status.success() && plot.status.success(),
    });
    let stopped = terminate(first);
    let released = !dir.join(".brainfloat.lock").exists();
    out.push(Outcome {
        case: "the first trainer, stopped with SIGTERM".into(),
        expected: "status 143 after a checkpoint; the lock file removed".into(),
        happened: format!(
            "exit {:?}, lock file {}; `{}`",
            stopped.status.code(),
            if released { "removed" } else { "left" },
            line_with(&stopped, "stopped at step")
        ),
        ok: stopped.status.code() == Some(143) && released,
    });
    out
}

/// A process that has exited: its pid names a writer that is gone.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Temporaries of killed writers in an output folder and a shard folder are removed at start;
/// a live process's temporary is left.
pub fn stale_temporaries(base: &Base) -> Vec<Outcome> {
    let folder = "resume/stale";
    let dir = base.dir.join(folder);
    copy_checkpoint(&base.dir.join("resume/from_bf16"), &dir);
    let dead = dead_pid();
    let stale = dir.join(format!(".step_000003.model.safetensors.tmp-{dead}"));
    let live = dir.join(format!(".notes.txt.tmp-{}", std::process::id()));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    std::fs::write(&live, b"in use").unwrap();
    let mut args = base.train_args(folder, &["train.steps=4", "train.warmdown_steps=1"]);
    args.push("--resume".into());
    let output = run(&args, &[]);
    let mut out = vec![Outcome {
        case: "a checkpoint's temporary left by a killed run (and one of a live process)".into(),
        expected: "the dead writer's removed at start (logged), the live one's kept".into(),
        happened: format!(
            "exit {:?}; dead writer's {}, live one's {}; `{}`",
            output.status.code(),
            if stale.exists() { "kept" } else { "removed" },
            if live.exists() { "kept" } else { "removed" },
            line_with(&output, "temporary")
        ),
        ok: output.status.success() && !stale.exists() && live.exists(),
    }];
    let texts = base.dir.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    std::fs::write(texts.join("a.txt"), "Four score and seven years ago.").unwrap();
    std::fs::write(
        texts.join("b.txt"),
        "We hold these truths to be self-evident.",
    )
    .unwrap();
    let shards = base.dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let stale_shard: PathBuf = shards.join(format!(".mine_train_000.bin.tmp-{dead}"));
    std::fs::write(&stale_shard, vec![0u8; 4096]).unwrap();
    let data = run(
        &[
            "data".into(),
            "--text".into(),
            texts.display().to_string(),
            "--name".into(),
            "mine".into(),
            "--dir".into(),
            shards.display().to_string(),
            "--val-every".into(),
            "2".into(),
        ],
        &[],
    );
    out.push(Outcome {
        case: "a shard's temporary left by a killed `data` run".into(),
        expected: "removed when `data` next writes into the folder".into(),
        happened: format!(
            "exit {:?}; temporary {}",
            data.status.code(),
            if stale_shard.exists() {
                "kept"
            } else {
                "removed"
            }
        ),
        ok: data.status.success() && !stale_shard.exists(),
    });
    out
}

/// Seconds OpenMPI waits between the stages of its stop (see docs/distributed.md): short here,
/// where a step and a checkpoint take milliseconds.
#[cfg(feature = "mpi")]
const TEST_STOP_GRACE_S: &str = "3";

/// `mpirun` of a 2-rank run in its own process group.
#[cfg(feature = "mpi")]
fn mpirun(base: &Base, out: &str, sets: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("mpirun");
    command
        .process_group(0)
        .args(["-np", "2", "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_odls_base_sigkill_timeout", TEST_STOP_GRACE_S)
        .arg(BIN)
        .args(base.train_args(out, sets))
        .args(["--set", "train.ranks=2"])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Who receives the SIGTERM.
#[cfg(feature = "mpi")]
#[derive(Clone, Copy, Debug)]
enum Addressee {
    /// Every process of the job at once, as SLURM and systemd (and Ctrl-C, with SIGINT) do.
    Job,
    /// `mpirun` alone, as Kubernetes (to the container's first process) or `kill PID` do; OpenMPI
    /// passes it on to the ranks after its grace.
    Mpirun,
}

/// A 2-rank run stopped with SIGTERM at a pseudo-random point, once sent to the whole job and
/// once to `mpirun` alone, then resumed under mpirun to the end: every rank stops at the same
/// step, rank 0 checkpoints it, and the curve is the uninterrupted 2-rank run's.
#[cfg(feature = "mpi")]
pub fn mpirun_sigterm(base: &Base, seed: &mut u64) -> Vec<Outcome> {
    let sets = [
        "train.steps=1500",
        "train.warmdown_steps=10",
        "output.checkpoint_every=0",
        "eval.every=0",
        "output.log_format=json",
    ];
    let reference = mpirun(base, "mpi/reference", &sets).output().unwrap();
    assert!(reference.status.success(), "{}", stderr(&reference));
    let reference = curve(&base.dir.join("mpi/reference/metrics.jsonl"));
    let dir = base.dir.join("mpi/stopped");
    let metrics = dir.join("metrics.jsonl");
    let mut out = Vec::new();
    for addressee in [Addressee::Job, Addressee::Mpirun] {
        let mut command = mpirun(base, "mpi/stopped", &sets);
        if newest_checkpoint(&dir) > 0 {
            command.arg("--resume");
        }
        let lines = std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count());
        let child = command.spawn().unwrap();
        // Once the ranks train (a new metrics line), a pseudo-random delay.
        wait_for_steps(&metrics, lines + 1);
        let delay = crate::random_delay(seed, Duration::ZERO);
        std::thread::sleep(delay);
        let target = match addressee {
            Addressee::Job => -(child.id() as i32),
            Addressee::Mpirun => child.id() as i32,
        };
        let sent = Instant::now();
        // SAFETY: signals our own child (or its process group), not yet waited for.
        unsafe { libc::kill(target, libc::SIGTERM) };
        let output = child.wait_with_output().unwrap();
        let text = stderr(&output);
        let stops: Vec<(String, usize)> = text
            .lines()
            .filter_map(|l| {
                let (who, rest) = l.split_once("stopped at step ")?;
                Some((
                    who.trim().to_string(),
                    rest.split_whitespace().next()?.parse().ok()?,
                ))
            })
            .collect();
        let checkpoint = newest_checkpoint(&dir);
        let same_step = stops.len() == 2 && stops[0].1 == stops[1].1;
        out.push(Outcome {
            case: format!(
                "SIGTERM to {} of a 2-rank run, {} ms into training",
                match addressee {
                    Addressee::Job => "every process (SLURM, systemd)",
                    Addressee::Mpirun => "`mpirun` alone (Kubernetes, `kill`)",
                },
                delay.as_millis()
            ),
            expected: "both ranks stop at the same step; rank 0 checkpoints that step".into(),
            happened: format!(
                "{:?}; mpirun exited after {:.1} s; newest checkpoint: step {checkpoint}",
                stops,
                sent.elapsed().as_secs_f64()
            ),
            ok: same_step && checkpoint == stops[0].1,
        });
    }
    let output = mpirun(base, "mpi/stopped", &sets)
        .arg("--resume")
        .output()
        .unwrap();
    let got = curve(&metrics);
    out.push(Outcome {
        case: "the stopped 2-rank run, resumed to the end".into(),
        expected: "its loss curve equals the uninterrupted 2-rank run's".into(),
        happened: format!(
            "exit {:?}; {} of {} steps equal",
            output.status.code(),
            got.iter()
                .filter(|(s, l)| reference.get(s) == Some(l))
                .count(),
            reference.len()
        ),
        ok: output.status.success() && got == reference,
    });
    out
}

/// A 1-rank bf16 checkpoint at step 2 resumed on 2 ranks under mpirun: a warning names the rank
/// count and what it means for the data, and the run completes.
#[cfg(feature = "mpi")]
pub fn changed_rank_count(base: &Base) -> Outcome {
    let folder = "resume/changed_train.ranks";
    copy_checkpoint(&base.dir.join("resume/from_bf16"), &base.dir.join(folder));
    let output = mpirun(
        base,
        folder,
        &[
            "train.steps=4",
            "train.warmdown_steps=1",
            "output.checkpoint_every=2",
        ],
    )
    .arg("--resume")
    .output()
    .unwrap();
    let note = "train.ranks changed since the checkpoint: 1 → 2: the data continues at the \
                checkpoint's position";
    Outcome {
        case: "resume a 1-rank checkpoint on 2 ranks (mpirun)".into(),
        expected: "a warning `train.ranks … 1 → 2: the data continues at the checkpoint's \
                   position…`; the run completes"
            .into(),
        happened: format!(
            "exit {:?}; `{}`",
            output.status.code(),
            line_with(&output, "changed since the checkpoint")
        ),
        ok: output.status.success() && stderr(&output).contains(note) && !panicked(&output),
    }
}

/// Rank 0 refuses to start (a fresh run into a folder holding another run's checkpoints) under
/// mpirun: every rank ends within a minute with the reason, none waits in a collective.
#[cfg(feature = "mpi")]
pub fn mpirun_rank0_fails_at_start(base: &Base) -> (String, bool, String) {
    let folder = "h_mpi_start";
    copy_checkpoint(&base.dir.join("resume/from_bf16"), &base.dir.join(folder));
    let started = Instant::now();
    let (output, hung) = within_a_minute(&mut mpirun(
        base,
        folder,
        &["train.steps=4", "train.warmdown_steps=1"],
    ));
    (
        "rank 0 fails at start under mpirun: every rank ends (MPI_Abort), the reason named".into(),
        !hung
            && !output.status.success()
            && stderr(&output).contains("holds the checkpoints of another run")
            && stderr(&output).contains("stopping all ranks"),
        format!(
            "after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            line_with(&output, "stopping all ranks")
        ),
    )
}

/// Two ranks launched with different seeds (one `mpirun` of two programs): they refuse to
/// start, naming what they disagree on, before the first step.
#[cfg(feature = "mpi")]
pub fn mpirun_ranks_disagree(base: &Base) -> (String, bool, String) {
    use std::os::unix::process::CommandExt;
    let folder = "h_mpi_disagree";
    let mut command = Command::new("mpirun");
    command
        .process_group(0)
        .arg("--oversubscribe")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (i, seed) in ["train.seed=1", "train.seed=2"].into_iter().enumerate() {
        if i > 0 {
            command.arg(":");
        }
        command
            .args(["-np", "1", BIN])
            .args(base.train_args(folder, &["train.ranks=2", seed]));
    }
    let started = Instant::now();
    let (output, hung) = within_a_minute(&mut command);
    (
        "two ranks with different configs refuse to start, naming the difference".into(),
        !hung
            && !output.status.success()
            && stderr(&output).contains("the ranks disagree on the config")
            && newest_checkpoint(&base.dir.join(folder)) == 0,
        format!(
            "after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            line_with(&output, "disagree")
        ),
    )
}

/// Runs `command` (in its own process group) for up to a minute: its output, and whether it
/// hung (then its whole group is killed).
#[cfg(feature = "mpi")]
fn within_a_minute(command: &mut Command) -> (Output, bool) {
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    while started.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let hung = child.try_wait().unwrap().is_none();
    if hung {
        // SAFETY: signals the process group of our own child.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    }
    (child.wait_with_output().unwrap(), hung)
}
