//! A run's checkpoints as a history that cannot be mixed up, storage and data that change under
//! the trainer, and stops within a scheduler's grace: each check runs the binary (or, for pure
//! functions, calls them) and says what it saw.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brainfloat_trainer::{FaultPoint, KILL_AT, MetricsLine, checkpoint_records, read_record};

use crate::lifecycle::{spawn_long_run, wait_for_steps};
use crate::{BIN, Base, curve, data_file, newest_checkpoint, run};

/// One check: its name, whether it passed, what it saw.
pub type Check = (String, bool, String);

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `error:` line of stderr, or its last line.
fn error_line(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("error:"))
        .or_else(|| text.lines().last())
        .unwrap_or("")
        .to_string()
}

/// Records and data files in `dir`.
fn counts(dir: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let records = names
        .iter()
        .filter(|n| n.starts_with("step_") && n.ends_with(".json"))
        .count();
    let data = names
        .iter()
        .filter(|n| n.starts_with("step_") && n.ends_with(".safetensors"))
        .count();
    (records, data)
}

/// The run identity of the record of `step` in `dir`.
fn run_id(dir: &Path, step: usize) -> Option<String> {
    read_record(&dir.join(format!("step_{step:06}.json")))
        .ok()?
        .run
}

pub fn history_checks(base: &Base) -> Vec<Check> {
    let mut out = Vec::new();
    let every_step = |steps: &'static str| {
        vec![
            steps,
            "train.warmdown_steps=1",
            "output.checkpoint_every=1",
            "eval.every=0",
        ]
    };

    // Numeric order: step 1,000,000 is newer than step 999,999 (as strings it sorts first).
    let dir = base.dir.join("h_order");
    std::fs::create_dir_all(&dir).unwrap();
    for step in [999_999, 1_000_000, 7] {
        std::fs::write(dir.join(format!("step_{step:06}.json")), b"{}").unwrap();
    }
    let newest = checkpoint_records(&dir).first().map(|(step, _)| *step);
    out.push((
        "checkpoints order by step number: step 1000000 is newer than 999999".into(),
        newest == Some(1_000_000),
        format!("newest: {newest:?}"),
    ));

    // --resume falls back past a damaged newest checkpoint, saying why.
    let folder = "h_fallback";
    let dir = base.dir.join(folder);
    assert!(
        run(&base.train_args(folder, &every_step("train.steps=3")), &[])
            .status
            .success()
    );
    let model = data_file(&dir.join("step_000003.json"), "model");
    let mut bytes = std::fs::read(&model).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&model, bytes).unwrap();
    let mut args = base.train_args(folder, &every_step("train.steps=4"));
    args.push("--resume".into());
    let output = run(&args, &[]);
    let text = stderr(&output);
    let warned = text
        .lines()
        .find(|l| l.contains("trying the checkpoint before it"));
    out.push((
        "--resume with a damaged newest checkpoint falls back to the one before, naming the damage"
            .into(),
        output.status.success()
            && warned.is_some_and(|l| l.contains("SHA-256"))
            && dir
                .join("superseded-after-step-2/step_000003.json")
                .is_file()
            && newest_checkpoint(&dir) == 4,
        warned.map_or_else(|| error_line(&text), str::to_string),
    ));

    // Resuming an older record on purpose sets the later ones aside; the run keeps its identity.
    let folder = "h_older";
    let dir = base.dir.join(folder);
    assert!(
        run(&base.train_args(folder, &every_step("train.steps=4")), &[])
            .status
            .success()
    );
    let first_id = run_id(&dir, 1);
    let mut args = base.train_args(folder, &every_step("train.steps=4"));
    args.extend([
        "--resume".into(),
        dir.join("step_000002.json").display().to_string(),
    ]);
    let output = run(&args, &[]);
    let aside = dir.join("superseded-after-step-2");
    out.push((
        "resuming an older record moves the later ones aside; the run keeps its identity".into(),
        output.status.success()
            && aside.join("step_000003.json").is_file()
            && aside.join("step_000004.json").is_file()
            && newest_checkpoint(&dir) == 4
            && first_id.is_some()
            && run_id(&dir, 4) == first_id,
        format!(
            "run {:?} at step 1, {:?} at step 4; set aside: {}",
            first_id,
            run_id(&dir, 4),
            aside.is_dir()
        ),
    ));

    // --overwrite: a fresh run in that folder moves the other run aside and gets its own id.
    let mut args = base.train_args(folder, &every_step("train.steps=2"));
    args.push("--overwrite".into());
    let output = run(&args, &[]);
    let replaced = first_id
        .as_ref()
        .map(|id| dir.join(format!("replaced-{id}")));
    out.push((
        "--overwrite moves another run's checkpoints and metrics into a subfolder".into(),
        output.status.success()
            && replaced.as_ref().is_some_and(|r| {
                r.join("step_000004.json").is_file() && r.join("metrics.jsonl").is_file()
            })
            && run_id(&dir, 2).is_some()
            && run_id(&dir, 2) != first_id
            && newest_checkpoint(&dir) == 2,
        format!("new run {:?}", run_id(&dir, 2)),
    ));

    // output.keep_last.
    let folder = "h_keep";
    let dir = base.dir.join(folder);
    let mut sets = every_step("train.steps=5");
    sets.push("output.keep_last=2");
    let output = run(&base.train_args(folder, &sets), &[]);
    let (records, data) = counts(&dir);
    out.push((
        "output.keep_last = 2 keeps the newest two checkpoints and nothing of the others".into(),
        output.status.success()
            && (records, data) == (2, 4)
            && dir.join("step_000005.json").is_file()
            && dir.join("step_000004.json").is_file(),
        format!("{records} records, {data} data files"),
    ));

    // A kill at each point of a checkpoint write, then --resume: the uninterrupted curve, and no
    // file a record does not name.
    let kill_sets = [
        "train.steps=6",
        "train.warmdown_steps=2",
        "output.checkpoint_every=2",
        "eval.every=0",
    ];
    assert!(
        run(&base.train_args("h_kill_reference", &kill_sets), &[])
            .status
            .success()
    );
    let reference = curve(&base.dir.join("h_kill_reference/metrics.jsonl"));
    for point in FaultPoint::ALL {
        let folder = format!("h_kill_{}", point.name());
        let dir = base.dir.join(&folder);
        let args = base.train_args(&folder, &kill_sets);
        let spec = format!("{}@4", point.name());
        let killed = run(&args, &[(KILL_AT, spec.as_str())]);
        let signal = std::os::unix::process::ExitStatusExt::signal(&killed.status);
        let kept = newest_checkpoint(&dir);
        let mut resume = args.clone();
        resume.push("--resume".into());
        let resumed = run(&resume, &[]);
        let (records, data) = counts(&dir);
        let expected_kept = if point == FaultPoint::AfterRecord {
            4
        } else {
            2
        };
        out.push((
            format!(
                "SIGKILL {} of the step-4 checkpoint, then --resume",
                point.name()
            ),
            signal == Some(9)
                && kept == expected_kept
                && resumed.status.success()
                && curve(&dir.join("metrics.jsonl")) == reference
                && data == 2 * records,
            format!(
                "killed by signal {signal:?}; newest checkpoint after the kill: step {kept}; \
                 resumed: {}; {records} records, {data} data files; curve {}",
                resumed.status,
                if curve(&dir.join("metrics.jsonl")) == reference {
                    "reproduced"
                } else {
                    "DIFFERS"
                }
            ),
        ));
    }

    // SIGUSR1 (SLURM's --signal) does what SIGTERM does.
    let child = spawn_long_run(base, "h_usr1", &[], 3);
    // SAFETY: signals our own child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let output = child.wait_with_output().unwrap();
    let step = curve(&base.dir.join("h_usr1/metrics.jsonl"))
        .keys()
        .max()
        .copied()
        .unwrap_or(0) as usize;
    out.push((
        "SIGUSR1 stops after the step with a checkpoint, status 138".into(),
        output.status.code() == Some(138) && newest_checkpoint(&base.dir.join("h_usr1")) == step,
        error_line(&stderr(&output)),
    ));

    // SIGTERM during a long evaluation: answered within the grace, with a checkpoint.
    let folder = "h_eval_term";
    let child = spawn_long_run(
        base,
        folder,
        &[
            "train.steps=100",
            "train.warmdown_steps=1",
            "eval.every=2",
            "eval.tokens=50000000",
        ],
        2,
    );
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    // SAFETY: signals our own child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    out.push((
        "SIGTERM during a long evaluation: abandoned, checkpoint written, exit within 10 s".into(),
        output.status.code() == Some(143)
            && newest_checkpoint(&base.dir.join(folder)) == 2
            && took < Duration::from_secs(10)
            && stderr(&output).contains("evaluation abandoned"),
        format!(
            "status {:?} after {:.1} s; newest checkpoint step {}",
            output.status.code(),
            took.as_secs_f64(),
            newest_checkpoint(&base.dir.join(folder))
        ),
    ));

    // train.max_skipped_steps ends a run that only skips.
    let args = base.train_args(
        "h_skips",
        &["train.on_non_finite=skip", "train.max_skipped_steps=3"],
    );
    let output = run(
        &args,
        &[("BRAINFLOAT_INJECT_NON_FINITE", "loss@2,loss@3,loss@4")],
    );
    let line = error_line(&stderr(&output));
    out.push((
        "three skipped steps in a row with train.max_skipped_steps = 3 end the run".into(),
        !output.status.success() && line.contains("3 steps in a row skipped"),
        line,
    ));

    // A shard truncated under a running trainer: an error naming it, not SIGBUS.
    let folder = "h_shard";
    let dir = base.dir.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let shard = dir.join("train.bin");
    std::fs::copy(&base.shard, &shard).unwrap();
    let data = format!("data.train={}", shard.display());
    let child = spawn_long_run(base, folder, &[&data], 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(1100)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let line = error_line(&stderr(&output));
    out.push((
        "a shard truncated while the trainer reads it: an error naming it (no SIGBUS)".into(),
        output.status.code() == Some(1)
            && line.contains(&shard.display().to_string())
            && line.contains("changed while training read it"),
        line,
    ));

    // The disk fills after the start (a 16 KiB file-size limit set on the running trainer):
    // the next checkpoint is refused before a byte is written, the run ends with the reason,
    // and the checkpoints before it resume.
    let folder = "h_full_later";
    let dir = base.dir.join(folder);
    let mut command = Command::new(BIN);
    command
        .args(base.train_args(
            folder,
            &[
                "train.steps=100000",
                "train.warmdown_steps=0",
                "output.checkpoint_every=1",
                "eval.every=0",
            ],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE");
    // SAFETY: only async-signal-safe calls between fork and exec. A write past the limit then
    // fails with EFBIG instead of killing the writer with SIGXFSZ.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    wait_for_steps(&dir.join("metrics.jsonl"), 3);
    let limit = libc::rlimit {
        rlim_cur: 16 << 10,
        rlim_max: 16 << 10,
    };
    // SAFETY: sets a limit of our own child, which has not been waited for.
    let set = unsafe {
        libc::prlimit(
            child.id() as i32,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    let output = child.wait_with_output().unwrap();
    let line = error_line(&stderr(&output));
    let kept = newest_checkpoint(&dir);
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .count();
    let mut args = base.train_args(folder, &every_step("train.steps=6"));
    args.push("--resume".into());
    let resumed = run(&args, &[]);
    out.push((
        "the disk fills after the start: the next checkpoint is refused, nothing half-written, \
         the last one resumes"
            .into(),
        set == 0
            && output.status.code() == Some(1)
            && (line.contains("the file-size limit (ulimit -f) is 16.0 KiB")
                || line.contains("File too large"))
            && kept >= 2
            && leftovers == 0
            && resumed.status.success(),
        format!(
            "{line} (newest checkpoint kept: step {kept}; resumed: {})",
            resumed.status
        ),
    ));

    // A torn last line of metrics.jsonl: `plot` draws the rest, a resume appends cleanly.
    let folder = "h_torn";
    let dir = base.dir.join(folder);
    assert!(
        run(&base.train_args(folder, &every_step("train.steps=2")), &[])
            .status
            .success()
    );
    let metrics = dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\": 3, \"lo");
    std::fs::write(&metrics, &text).unwrap();
    let svg = dir.join("loss.svg");
    let plot = run(
        &[
            "plot".to_string(),
            metrics.display().to_string(),
            "--out".into(),
            svg.display().to_string(),
        ],
        &[],
    );
    let mut args = base.train_args(folder, &every_step("train.steps=3"));
    args.push("--resume".into());
    let resumed = run(&args, &[]);
    let lines = MetricsLine::read_all(&metrics);
    out.push((
        "metrics.jsonl with a torn last line: plot draws the rest, --resume appends cleanly".into(),
        plot.status.success()
            && svg.is_file()
            && resumed.status.success()
            && lines
                .as_ref()
                .is_ok_and(|l| l.iter().filter(|l| l.loss.is_some()).count() == 3),
        format!(
            "plot: {}; resume: {}; lines read back: {:?}",
            plot.status,
            resumed.status,
            lines.map(|l| l.len()).map_err(|e| e.to_string())
        ),
    ));

    // A dead writer's temporary whose PID is alive again (a restarted container): removed,
    // because its lock is free; a PID check would have kept it forever.
    let folder = "h_pid";
    let dir = base.dir.join(folder);
    assert!(
        run(&base.train_args(folder, &every_step("train.steps=2")), &[])
            .status
            .success()
    );
    // This test process is alive and holds no lock on it.
    let stale = brainfloat_files::temporary_path(&dir.join("step_000003.json"));
    std::fs::write(&stale, b"half a record").unwrap();
    let mut args = base.train_args(folder, &every_step("train.steps=3"));
    args.push("--resume".into());
    let output = run(&args, &[]);
    out.push((
        "a killed writer's temporary whose PID now belongs to a live process is removed".into(),
        output.status.success() && !stale.exists(),
        format!(
            "{} still there: {}",
            stale.file_name().unwrap().to_string_lossy(),
            stale.exists()
        ),
    ));

    #[cfg(feature = "mpi")]
    out.push(crate::lifecycle::mpirun_rank0_fails_at_start(base));
    #[cfg(feature = "mpi")]
    out.push(crate::lifecycle::mpirun_ranks_disagree(base));
    out
}
