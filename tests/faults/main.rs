//! The fault suite: every bad input of the corpus below against the `brainfloat` binary, and
//! runs killed with SIGKILL at random moments then resumed. Each bad input must end with a
//! non-zero exit, an `error:` line naming the file or key and the problem, no panic backtrace,
//! and no file changed. Each killed-and-resumed run must reproduce the uninterrupted loss curve
//! exactly, and never load a partial checkpoint.
//!
//! `cargo test --release -p brainfloat-cli --test faults` runs it; with
//! `BRAINFLOAT_RELIABILITY_REPORT=docs/reliability.md` (what `cargo xtask reliability` sets) it
//! also writes its report there.

#[path = "../../crates/trainer/tests/common/mod.rs"]
mod common;
mod fuzz;
mod history;
mod lifecycle;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use brainfloat_data::shard_bytes;
use brainfloat_tests::{TensorEntry, edited_tensors};
use brainfloat_trainer::MetricsLine;
use safetensors::Dtype;

const BIN: &str = env!("CARGO_BIN_EXE_brainfloat");

/// The `which` ("model" or "optim") data file that the checkpoint record `record` names.
fn data_file(record_path: &Path, which: &str) -> PathBuf {
    let record = brainfloat_trainer::read_record(record_path).unwrap();
    let file = match which {
        "model" => record.model.file,
        _ => record.optimizer.file,
    };
    record_path.with_file_name(file)
}

/// The valid files every case starts from.
struct Base {
    dir: PathBuf,
    config: PathBuf,
    shard: PathBuf,
    /// A 2-step checkpoint record of the configured model.
    good: PathBuf,
    /// A checkpoint record of the `small` model size.
    small: PathBuf,
}

fn tokens(n: usize) -> Vec<u16> {
    (0..n).map(|i| ((i * 7919 + i / 3) % 512) as u16).collect()
}

fn run(args: &[String], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

impl Base {
    fn new(dir: &Path) -> Self {
        let shard = dir.join("train.bin");
        std::fs::write(&shard, shard_bytes(&tokens(40_000))).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, common::toml(dir, "bf16")).unwrap();
        let mut base = Self {
            dir: dir.to_path_buf(),
            config,
            shard,
            good: PathBuf::new(),
            small: PathBuf::new(),
        };
        let good = base.train_args("good", &["train.steps=2", "train.warmdown_steps=1"]);
        assert!(run(&good, &[]).status.success());
        base.good = dir.join("good/step_000002.json");
        let small = base.train_args(
            "small",
            &[
                "model.size=small",
                "model.vocab_size=512",
                "train.steps=1",
                "train.warmdown_steps=0",
            ],
        );
        assert!(run(&small, &[]).status.success());
        base.small = dir.join("small/step_000001.json");
        base
    }

    /// `train` on the base config and shard into `out`, with `sets` last.
    fn train_args(&self, out: &str, sets: &[&str]) -> Vec<String> {
        let mut args = vec!["train".to_string(), "--config".into()];
        args.push(self.config.display().to_string());
        let shard = self.shard.display().to_string();
        let defaults = [
            format!("data.train={shard}"),
            format!("data.val={shard}"),
            format!("output.dir={}", self.dir.join(out).display()),
            "train.batch_size=8".into(),
        ];
        for set in defaults
            .iter()
            .map(String::as_str)
            .chain(sets.iter().copied())
        {
            args.push("--set".into());
            args.push(set.into());
        }
        args
    }

    /// `eval` of `checkpoint` with the base config.
    fn eval_args(&self, checkpoint: &str) -> Vec<String> {
        let config = self.config.display().to_string();
        ["eval", "--config", &config, "--checkpoint", checkpoint]
            .map(String::from)
            .to_vec()
    }

    /// Writes `bytes` as `name` in the base folder; its path.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }

    /// A copy of the good checkpoint in `folder`, with `damage` applied to its files; the record.
    fn damaged_checkpoint(&self, folder: &str, damage: impl Fn(&Path)) -> String {
        let to = self.dir.join(folder);
        std::fs::create_dir_all(&to).unwrap();
        let from = self.good.parent().unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("step_000002") {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
        damage(&to);
        to.join("step_000002.json").display().to_string()
    }

    /// The good checkpoint's weights rewritten by `edit` (name, dtype, shape, bytes).
    fn edited_weights(&self, name: &str, edit: impl Fn(&mut Vec<TensorEntry>)) -> String {
        let bytes = std::fs::read(data_file(&self.good, "model")).unwrap();
        self.file(name, &edited_tensors(&bytes, edit))
    }

    /// A copy of the good checkpoint in `folder` whose `which` data file is rewritten by
    /// `edit` and whose record, edited by `record`, carries the new file's SHA-256: damage
    /// that the checksum does not catch. The record's path.
    fn consistent_checkpoint(
        &self,
        folder: &str,
        which: &str,
        edit: impl Fn(&mut Vec<TensorEntry>),
        record: impl Fn(&mut serde_json::Value),
    ) -> String {
        self.damaged_checkpoint(folder, |dir| {
            let record_path = dir.join("step_000002.json");
            let path = data_file(&record_path, which);
            let bytes = edited_tensors(&std::fs::read(&path).unwrap(), &edit);
            std::fs::write(&path, &bytes).unwrap();
            let mut json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
            let key = if which == "model" {
                "model"
            } else {
                "optimizer"
            };
            json[key]["sha256"] = brainfloat_files::sha256_hex(&bytes).into();
            record(&mut json);
            std::fs::write(&record_path, serde_json::to_vec(&json).unwrap()).unwrap();
        })
    }

    /// A copy of the good checkpoint in `folder` with its record edited by `edit`.
    fn edited_record(&self, folder: &str, edit: impl Fn(&mut serde_json::Value, &Path)) -> String {
        self.damaged_checkpoint(folder, |dir| {
            let record_path = dir.join("step_000002.json");
            let mut json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
            edit(&mut json, dir);
            std::fs::write(&record_path, serde_json::to_vec(&json).unwrap()).unwrap();
        })
    }
}

/// One bad input: how to run it and what its error must name.
struct Case {
    category: &'static str,
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    /// Every one of these must appear in the error.
    expect: Vec<String>,
    /// A limit the run is under.
    limit: Limit,
}

/// A limit a case's process runs under.
enum Limit {
    None,
    /// A 16 KiB file-size limit: a full disk.
    FullDisk,
    /// An address-space limit of this many bytes (`ulimit -v`).
    AddressSpace(u64),
    /// The memory cgroup whose `cgroup.procs` the process joins before it starts.
    Cgroup(PathBuf),
}

/// Adds a case that runs `args` and must name every one of `expect`.
fn add(
    cases: &mut Vec<Case>,
    category: &'static str,
    name: &'static str,
    args: Vec<String>,
    expect: &[&str],
) {
    cases.push(Case {
        category,
        name,
        args,
        env: Vec::new(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
        limit: Limit::None,
    });
}

fn corpus(b: &Base) -> Vec<Case> {
    let mut cases = Vec::new();
    let good = shard_bytes(&tokens(40_000));
    let with_shard = |name: &str, bytes: &[u8]| {
        let path = b.file(name, bytes);
        (path.clone(), format!("data.train={path}"))
    };
    // Shards.
    let shard_cases: Vec<(&'static str, &'static str, Vec<u8>, &'static str)> = vec![
        (
            "truncated inside the header",
            "s_trunc_header.bin",
            good[..100].to_vec(),
            "truncated header",
        ),
        (
            "wrong magic number",
            "s_magic.bin",
            {
                let mut x = good.clone();
                x[0] = 7;
                x
            },
            "wrong magic number",
        ),
        (
            "wrong version",
            "s_version.bin",
            {
                let mut x = good.clone();
                x[4] = 9;
                x
            },
            "unsupported version 9",
        ),
        (
            "header count > file length",
            "s_short.bin",
            good[..good.len() - 200].to_vec(),
            "header says 40000 tokens",
        ),
        (
            "header count < file length",
            "s_long.bin",
            {
                let mut x = good.clone();
                x.extend([0u8; 64]);
                x
            },
            "header says 40000 tokens",
        ),
        (
            "odd byte length",
            "s_odd.bin",
            {
                let mut x = good.clone();
                x.push(1);
                x
            },
            "odd token payload",
        ),
        (
            "token id ≥ vocabulary",
            "s_vocab.bin",
            shard_bytes(&[5u16, 600, 7].repeat(2000)),
            "outside the vocabulary of 512",
        ),
        (
            "fewer tokens than one batch",
            "s_tiny.bin",
            shard_bytes(&tokens(100)),
            "fewer than",
        ),
        (
            "zero tokens",
            "s_empty.bin",
            shard_bytes::<u16>(&[]),
            "fewer than",
        ),
    ];
    for (name, file, bytes, problem) in shard_cases {
        let (path, set) = with_shard(file, &bytes);
        let args = b.train_args(&format!("out_{file}"), &[&set]);
        add(&mut cases, "shard", name, args, &[&path, problem]);
    }
    // A corrupt token deep in a large second shard: found when the loader first opens it (after
    // 3 steps on the first), not by a scan of every shard before the first step.
    b.file("deep_000.bin", &shard_bytes(&tokens(1000)));
    let mut deep = tokens(4_000_000);
    deep[3_999_000] = 60000;
    let deep_path = b.file("deep_001.bin", &shard_bytes(&deep));
    let pattern = format!("data.train={}", b.dir.join("deep_*.bin").display());
    add(
        &mut cases,
        "shard",
        "token id ≥ vocabulary deep in a large second shard",
        b.train_args(
            "out_deep",
            &[
                &pattern,
                "train.steps=50",
                "output.checkpoint_every=0",
                "eval.every=0",
            ],
        ),
        &[&deep_path, "token id 60000 at position 3999000"],
    );
    let val = b.file("v_magic.bin", &{
        let mut x = good.clone();
        x[1] = 1;
        x
    });
    add(
        &mut cases,
        "shard",
        "validation shard with wrong magic",
        b.train_args("out_val", &[&format!("data.val={val}")]),
        &[&val, "wrong magic number"],
    );
    let missing = b.dir.join("missing_000.bin").display().to_string();
    add(
        &mut cases,
        "shard",
        "missing shard file",
        b.train_args("out_missing", &[&format!("data.train={missing}")]),
        &[&missing],
    );
    let pattern = b.dir.join("nothing_*.bin").display().to_string();
    add(
        &mut cases,
        "shard",
        "empty shard set (pattern matches nothing)",
        b.train_args("out_pattern", &[&format!("data.train={pattern}")]),
        &["nothing_*.bin"],
    );

    // Configuration.
    let config_cases: [(&str, &str, &str); 16] = [
        ("unknown key", "train.stepz=3", "stepz"),
        ("wrong type", "train.steps=ten", "steps"),
        ("negative rate", "optim.matrix_lr=-0.1", "optim.matrix_lr"),
        ("zero rate", "optim.head_lr=0", "optim.head_lr"),
        ("zero steps", "train.steps=0", "train.steps"),
        (
            "zero accumulation steps",
            "train.grad_accum_steps=0",
            "train.grad_accum_steps",
        ),
        (
            "sequence longer than the model's",
            "train.seq_len=65",
            "train.seq_len",
        ),
        (
            "batch not divisible by ranks × accumulation",
            "train.grad_accum_steps=3",
            "train.batch_size",
        ),
        (
            "unknown precision",
            "train.precision=fp8",
            "train.precision",
        ),
        ("unknown model size", "model.size=huge", "model.size"),
        (
            "unknown log format",
            "output.log_format=xml",
            "output.log_format",
        ),
        (
            "warmdown longer than the run",
            "train.warmdown_steps=99",
            "train.warmdown_steps",
        ),
        ("Adam β₂ of 1", "optim.adam_beta2=1.0", "optim.adam_beta2"),
        (
            "unknown non-finite policy",
            "train.on_non_finite=ignore",
            "train.on_non_finite",
        ),
        ("ranks without mpirun", "train.ranks=2", "train.ranks"),
        ("override without =", "train.steps", "section.key=value"),
    ];
    for (name, set, key) in config_cases {
        add(
            &mut cases,
            "config",
            name,
            b.train_args("out_config", &[set]),
            &[key],
        );
    }
    let missing_config = b.dir.join("absent.toml").display().to_string();
    let mut args = b.train_args("out_config", &[]);
    args[2] = missing_config.clone();
    add(
        &mut cases,
        "config",
        "missing config file",
        args,
        &[&missing_config, "not found"],
    );
    let broken = b.file("broken.toml", b"[train\nsteps = 3\n");
    let mut args = b.train_args("out_config", &[]);
    args[2] = broken.clone();
    add(&mut cases, "config", "malformed TOML", args, &[&broken]);
    let mut case = Case {
        category: "config",
        name: "environment override of the wrong type",
        args: b.train_args("out_config", &[]),
        env: vec![("BRAINFLOAT__TRAIN__SEQ_LEN", "abc")],
        expect: vec!["seq_len".into()],
        limit: Limit::None,
    };
    cases.push(case);

    // Checkpoints and weights.
    let init = |file: &str, out: &str| {
        let mut args = b.train_args(out, &[]);
        args.extend(["--init".into(), file.into()]);
        args
    };
    let resume = |record: &str, out: &str| {
        let mut args = b.train_args(out, &[]);
        args.extend(["--resume".into(), record.into()]);
        args
    };
    let no_head = b.edited_weights("w_missing.safetensors", |l| {
        l.retain(|t| t.0 != "lm_head.weight")
    });
    add(
        &mut cases,
        "checkpoint",
        "weights with a missing tensor",
        init(&no_head, "out_w1"),
        &["lm_head.weight"],
    );
    let shape = b.edited_weights("w_shape.safetensors", |l| {
        let t = l.iter_mut().find(|t| t.0 == "lm_head.weight").unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    add(
        &mut cases,
        "checkpoint",
        "weights with a wrong shape",
        init(&shape, "out_w2"),
        &["lm_head.weight", "shape"],
    );
    let dtype = b.edited_weights("w_dtype.safetensors", |l| {
        let t = l.iter_mut().find(|t| t.0 == "lm_head.weight").unwrap();
        t.1 = Dtype::I32;
    });
    add(
        &mut cases,
        "checkpoint",
        "weights with a wrong dtype",
        init(&dtype, "out_w3"),
        &["lm_head.weight", "I32"],
    );
    let bytes = std::fs::read(data_file(&b.good, "model")).unwrap();
    let truncated = b.file("w_truncated.safetensors", &bytes[..bytes.len() / 2]);
    add(
        &mut cases,
        "checkpoint",
        "truncated weights file",
        init(&truncated, "out_w4"),
        &[&truncated],
    );
    let not_safetensors = b.file("w_text.safetensors", b"hello");
    add(
        &mut cases,
        "checkpoint",
        "weights file that is not safetensors",
        init(&not_safetensors, "out_w5"),
        &[&not_safetensors],
    );
    let flipped = b.damaged_checkpoint("c_flip", |dir| {
        let path = data_file(&dir.join("step_000002.json"), "model");
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    });
    add(
        &mut cases,
        "checkpoint",
        "bit-flipped model file (checksum)",
        resume(&flipped, "out_c1"),
        &["step_000002.", ".model.safetensors", "SHA-256"],
    );
    let cut = b.damaged_checkpoint("c_cut", |dir| {
        let path = data_file(&dir.join("step_000002.json"), "optim");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() - 100]).unwrap();
    });
    add(
        &mut cases,
        "checkpoint",
        "truncated optimizer file (length against its header)",
        resume(&cut, "out_c2"),
        &["step_000002.", ".optim.safetensors", "header declares"],
    );
    let gone = b.damaged_checkpoint("c_gone", |dir| {
        std::fs::remove_file(data_file(&dir.join("step_000002.json"), "model")).unwrap();
    });
    add(
        &mut cases,
        "checkpoint",
        "record whose model file is missing",
        resume(&gone, "out_c3"),
        &["step_000002.", ".model.safetensors"],
    );
    let garbled = b.damaged_checkpoint("c_json", |dir| {
        std::fs::write(dir.join("step_000002.json"), b"{ not json").unwrap();
    });
    add(
        &mut cases,
        "checkpoint",
        "record that is not JSON",
        resume(&garbled, "out_c4"),
        &["step_000002.json", "not a checkpoint record"],
    );
    let small = b.small.display().to_string();
    add(
        &mut cases,
        "checkpoint",
        "checkpoint of another model size",
        resume(&small, "out_c5"),
        &["step_000001"],
    );
    let empty = b.dir.join("no_checkpoints");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.display().to_string();
    add(
        &mut cases,
        "checkpoint",
        "resume from a folder without checkpoints",
        resume(&empty, "out_c6"),
        &["no checkpoint to resume from"],
    );
    checkpoint_trust_cases(b, &mut cases, &resume);
    memory_limit_cases(b, &mut cases);
    let absent = b.dir.join("absent.json").display().to_string();
    let eval = b.eval_args(&absent);
    add(
        &mut cases,
        "checkpoint",
        "eval of a missing checkpoint",
        eval,
        &[&absent],
    );

    // Output folder.
    let blocker = b.file("blocker", b"a file, not a folder");
    add(
        &mut cases,
        "output",
        "output folder under a regular file",
        b.train_args("blocker/run", &[]),
        &[&format!("{blocker}/run"), "cannot create"],
    );
    case = Case {
        category: "output",
        name: "no room for a checkpoint (16 KiB file-size limit)",
        args: b.train_args("out_full", &[]),
        env: Vec::new(),
        expect: vec![
            "out_full".into(),
            "the file-size limit (ulimit -f) is 16.0 KiB".into(),
        ],
        limit: Limit::FullDisk,
    };
    cases.push(case);
    cases
}

/// A model larger than the limits the process is under: a Hugging Face folder asking for
/// 100,000 layers of width 64 (5.0 billion parameters, 18.6 GiB as fp32: less than many
/// machines have) under an address-space limit and, where a memory cgroup can be made, under a
/// cgroup's limit; and two mends seen on the way (an export onto a file, a record whose config
/// is not its weights file's model).
fn memory_limit_cases(b: &Base, cases: &mut Vec<Case>) {
    let folder = b.dir.join("hf_deep");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("config.json"),
        r#"{"model_type": "gpt2", "vocab_size": 512, "n_positions": 64, "n_embd": 64,
            "n_layer": 100000, "n_head": 2}"#,
    )
    .unwrap();
    // The base config, so that no default corpus is fetched into the test's folder.
    let eval = b.eval_args(&format!("hf:{}", folder.display()));
    cases.push(Case {
        category: "memory",
        name: "eval of a 100,000-layer Hugging Face folder under `ulimit -v` 12 GB",
        args: eval.clone(),
        env: Vec::new(),
        expect: [
            "needs about",
            "for loading its weights",
            "RLIMIT_AS",
            "nothing was allocated",
        ]
        .map(String::from)
        .to_vec(),
        limit: Limit::AddressSpace(12_000_000_000),
    });
    match memory_cgroup(8 << 30) {
        Ok((version, dir)) => cases.push(Case {
            category: "memory",
            name: "eval of a 100,000-layer Hugging Face folder in a cgroup limited to 8 GiB",
            args: eval,
            env: Vec::new(),
            expect: vec![
                "needs about".into(),
                version.limit_file().into(),
                dir.display().to_string(),
            ],
            limit: Limit::Cgroup(dir),
        }),
        Err(why) => eprintln!("skipped the cgroup case: {why}"),
    }
    // A weights file of 16 GiB (sparse: it takes no disk), read under a 7 GB address-space
    // limit: its buffer is refused as an error naming the file, not an abort.
    let header = br#"{"x":{"dtype":"F32","shape":[4294967296],"data_offsets":[0,17179869184]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    // In an `out_` folder: the snapshots that check for modified files do not read it.
    std::fs::create_dir_all(b.dir.join("out_huge")).unwrap();
    let huge = b.file("out_huge/huge.safetensors", &bytes);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(bytes.len() as u64 + (16 << 30))
        .unwrap();
    cases.push(Case {
        category: "memory",
        name: "eval of a 16 GiB weights file under `ulimit -v` 7 GB",
        args: b.eval_args(&huge),
        env: Vec::new(),
        expect: vec![huge, "16.0 GiB does not fit in the memory left".into()],
        limit: Limit::AddressSpace(7_000_000_000),
    });
    let file = b.file("export_onto.txt", b"a file, not a folder");
    add(
        cases,
        "output",
        "export --hf onto an existing file",
        vec![
            "export".into(),
            "--checkpoint".into(),
            b.good.display().to_string(),
            "--hf".into(),
            file.clone(),
        ],
        &["export destination", &file, "is not a folder"],
    );
    let record = b.edited_record("t_softcap", |json, _| {
        json["config"]["model"]["logit_softcap"] = 15.0.into();
    });
    let eval = b.eval_args(&record);
    add(
        cases,
        "checkpoint",
        "a record whose config is not the model its weights file carries",
        eval,
        &[
            &record,
            "is not the model its weights file",
            "not one checkpoint",
        ],
    );
}

/// A memory cgroup limited to `bytes` below this process's own (`main` removes it once its
/// cases ran), or why not, where this process may not make one.
fn memory_cgroup(bytes: u64) -> Result<(brainfloat_memory::CgroupVersion, PathBuf), String> {
    let (version, own) = brainfloat_memory::own_memory_cgroups()
        .into_iter()
        .next()
        .ok_or("this process is in no memory cgroup that /proc/self/cgroup names")?;
    let dir = own.join(format!("brainfloat-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|err| format!("cannot make a cgroup in {}: {err}", own.display()))?;
    std::fs::write(dir.join(version.limit_file()), bytes.to_string()).map_err(|err| {
        let _ = std::fs::remove_dir(&dir);
        format!("cannot limit the cgroup {}: {err}", dir.display())
    })?;
    Ok((version, dir))
}

/// Checkpoints and weights that pass their checksums but must not be trusted: files outside the
/// record's folder, sizes that disagree with headers, shapes no machine holds, optimizer state
/// that does not fit the model, weights that are not numbers; and a fresh run into another
/// run's folder.
fn checkpoint_trust_cases(
    b: &Base,
    cases: &mut Vec<Case>,
    resume: &dyn Fn(&str, &str) -> Vec<String>,
) {
    let confined = [
        (
            "record naming an absolute path (/dev/zero)",
            "t_abs",
            "/dev/zero".to_string(),
        ),
        (
            "record naming a file outside its folder (..)",
            "t_dotdot",
            {
                let good = data_file(&b.good, "model");
                format!("../good/{}", good.file_name().unwrap().to_string_lossy())
            },
        ),
    ];
    for (name, folder, file) in confined {
        let record = b.edited_record(folder, |json, _| {
            json["model"]["file"] = file.clone().into()
        });
        add(
            cases,
            "checkpoint",
            name,
            resume(&record, &format!("out_{folder}")),
            &[&file, "not a file beside it"],
        );
    }
    let record = b.edited_record("t_link", |json, dir| {
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.safetensors")).unwrap();
        json["model"]["file"] = "zero.safetensors".into();
    });
    add(
        cases,
        "checkpoint",
        "record naming a symbolic link to a device",
        resume(&record, "out_t_link"),
        &["zero.safetensors", "not a regular file"],
    );
    let record = b.damaged_checkpoint("t_padded", |dir| {
        let path = data_file(&dir.join("step_000002.json"), "model");
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut file, &[0u8; 4096]).unwrap();
    });
    add(
        cases,
        "checkpoint",
        "model file longer than its header declares",
        resume(&record, "out_t_padded"),
        &[".model.safetensors", "header declares"],
    );
    add(
        cases,
        "checkpoint",
        "resume from a device (/dev/zero) as the record",
        resume("/dev/zero", "out_t_dev"),
        &["/dev/zero", "not a regular file"],
    );
    let huge = b.file("t_huge.json", &vec![b' '; 17 << 20]);
    add(
        cases,
        "checkpoint",
        "record of 17 MiB",
        resume(&huge, "out_t_huge"),
        &[&huge, "not a checkpoint record"],
    );
    let eval_dev = b.eval_args("/dev/zero");
    add(
        cases,
        "checkpoint",
        "eval of a device (/dev/zero) as weights",
        eval_dev,
        &["/dev/zero", "not a regular file"],
    );
    // A 1 KB record whose shape needs 100 TB: refused with the numbers, nothing allocated.
    let record = b.edited_record("t_wide", |json, _| {
        json["config"]["model"]["d_model"] = 1_048_576.into();
    });
    let eval = b.eval_args(&record);
    add(
        cases,
        "checkpoint",
        "eval of a record asking for d_model = 1048576",
        eval,
        &[
            &record,
            "needs about",
            "for loading its weights",
            "left under",
        ],
    );
    add(
        cases,
        "config",
        "training a model no machine holds (d_model = 1048576)",
        b.train_args("out_t_wide", &["model.d_model=1048576"]),
        &[
            "needs about",
            "for training",
            "optimizer state",
            "left under",
        ],
    );
    // Optimizer state that passes its checksum but does not fit the model.
    let head = "lm_head.weight";
    /// Name, folder, the state's edit, the record's edit, what the error must say.
    type OptimCase<'a> = (
        &'a str,
        &'a str,
        Box<dyn Fn(&mut Vec<TensorEntry>)>,
        Box<dyn Fn(&mut serde_json::Value)>,
        &'a str,
    );
    let optim_cases: Vec<OptimCase> = vec![
        (
            "optimizer state of the wrong length",
            "t_o_len",
            Box::new(move |l: &mut Vec<TensorEntry>| {
                let t = l
                    .iter_mut()
                    .find(|t| t.0 == format!("{head}.exp_avg"))
                    .unwrap();
                t.3.truncate(t.3.len() - 4 * 8);
                t.2 = vec![t.3.len() / 4];
            }),
            Box::new(|_: &mut serde_json::Value| {}),
            "lm_head.weight.exp_avg holds",
        ),
        (
            "optimizer state missing a tensor",
            "t_o_missing",
            Box::new(move |l: &mut Vec<TensorEntry>| {
                l.retain(|t| t.0 != format!("{head}.exp_avg_sq"));
            }),
            Box::new(|_: &mut serde_json::Value| {}),
            "missing lm_head.weight.exp_avg_sq",
        ),
        (
            "optimizer state of a parameter the model lacks",
            "t_o_extra",
            Box::new(|l: &mut Vec<TensorEntry>| {
                let mut extra = l[0].clone();
                extra.0 = "transformer.h.9.attn.c_q.weight.momentum_buffer".into();
                l.push(extra);
            }),
            Box::new(|_: &mut serde_json::Value| {}),
            "belongs to no parameter",
        ),
        (
            "optimizer state of rank 2",
            "t_o_rank",
            Box::new(move |l: &mut Vec<TensorEntry>| {
                let t = l
                    .iter_mut()
                    .find(|t| t.0 == format!("{head}.exp_avg"))
                    .unwrap();
                t.2 = vec![2, t.2[0] / 2];
            }),
            Box::new(|_: &mut serde_json::Value| {}),
            "optimizer state tensors are flat",
        ),
        (
            "Adam step count 0",
            "t_o_steps",
            Box::new(|_: &mut Vec<TensorEntry>| {}),
            Box::new(move |json: &mut serde_json::Value| {
                json["adam_steps"][head] = 0.into();
            }),
            "Adam step count 0 for lm_head.weight",
        ),
    ];
    for (name, folder, edit, record_edit, expect) in optim_cases {
        let record = b.consistent_checkpoint(folder, "optim", edit, record_edit);
        add(
            cases,
            "checkpoint",
            name,
            resume(&record, &format!("out_{folder}")),
            &[".optim.safetensors", expect],
        );
    }
    // Weights that are not numbers, through --init and through a checkpoint.
    let nan = |l: &mut Vec<TensorEntry>| {
        for t in l.iter_mut() {
            if t.1 == Dtype::F32 {
                t.3 = f32::NAN.to_le_bytes().repeat(t.3.len() / 4);
            }
        }
    };
    let weights = b.edited_weights("w_nan.safetensors", nan);
    // Under `skip` such weights would skip every step and exit 0: they are refused at the start.
    let mut args = b.train_args("out_w_nan", &["train.on_non_finite=skip"]);
    args.extend(["--init".into(), weights.clone()]);
    add(
        cases,
        "checkpoint",
        "weights that are all NaN (--init, train.on_non_finite = skip)",
        args,
        &[&weights, "holds NaN at element 0"],
    );
    let record = b.consistent_checkpoint("t_nan", "model", nan, |_| {});
    add(
        cases,
        "checkpoint",
        "checkpoint whose weights are all NaN (checksum right)",
        resume(&record, "out_t_nan"),
        &[".model.safetensors", "holds NaN"],
    );
    // More records that lie about their files, their format or their optimizer state.
    let record = b.edited_record("t_dir", |json, dir| {
        std::fs::create_dir(dir.join("sub.safetensors")).unwrap();
        json["model"]["file"] = "sub.safetensors".into();
    });
    add(
        cases,
        "checkpoint",
        "record naming a folder as its model file",
        resume(&record, "out_t_dir"),
        &["sub.safetensors", "not a regular file"],
    );
    let record = b.edited_record("t_format", |json, _| json["format"] = 99.into());
    add(
        cases,
        "checkpoint",
        "record of a newer format (99)",
        resume(&record, "out_t_format"),
        &[&record, "checkpoint format 99"],
    );
    let record = b.edited_record("t_steps_gone", |json, _| {
        json["adam_steps"]
            .as_object_mut()
            .unwrap()
            .remove("lm_head.weight");
    });
    add(
        cases,
        "checkpoint",
        "record without Adam's step count of a parameter",
        resume(&record, "out_t_steps_gone"),
        &[
            ".optim.safetensors",
            "no Adam step count for lm_head.weight",
        ],
    );
    let record = b.edited_record("t_steps_ahead", |json, _| {
        json["adam_steps"]["lm_head.weight"] = 99.into()
    });
    add(
        cases,
        "checkpoint",
        "Adam step count beyond the record's step (99 after 2)",
        resume(&record, "out_t_steps_ahead"),
        &[
            ".optim.safetensors",
            "Adam step count 99 for lm_head.weight after 2 optimizer steps",
        ],
    );
    // Shards that are not files: read until memory runs out, were they read.
    for (name, folder, shard) in [
        (
            "training shard that is a device (/dev/zero)",
            "out_s_dev",
            "/dev/zero".to_string(),
        ),
        (
            "training shard that is a folder",
            "out_s_dir",
            b.dir.join("t_dir").display().to_string(),
        ),
    ] {
        let set = format!("data.train={shard}");
        add(
            cases,
            "shard",
            name,
            b.train_args(folder, &[&set]),
            &[&shard, "not a regular file"],
        );
    }
    // Evaluation and generation check what they load as training does.
    let weights = b.dir.join("w_nan.safetensors").display().to_string();
    let eval_nan = b.eval_args(&weights);
    add(
        cases,
        "checkpoint",
        "eval of weights that are all NaN",
        eval_nan,
        &[&weights, "holds NaN at element 0"],
    );
    let wide = b.dir.join("t_wide/step_000002.json").display().to_string();
    let mut generate = vec![
        "generate".to_string(),
        "--config".into(),
        b.config.display().to_string(),
    ];
    generate.extend([
        "--checkpoint".into(),
        wide.clone(),
        "--prompt".into(),
        "The".into(),
    ]);
    add(
        cases,
        "checkpoint",
        "generate from a record asking for d_model = 1048576",
        generate,
        &[&wide, "needs about"],
    );
    // A fresh run into a folder holding another run's checkpoints (its snapshot proves it is
    // left as it was).
    let other = b.damaged_checkpoint("other_run", |_| {});
    let folder = Path::new(&other)
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    add(
        cases,
        "output",
        "fresh run into a folder holding another run's checkpoints",
        b.train_args(&folder, &[]),
        &[
            "holds the checkpoints of another run",
            "--resume",
            "--overwrite",
        ],
    );
}

/// Every file under `dir` except the cases' output folders: size and a content hash.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !name.starts_with("out_") && name != "trials" {
                    stack.push(path);
                }
            } else if kind.is_symlink() {
                // The link itself, not what it points at (a device, for one case).
                let target = std::fs::read_link(&path).unwrap_or_default();
                let bytes = target.as_os_str().as_encoded_bytes();
                out.insert(path, (bytes.len() as u64, bytes.len() as u64));
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                    (h ^ b as u64).wrapping_mul(0x100000001b3)
                });
                out.insert(path, (bytes.len() as u64, hash));
            }
        }
    }
    out
}

/// What happened to one case.
struct Verdict {
    clear: bool,
    panicked: bool,
    modified: bool,
    first_line: String,
}

/// The names of the checkpoint files (`step_*`) in the output folder that `args` name.
fn checkpoint_files(base: &Base, args: &[String]) -> std::collections::BTreeSet<String> {
    let dir = base.dir.join(
        args.iter()
            .find_map(|a| a.strip_prefix("output.dir="))
            .map_or("none", |d| d),
    );
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("step_"))
                .collect()
        })
        .unwrap_or_default()
}

fn check(base: &Base, case: &Case) -> Verdict {
    let before = snapshot(&base.dir);
    let checkpoints_before = checkpoint_files(base, &case.args);
    let mut command = Command::new(BIN);
    command
        .args(&case.args)
        .envs(case.env.iter().copied())
        .env_remove("RUST_BACKTRACE");
    match &case.limit {
        Limit::None => {}
        // SAFETY (each arm): only async-signal-safe calls between fork and exec.
        Limit::FullDisk => unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 16 << 10,
                    rlim_max: 16 << 10,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
                Ok(())
            });
        },
        Limit::AddressSpace(bytes) => unsafe {
            let bytes = *bytes;
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                libc::setrlimit(libc::RLIMIT_AS, &limit);
                Ok(())
            });
        },
        Limit::Cgroup(dir) => unsafe {
            // The path is made before the fork: `open` and `write` are all the child calls.
            let procs = std::ffi::CString::new(
                dir.join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .unwrap();
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        },
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let error_line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
        .to_string();
    let panicked = stderr.contains("panicked") || stderr.contains("stack backtrace");
    let exited_with_error = output.status.code().is_some_and(|c| c != 0);
    let names_it = case.expect.iter().all(|e| error_line.contains(e.as_str()));
    let after = snapshot(&base.dir);
    let wrote_checkpoint = checkpoint_files(base, &case.args) != checkpoints_before;
    Verdict {
        clear: exited_with_error && names_it && !panicked,
        panicked,
        modified: before != after || wrote_checkpoint,
        first_line: if error_line.is_empty() {
            stderr.lines().last().unwrap_or("").to_string()
        } else {
            error_line
        },
    }
}

/// Losses by step from a metrics file, the last line of each step winning (a resumed run
/// repeats the steps after its checkpoint).
fn curve(metrics: &Path) -> BTreeMap<u64, f64> {
    let lines = MetricsLine::read_all(metrics).unwrap_or_default();
    lines
        .into_iter()
        .filter_map(|line| Some((line.step as u64, line.loss?)))
        .collect()
}

/// One kill/resume trial's outcome.
struct Trial {
    /// Signals sent (each one ended a run).
    kills: usize,
    /// SIGKILLs that left a new temporary file: they landed during a checkpoint write.
    kills_mid_checkpoint: usize,
    /// SIGTERMs answered with status 143 and a checkpoint of the step the run stopped at.
    checkpointed_stops: usize,
    partial_loaded: usize,
    reproduced: bool,
}

/// How a trial stops its runs.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL: nothing is saved; the run resumes from its last periodic checkpoint.
    Kill,
    /// SIGTERM: the run finishes its step, checkpoints and exits with 143.
    Term,
}

/// The trials' run: 40 steps, without evaluation; with SIGKILL a checkpoint every step, with
/// SIGTERM none but the one the signal asks for (and the last).
fn trial_sets(stop: Stop) -> Vec<&'static str> {
    let every = match stop {
        Stop::Kill => "output.checkpoint_every=1",
        Stop::Term => "output.checkpoint_every=0",
    };
    vec![
        "train.steps=40",
        "train.warmdown_steps=10",
        every,
        "eval.every=0",
    ]
}

/// Every `.tmp-` file in `dir`.
fn temporaries(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The newest checkpoint record's step in `dir`, 0 without one.
fn newest_checkpoint(dir: &Path) -> usize {
    brainfloat_trainer::checkpoint_records(dir)
        .first()
        .map_or(0, |(step, _)| *step)
}

/// A pseudo-random delay of 40–300 ms after `startup` (a linear congruential generator).
fn random_delay(seed: &mut u64, startup: Duration) -> Duration {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    startup + Duration::from_millis(40 + (*seed >> 33) % 260)
}

/// Runs the trial config, stopping each run with `stop` after `startup` plus a pseudo-random
/// delay and resuming, until a run finishes by itself; its curve is compared with `reference`.
fn trial(
    base: &Base,
    name: &str,
    stop: Stop,
    seed: &mut u64,
    startup: Duration,
    reference: &BTreeMap<u64, f64>,
) -> Trial {
    let out = format!("trials/{name}");
    let dir = base.dir.join(&out);
    let args = base.train_args(&out, &trial_sets(stop));
    let mut t = Trial {
        kills: 0,
        kills_mid_checkpoint: 0,
        checkpointed_stops: 0,
        partial_loaded: 0,
        reproduced: false,
    };
    for _ in 0..200 {
        let leftovers = temporaries(&dir);
        let mut command = Command::new(BIN);
        command
            .args(&args)
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if newest_checkpoint(&dir) > 0 {
            command.arg("--resume");
        }
        let metrics = dir.join("metrics.jsonl");
        let lines = std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count());
        let mut child = command.spawn().unwrap();
        // SIGKILL anywhere after start-up (checkpoint writes included); SIGTERM once the run
        // trains (a new metrics line), since before `main` its default action just kills.
        let delay = match stop {
            Stop::Kill => random_delay(seed, startup),
            Stop::Term => {
                lifecycle::wait_for_steps(&metrics, lines + 1);
                random_delay(seed, Duration::ZERO)
            }
        };
        let started = Instant::now();
        while started.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            if stop == Stop::Kill {
                t.kills += 1;
                child.kill().unwrap();
                child.wait().unwrap();
                // A new temporary file: the kill landed while a checkpoint file was written.
                let partial = temporaries(&dir).difference(&leftovers).count() > 0;
                t.kills_mid_checkpoint += usize::from(partial);
                continue;
            }
            // SAFETY: sends a signal to our own child, which has not been waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let output = child.wait_with_output().unwrap();
            if output.status.success() {
                // It was past its last step (final evaluation and checkpoint): it completed.
                break;
            }
            t.kills += 1;
            let stepped = curve(&dir.join("metrics.jsonl")).keys().max().copied();
            // Stopped during start-up (before the handler): killed by the signal, nothing saved.
            let checkpointed = output.status.code() == Some(143)
                && stepped.is_some_and(|step| newest_checkpoint(&dir) == step as usize);
            t.checkpointed_stops += usize::from(checkpointed);
            continue;
        }
        let output = child.wait_with_output().unwrap();
        if !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("checkpoint")
        {
            t.partial_loaded += 1;
        }
        break;
    }
    t.reproduced = &curve(&dir.join("metrics.jsonl")) == reference;
    t
}

/// Ctrl-C and injected non-finite values through the binary: (check, passed, what it printed).
fn signal_and_non_finite_checks(base: &Base) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let last_line = |output: &Output| {
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .rfind(|l| {
                l.starts_with("error:") || l.starts_with("warning:") || l.starts_with("stopped")
            })
            .unwrap_or("")
            .to_string()
    };
    // SIGINT: the current step ends, a checkpoint is written, exit status 130; then resume.
    let child = lifecycle::spawn_long_run(base, "out_sigint", &[], 3);
    let metrics = base.dir.join("out_sigint/metrics.jsonl");
    // SAFETY: sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let steps = curve(&metrics).keys().max().copied().unwrap_or(0);
    let record = base.dir.join(format!("out_sigint/step_{steps:06}.json"));
    out.push((
        "Ctrl-C (SIGINT) stops after the step with a checkpoint, status 130".to_string(),
        output.status.code() == Some(130) && record.is_file(),
        last_line(&output),
    ));
    // A second SIGTERM does not wait for the step or a checkpoint. Sent as soon as the run says
    // it got the first (two signals sent together would merge into one); steps of 256
    // sequences (~100 ms) leave the first no time to finish its step and checkpoint meanwhile.
    let mut child =
        lifecycle::spawn_long_run(base, "out_sigterm_twice", &["train.batch_size=256"], 2);
    let dir = base.dir.join("out_sigterm_twice");
    let pid = child.id() as i32;
    // SAFETY: signals our own child, not yet waited for.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let said = std::io::BufRead::lines(stderr)
        .map_while(Result::ok)
        .any(|line| line.contains("stopping after this step"));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    out.push((
        "a second SIGTERM exits at once: status 143, no checkpoint written".to_string(),
        said && status.code() == Some(143) && newest_checkpoint(&dir) == 0,
        format!(
            "status {:?}, newest checkpoint step {}",
            status.code(),
            newest_checkpoint(&dir)
        ),
    ));
    // Non-finite: stop (default) and skip.
    let args = base.train_args("out_nan_stop", &[]);
    let output = run(&args, &[("BRAINFLOAT_INJECT_NON_FINITE", "loss@3")]);
    let line = last_line(&output);
    out.push((
        "NaN loss at step 3, policy stop".into(),
        !output.status.success()
            && line.contains("training loss is NaN at step 3")
            && !line.contains("step_000003"),
        line,
    ));
    let args = base.train_args("out_nan_grad", &[]);
    let output = run(&args, &[("BRAINFLOAT_INJECT_NON_FINITE", "grad@4")]);
    let line = last_line(&output);
    out.push((
        "NaN gradients at step 4, policy stop (last good checkpoint named)".into(),
        !output.status.success()
            && line.contains("gradient norm is NaN at step 4")
            && line.contains("step_000003.json"),
        line,
    ));
    let args = base.train_args("out_nan_skip", &["train.on_non_finite=skip"]);
    let output = run(&args, &[("BRAINFLOAT_INJECT_NON_FINITE", "loss@2,grad@4")]);
    let line = last_line(&output);
    out.push((
        "NaN loss at 2 and gradients at 4, policy skip: run completes, 2 skipped".into(),
        output.status.success() && line.contains("2 step(s) skipped"),
        line,
    ));
    out
}

/// `text` for a Markdown table cell: the temporary folder shown as `…`, pipes escaped.
fn for_table(base: &Base, text: &str) -> String {
    text.replace(base.dir.to_str().unwrap(), "…")
        .replace('|', "\\|")
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "**NO**" }
}

/// The memory check's estimate against the peaks the benchmark measured, as committed in
/// `docs/results/memory_estimate.md` (its command is there): the figures behind the cases of
/// the category `memory`.
fn estimate_section() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/results/memory_estimate.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    // The command, then the estimate's table (the comparison's other tables are about time).
    let command = text
        .lines()
        .find(|l| l.starts_with("Command:"))
        .unwrap_or("");
    let table: String = text
        .lines()
        .skip_while(|l| !l.starts_with("| backend | model | parameters |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    let table = if table.is_empty() {
        "(not measured yet)\n".to_string()
    } else {
        format!("{command}\n\n{table}")
    };
    format!(
        "\n## Memory: the estimate the check holds against the limits\n\n\
         Every command that allocates a model (train, `--init`, eval, generate, export, bench, \
         study, validate) first estimates its peak from the config and holds it against the tightest limit on the \
         process: `MemAvailable`, the address-space limit (`RLIMIT_AS`) less what is mapped, and \
         each memory cgroup's limit less its use (v2 `memory.max`, v1 \
         `memory.limit_in_bytes`); on a GPU, the device's free memory. The refusal names the \
         estimate, its parts, the limit and its source. An allocation that fails anyway ends \
         with an `error: out of memory` line and status 1, not an abort. The estimate against \
         the peak heap measured on flex (`docs/results/memory_estimate.md`):\n\n{table}"
    )
}

fn main() -> ExitCode {
    let root = tempfile::tempdir().unwrap();
    let base = Base::new(root.path());
    let cases = corpus(&base);
    let mut report = String::from(
        "# Reliability: bad inputs, crashes, non-finite values\n\n\
         Produced by `cargo xtask reliability` (the fault suite `tests/faults/main.rs`, which CI \
         runs with the other tests) on the golden-sized model (vocabulary 512, 2 layers × 64).\n\n\
         ## Bad inputs\n\n\
         Each input runs the `brainfloat` binary. *Clear* means: a non-zero exit, an `error:` line \
         that names the file or key and the problem, and no panic backtrace. *Modified* means \
         any file changed or a checkpoint was written.\n\n\
         | # | kind | input | clear | panic | modified | the error |\n|---:|---|---|---|---|---|---|\n",
    );
    let (mut clear, mut panics, mut modified) = (0, 0, 0);
    for (i, case) in cases.iter().enumerate() {
        let v = check(&base, case);
        clear += usize::from(v.clear);
        panics += usize::from(v.panicked);
        modified += usize::from(v.modified);
        let shown = for_table(&base, &v.first_line);
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | `{}` |",
            i + 1,
            case.category,
            case.name,
            yes_no(v.clear),
            if v.panicked { "**YES**" } else { "no" },
            if v.modified { "**YES**" } else { "no" },
            shown
        );
        if !v.clear || v.modified {
            eprintln!("FAILED: {} {}: {}", case.category, case.name, v.first_line);
        }
    }
    let _ = writeln!(
        report,
        "\n**{} inputs: {clear} clear errors, {panics} panics, {modified} modified files.**\n",
        cases.len()
    );
    for case in &cases {
        if let Limit::Cgroup(dir) = &case.limit {
            let _ = std::fs::remove_dir(dir);
        }
    }

    // Kill/resume and SIGTERM/resume trials against one uninterrupted run (checkpoints do not
    // change the curve).
    let reference_args = base.train_args("trials/reference", &trial_sets(Stop::Kill));
    assert!(run(&reference_args, &[]).status.success());
    let reference = curve(&base.dir.join("trials/reference/metrics.jsonl"));
    // What the binary takes before `main` (loading libtorch, on the tch backend): kills land
    // after it, so that they hit training and checkpoint writes rather than the loader.
    let startup = (0..3)
        .map(|_| {
            let started = Instant::now();
            assert!(run(&["--version".to_string()], &[]).status.success());
            started.elapsed()
        })
        .min()
        .unwrap();
    let mut seed = 0x5eed_u64;
    let kill_trials: Vec<Trial> = (0..6)
        .map(|i| {
            trial(
                &base,
                &format!("kill_{i}"),
                Stop::Kill,
                &mut seed,
                startup,
                &reference,
            )
        })
        .collect();
    let term_trials: Vec<Trial> = (0..4)
        .map(|i| {
            trial(
                &base,
                &format!("term_{i}"),
                Stop::Term,
                &mut seed,
                startup,
                &reference,
            )
        })
        .collect();
    let reproduced = kill_trials
        .iter()
        .chain(&term_trials)
        .filter(|t| t.reproduced)
        .count();
    let trials_run = kill_trials.len() + term_trials.len();
    let kills: usize = kill_trials.iter().map(|t| t.kills).sum();
    let mid: usize = kill_trials.iter().map(|t| t.kills_mid_checkpoint).sum();
    let partial: usize = kill_trials
        .iter()
        .chain(&term_trials)
        .map(|t| t.partial_loaded)
        .sum();
    let _ = write!(
        report,
        "## Crashes: SIGKILL at random moments, then `--resume`\n\n\
         A 40-step run with a checkpoint after every step is killed with SIGKILL after the \
         binary's start-up ({} ms, what `brainfloat --version` takes) plus a pseudo-random \
         40–300 ms, resumed with `--resume`, and killed again, until a run \
         finishes by itself; its loss curve (the last line per step of `metrics.jsonl`) is \
         compared with an uninterrupted run's, value for value.\n\n\
         | trial | kills | kills that left a half-written checkpoint file | partial checkpoints loaded | curve reproduced exactly |\n\
         |---:|---:|---:|---:|---|\n",
        startup.as_millis()
    );
    for (i, t) in kill_trials.iter().enumerate() {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            t.kills,
            t.kills_mid_checkpoint,
            t.partial_loaded,
            yes_no(t.reproduced)
        );
    }
    let _ = writeln!(
        report,
        "\n**{} trials, {kills} kills ({mid} during a checkpoint write): {} of {} reproduced the \
         uninterrupted curve; partial checkpoints loaded: {partial}.**\n\n\
         Checkpoint files are written to a temporary name, fsynced and renamed, the record \
         (`step_N.json`, with each file's SHA-256) last; a resume takes the newest record, so a \
         half-written file is never picked up, and a damaged one is refused by its checksum; the \
         temporaries a kill leaves are removed by the next run.\n",
        kill_trials.len(),
        kill_trials.iter().filter(|t| t.reproduced).count(),
        kill_trials.len()
    );
    let _ = write!(
        report,
        "## SIGTERM at random moments, then `--resume`\n\n\
         What SLURM, Kubernetes and systemd send before SIGKILL. The same 40-step run, with no \
         periodic checkpoint this time: every checkpoint it resumes from is one a SIGTERM asked \
         for. Sent a pseudo-random 40–300 ms after the run's first step (a SIGTERM before \
         `main`, while the binary loads, would meet the default action: death, no checkpoint); \
         the run must finish its step, write a checkpoint of it and exit with status 143.\n\n\
         | trial | SIGTERMs | answered with a checkpoint of the last step and status 143 | curve reproduced exactly |\n\
         |---:|---:|---:|---|\n"
    );
    for (i, t) in term_trials.iter().enumerate() {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} |",
            i + 1,
            t.kills,
            t.checkpointed_stops,
            yes_no(t.reproduced)
        );
    }
    let terms: usize = term_trials.iter().map(|t| t.kills).sum();
    let answered: usize = term_trials.iter().map(|t| t.checkpointed_stops).sum();
    let _ = writeln!(
        report,
        "\n**{} trials, {terms} SIGTERMs: {answered} answered with a checkpoint and status 143; {} \
         of {} reproduced the uninterrupted curve.**",
        term_trials.len(),
        term_trials.iter().filter(|t| t.reproduced).count(),
        term_trials.len()
    );
    // Cases outside the happy path.
    let mut outcomes = lifecycle::precision_resumes(&base);
    outcomes.extend(lifecycle::changed_keys(&base));
    outcomes.extend(lifecycle::two_trainers(&base));
    outcomes.extend(lifecycle::stale_temporaries(&base));
    #[cfg(feature = "mpi")]
    outcomes.push(lifecycle::changed_rank_count(&base));
    #[cfg(feature = "mpi")]
    outcomes.extend(lifecycle::mpirun_sigterm(&base, &mut seed));
    let _ = writeln!(
        report,
        "\n## Resumes, shared folders, stale files{}\n\n\
         | # | case | expected | what happened | as expected |\n|---:|---|---|---|---|",
        if cfg!(feature = "mpi") {
            ", SIGTERM under mpirun"
        } else {
            ""
        }
    );
    for (i, o) in outcomes.iter().enumerate() {
        let happened = for_table(&base, &o.happened);
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            o.case,
            o.expected,
            happened,
            yes_no(o.ok)
        );
        if !o.ok {
            eprintln!("FAILED: {}: {}", o.case, o.happened);
        }
    }
    let as_expected = outcomes.iter().filter(|o| o.ok).count();
    let _ = writeln!(
        report,
        "\n## Non-finite values and Ctrl-C\n\n\
         Tested in `crates/trainer/tests/non_finite.rs` and `training.rs`: a NaN injected in the \
         loss or the gradients (`BRAINFLOAT_INJECT_NON_FINITE=loss@2,grad@4`, a testing switch \
         read by the trainer) is never applied; \
         with `train.on_non_finite = \"stop\"` (default) the run ends with \
         `error: training loss is NaN at step 2; stopped (last good checkpoint: …)` or \
         `error: gradient norm is NaN at step 4 (the loss was finite); stopped without applying \
         it (…)`; with `\"skip\"` the step is dropped, counted (`\"skipped\": true` in the \
         metrics, a warning at the end) and training goes on. Ctrl-C (SIGINT) finishes the \
         current step, writes a checkpoint and exits with status 130; a second Ctrl-C exits at \
         once."
    );
    let signals = signal_and_non_finite_checks(&base);
    let _ = writeln!(
        report,
        "\n| check (through the binary) | result | what it printed |\n|---|---|---|"
    );
    for (name, passed, line) in &signals {
        let line = for_table(&base, line);
        let _ = writeln!(report, "| {name} | {} | `{line}` |", yes_no(*passed));
    }
    let histories = history::history_checks(&base);
    let _ = writeln!(
        report,
        "\n## Checkpoint history, kill points, data and storage that change, stops within grace\n\n\
         A checkpoint of step N is its record `step_N.json`, written last, and two data files \
         whose names are unique to the write (`step_N.<write>.model.safetensors`); every record \
         carries the run's identity. The kill points are compiled in only with the `testing` \
         feature (`BRAINFLOAT_KILL_AT=<point>@<step>`), which production builds never enable.\n\n\
         | check | result | what it saw |\n|---|---|---|"
    );
    for (name, passed, line) in &histories {
        let line = for_table(&base, line);
        let _ = writeln!(report, "| {name} | {} | `{line}` |", yes_no(*passed));
        if !passed {
            eprintln!("FAILED: {name}: {line}");
        }
    }
    let fuzzed = fuzz::fuzz_parsers(&base);
    let _ = writeln!(
        report,
        "\n## Fuzzing the parsers of outside bytes\n\n\
         Each parser gets inputs made by mutating a valid one (bytes flipped, cut, repeated, \
         overwritten with boundary values; a fixed seed, so the run repeats), in this process \
         under `catch_unwind`: a crash is a panic or an abort; an input may be accepted or \
         refused with an error.\n\n\
         | parser | inputs tried | refused with an error | accepted | crashes |\n|---|---:|---:|---:|---:|"
    );
    for target in &fuzzed {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} |",
            target.name, target.tried, target.refused, target.accepted, target.crashes
        );
        if target.crashes > 0 {
            eprintln!(
                "FAILED: fuzzing {}: {} crashes; first: {}",
                target.name, target.crashes, target.first_crash
            );
        }
    }
    let crashes: usize = fuzzed.iter().map(|t| t.crashes).sum();
    let fuzz_inputs: usize = fuzzed.iter().map(|t| t.tried).sum();
    let _ = writeln!(
        report,
        "\n**Fuzzing: {} parsers, {fuzz_inputs} inputs, {crashes} crashes.**",
        fuzzed.len()
    );
    report.push_str(&estimate_section());
    let signals_ok = signals.iter().all(|s| s.1) && histories.iter().all(|s| s.1) && crashes == 0;
    let tried = cases.len() + outcomes.len() + signals.len() + histories.len() + trials_run;
    let passed = clear
        + as_expected
        + signals.iter().filter(|s| s.1).count()
        + histories.iter().filter(|s| s.1).count()
        + reproduced;
    let _ = writeln!(
        report,
        "\n## Summary\n\n**{tried} cases tried ({} bad inputs, {} resume and folder cases, {} \
         signal and non-finite checks, {} checkpoint-history, storage and grace checks, \
         {trials_run} kill and SIGTERM trials): {passed} as expected; panics: {panics}; files \
         modified by a refused input: {modified}; curves reproduced: {reproduced} of \
         {trials_run}; fuzzing: {fuzz_inputs} inputs, {crashes} crashes.**",
        cases.len(),
        outcomes.len(),
        signals.len(),
        histories.len()
    );
    if let Ok(path) = std::env::var("BRAINFLOAT_RELIABILITY_REPORT") {
        std::fs::write(&path, &report).unwrap();
        println!("wrote {path}");
    }
    println!("{report}");
    let ok = clear == cases.len()
        && panics == 0
        && modified == 0
        && reproduced == trials_run
        && partial == 0
        && answered == terms
        && as_expected == outcomes.len()
        && signals_ok;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
